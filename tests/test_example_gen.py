"""Unit tests for the spec-driven ExampleGen (components/example_gen/executor.py, columnar.py).

No TFX or multi-process Beam pipeline runs here: the DoFn is driven directly, and two
tests run Beam's in-memory DirectRunner.
"""

import dataclasses
import gzip
import io
import itertools
import json
import math
import os
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
import tensorflow as tf
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from components.example_gen import columnar
from components.example_gen import executor as ex
from components.example_gen import write
from pipeline import synthetic
from pipeline.specs import REPO_DIR, InputFile, load_dataset_spec

SHARED_DATA = os.path.join(REPO_DIR, "..", "shared", "data")
SYNTHETIC_ROWS = 120


def shared_file(*parts):
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"shared data {path} is absent")
    return os.path.abspath(path)


def features(example):
    """A tf.Example (or its serialization) as {name: (kind, [values])}."""
    if isinstance(example, bytes):
        example = tf.train.Example.FromString(example)
    result = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        result[name] = (kind, list(getattr(feature, kind).value))
    return result


def value(example, name):
    kind, values = features(example)[name]
    assert len(values) == 1, (name, values)
    return values[0]


def split_outputs(outputs):
    """Splits what _ConvertFile.process yields into (examples, bad lines, summaries)."""
    examples, bad, summaries = [], [], []
    for item in outputs:
        if isinstance(item, beam.pvalue.TaggedOutput):
            {"bad": bad, "summary": summaries}[item.tag].append(item.value)
        else:
            examples.append(item)
    return examples, bad, [json.loads(s) for s in summaries]


def run_dofn(spec, path, constants=()):
    fn = ex._ConvertFile(spec.to_json())
    fn.setup()
    return split_outputs(fn.process((path, tuple(constants))))


def convert_rows(spec, *rows):
    """Converts rows (column -> raw string) column-wise: (examples, {row index: reason})."""
    columns = {c: pa.array([row[c] for row in rows], pa.string()) for c in spec.raw_columns}
    converted = columnar.ExampleConverter(spec).convert(columns, np.arange(len(rows)))
    return converted.examples, dict(converted.bad)


def convert_row(spec, row):
    """One good row's tf.Example (fails the test if the row is bad)."""
    (example,), bad = convert_rows(spec, row)
    assert bad == {}
    return example


def row_error(spec, row):
    examples, bad = convert_rows(spec, row)
    assert examples == []
    return bad[0]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synthetic_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(out), synthetic.SyntheticConfig(rows=SYNTHETIC_ROWS, seed=3))
    return str(out / "data.csv.gz")


@pytest.fixture(scope="module")
def synthetic_spec(synthetic_file):
    return load_dataset_spec("synthetic").with_files([synthetic_file])


@pytest.fixture(scope="module")
def synthetic_header():
    return (["row_id", "channel", "domain"] + [f"cat_{i:02d}" for i in range(12)]
            + [f"num_{i:02d}" for i in range(8)] + ["p_click", "p_conversion", "click", "conversion"])


def good_row(**changes):
    row = {"row_id": "17", "channel": "ch1", "domain": "s3", "p_click": "0.1",
           "p_conversion": "0.01", "click": "1", "conversion": "0"}
    row.update({f"cat_{i:02d}": str(i * 3) for i in range(12)})
    row.update({f"num_{i:02d}": f"{i + 0.5}" for i in range(8)})
    row.update(changes)
    return row


def write_csv(path, header, rows, line_end="\n"):
    lines = [",".join(header)] + [",".join(r) if isinstance(r, list) else r for r in rows]
    with open(path, "w", newline="") as f:
        f.write(line_end.join(lines) + line_end)
    return str(path)


def row_values(header, **changes):
    row = good_row(**changes)
    return [row[c] for c in header]


# --------------------------------------------------------------------------- ExampleConverter


def test_converts_good_synthetic_row(synthetic_spec):
    got = features(convert_row(synthetic_spec, good_row(num_03=" 2.25 ", cat_04=" 7 ")))
    expected_names = ({"channel", "domain", "click", "conversion", "row_id"}
                      | {f"cat_{i:02d}" for i in range(12)} | {f"num_{i:02d}" for i in range(8)})
    assert set(got) == expected_names  # Ignored columns (p_click, p_conversion) are dropped.
    assert got["channel"] == ("bytes_list", [b"ch1"])
    assert got["domain"] == ("bytes_list", [b"s3"])
    assert got["cat_04"] == ("bytes_list", [b"7"])  # Stripped.
    assert got["cat_11"] == ("bytes_list", [b"33"])
    assert got["num_03"] == ("float_list", [2.25])
    assert got["num_00"] == ("float_list", [0.5])
    assert got["click"] == ("int64_list", [1])
    assert got["conversion"] == ("int64_list", [0])
    assert got["row_id"] == ("int64_list", [17])  # The split key, as int64 for hashing.


@pytest.mark.parametrize("missing", ["", "NA", "nan", "null", "None", "  "])
def test_na_values_become_nan(synthetic_spec, missing):
    kind, values = features(convert_row(synthetic_spec, good_row(num_05=missing)))["num_05"]
    assert kind == "float_list" and len(values) == 1 and math.isnan(values[0])


def test_na_values_follow_the_spec(synthetic_spec):
    spec = dataclasses.replace(synthetic_spec, na_values=("?",))
    assert math.isnan(value(convert_row(spec, good_row(num_01="?")), "num_01"))
    assert "num_01" in row_error(spec, good_row(num_01="NA"))


def test_numbers_read_as_python_float_reads_them(synthetic_spec):
    rows = [good_row(num_00=v) for v in ("+1", "1_000", "1e3", ".5", "-inf", "nan", "\u0661")]
    examples, bad = convert_rows(synthetic_spec, *rows)
    assert bad == {}
    got = [value(e, "num_00") for e in examples]
    assert got[:5] == [1.0, 1000.0, 1000.0, 0.5, -math.inf]
    assert math.isnan(got[5]) and got[6] == 1.0  # Arabic-Indic one, as float() reads it.
    # Arrow alone would read "nan(1)" as NaN; float() does not.
    assert row_error(synthetic_spec, good_row(num_00="nan(1)")) == (
        "numerical field 'num_00': 'nan(1)' is not a number")


def test_float_values_round_like_float32(synthetic_spec):
    examples, _ = convert_rows(synthetic_spec, good_row(num_02="0.1"), good_row(num_02="123456789.123"))
    assert [value(e, "num_02") for e in examples] == [
        float(np.float32(0.1)), float(np.float32(123456789.123))]


def test_label_may_be_written_as_float(synthetic_spec):
    example = convert_row(synthetic_spec, good_row(click="1.0", conversion=" 1e0 "))
    assert value(example, "click") == 1 and value(example, "conversion") == 1


def test_text_split_key_is_bytes(synthetic_spec):
    examples, bad = convert_rows(synthetic_spec, good_row(row_id="abc-1"), good_row(row_id="-5"),
                                 good_row(row_id=" 12345678901234567890 "), good_row(row_id="7"))
    assert bad == {2: "split key '12345678901234567890' is outside the int64 range"}
    assert sorted(features(e)["row_id"] for e in examples) == [
        ("bytes_list", [b"abc-1"]), ("int64_list", [-5]), ("int64_list", [7])]


@pytest.mark.parametrize("changes, message", [
    ({"num_02": "abc"}, "numerical field 'num_02': 'abc' is not a number"),
    ({"num_07": "1,5"}, "numerical field 'num_07': '1,5' is not a number"),
    ({"click": "2"}, "label column 'click' must be 0 or 1, got '2'"),
    ({"click": "yes"}, "label column 'click' must be 0 or 1, got 'yes'"),
    ({"conversion": ""}, "label column 'conversion' must be 0 or 1, got ''"),
    ({"click": "0", "conversion": "1"},
     "task 'conversion' is 1 but it depends on 'click', which is 0"),
    ({"domain": ""}, "scenario column 'domain' is empty"),
    ({"channel": "  "}, "scenario column 'channel' is empty"),
    # The first problem in column order is the one reported.
    ({"channel": "", "num_00": "x", "click": "5"}, "scenario column 'channel' is empty"),
    ({"num_04": "x", "click": "5"}, "numerical field 'num_04': 'x' is not a number"),
])
def test_bad_values_are_named_with_the_column(synthetic_spec, changes, message):
    assert row_error(synthetic_spec, good_row(**changes)) == message


def test_bad_rows_among_good_ones_keep_their_lines(synthetic_spec):
    rows = [good_row(row_id=str(i)) for i in range(6)]
    rows[1]["num_06"], rows[4]["click"] = "oops", "7"
    columns = {c: pa.array([r[c] for r in rows], pa.string()) for c in synthetic_spec.raw_columns}
    converted = columnar.ExampleConverter(synthetic_spec).convert(columns, np.arange(10, 16))
    assert converted.bad == [(11, "numerical field 'num_06': 'oops' is not a number"),
                             (14, "label column 'click' must be 0 or 1, got '7'")]
    assert [value(e, "row_id") for e in converted.examples] == [0, 2, 3, 5]


def test_synthetic_file_converts_every_row(synthetic_spec, synthetic_file, synthetic_header):
    examples, bad, summaries = run_dofn(synthetic_spec, synthetic_file)
    assert bad == [] and len(examples) == SYNTHETIC_ROWS
    assert summaries == [{"file": synthetic_file, "good_rows": SYNTHETIC_ROWS, "bad_rows": 0}]
    with gzip.open(synthetic_file, "rt") as f:
        header, *lines = f.read().splitlines()
    assert header.split(",") == synthetic_header
    raw = {int(r["row_id"]): r for r in (dict(zip(synthetic_header, line.split(","))) for line in lines)}
    for example in examples:
        row = raw[value(example, "row_id")]
        assert value(example, "click") == int(row["click"])
        assert value(example, "conversion") == int(row["conversion"])
        assert value(example, "domain") == row["domain"].encode()
        assert value(example, "num_04") == pytest.approx(float(row["num_04"]), rel=1e-6)


# --------------------------------------------------------------------------- census (real data)


def test_census_label_rules_match_raw_columns(tmp_path):
    census = load_dataset_spec("census")
    with gzip.open(shared_file("census-income", "census-income.test.gz"), "rt") as f:
        lines = [next(f) for _ in range(200)]
    path = str(tmp_path / "census-200.gz")
    with gzip.open(path, "wt") as f:
        f.writelines(lines)
    spec = census.with_files([path])
    examples, bad, summaries = run_dofn(spec, path)
    assert bad == [] and len(examples) == 200  # No header line: every line is a row.
    raw = [dict(zip(spec.columns, line.rstrip("\n").split(","))) for line in lines]
    incomes = married = 0
    for example, row in zip(examples, raw):  # One file, one block: rows keep their order.
        income = int(row["income_50k"].strip() == "50000+.")
        never = int(row["marital_stat"].strip() == "Never married")
        assert value(example, "income_50k") == income, row["income_50k"]
        assert value(example, "never_married") == never, row["marital_stat"]
        assert value(example, "race") == row["race"].strip().encode()
        assert value(example, "age") == float(row["age"])
        assert "instance_weight" not in features(example)
        incomes += income
        married += never
    # Both labels take both values in these rows, so the comparison above means something.
    assert 0 < incomes < 200 and 0 < married < 200
    assert raw[0]["education"].strip() == "1st 2nd 3rd or 4th grade"
    assert raw[0]["income_50k"].strip() == "- 50000."


# --------------------------------------------------------------------------- reading CSV


def test_malformed_row_reports_file_line(synthetic_spec, synthetic_header, tmp_path):
    path = write_csv(tmp_path / "data.csv", synthetic_header, [
        row_values(synthetic_header, row_id="1"),
        "",  # Blank lines are skipped but still counted.
        row_values(synthetic_header, row_id="2") + ["extra"],
        ",".join(row_values(synthetic_header, row_id="3")[:5]),
        row_values(synthetic_header, row_id="4"),
    ])
    examples, bad, summaries = run_dofn(synthetic_spec, path)
    assert [value(e, "row_id") for e in examples] == [1, 4]
    assert [b.split(": ", 1)[0] for b in bad] == [f"{path}:4", f"{path}:5"]
    assert bad[0].startswith(f"{path}:4: expected {len(synthetic_header)} fields, "
                             f"got {len(synthetic_header) + 1}:")
    assert "extra" in bad[0]
    assert bad[1].startswith(f"{path}:5: expected {len(synthetic_header)} fields, got 5:")
    assert summaries == [{"file": path, "good_rows": 2, "bad_rows": 2}]


def test_constants_are_added_to_rows(synthetic_spec, synthetic_header, tmp_path):
    header = [c for c in synthetic_header if c != "channel"]
    path = write_csv(tmp_path / "data.csv", header, [row_values(header)])
    (example,), bad, _ = run_dofn(synthetic_spec, path, (("channel", "web"),))
    assert bad == [] and value(example, "channel") == b"web"


def test_gzip_and_quoted_csv(synthetic_spec, synthetic_header, tmp_path):
    path = str(tmp_path / "data.csv.gz")
    values = row_values(synthetic_header)
    values[synthetic_header.index("cat_00")] = '"a, b"'
    with gzip.open(path, "wt") as f:
        f.write(",".join(synthetic_header) + "\n" + ",".join(values) + "\n")
    (example,), bad, _ = run_dofn(synthetic_spec, path)
    assert bad == [] and value(example, "cat_00") == b"a, b"


def test_empty_file_yields_nothing(synthetic_spec, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert run_dofn(synthetic_spec, str(path)) == (
        [], [], [{"file": str(path), "good_rows": 0, "bad_rows": 0}])


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_edge_case_of_a_csv_file(tmp_path, line_end):
    """One file with each case the reader and converter decide, checked row by row, with
    each line end pyarrow and Python's universal newlines read (line 18 is CRLF in any)."""
    spec_path = tmp_path / "edge.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "edge", "inputs": {"files": str(tmp_path / "edge.csv"), "separator": ";",
                                   "na_values": ["", "?"]},
        "scenario": {"column": "scen"},
        "tasks": [{"name": "click", "label": "click"},
                  {"name": "buy", "label_rule": 'status == "bought" or amount > 10',
                   "depends_on": "click"}],
        "categorical_fields": ["cat"], "numerical_fields": ["x"],
        "ignored_columns": ["note"], "split": {"key": "id"}}))
    spec = load_dataset_spec(str(spec_path))
    lines = [
        b" id ;scen; cat;x;click;status;amount;note",  # 1: header (names stripped)
        b"1;s0;a;1.5;1;bought;0;",  # 2: good, rule by status
        b"",  # 3: blank, skipped
        b"2; s1 ; b ; 2e1 ;0;no;3;n",  # 4: good, values stripped
        b"3;s0;c;?;1;no;11;x",  # 5: good, x NaN (spec's na_values), rule by amount
        b"4;s0;d;NA;1;no;0;x",  # 6: 'NA' is not an na_value here
        b"5;s0;e;1;0;bought;0;x",  # 7: buy without click
        b"6;;f;1;1;no;0;x",  # 8: empty scenario
        b"7;s0;g;1;1;no;lots;x",  # 9: the rule needs a number
        b"8;s0;h;1;1;bought;lots;x",  # 10: good: 'or' never reads amount
        b"9;s0;\xff\xfe;1;1;no;0;x",  # 11: not UTF-8
        b"10;s0;i;1;1;no;0",  # 12: too few fields
        b'11;s0;"multi',  # 13: a quoted value over two lines ...
        b'line";1;1;no;0;x',  # 14: ... is one row, reported at its last line
        b"   ",  # 15: spaces only: blank
        b'12;s0; "j;k";1;1;no;0;x',  # 16: quote after a space is quoting (skipinitialspace)
        b"abc;s0;l;1;2;no;0;x",  # 17: label not 0/1; split key text
        b"-13;s0;m;1;1.0;no;0;x\r",  # 18: CRLF; label 1.0; negative key
        b'15;s0;15" tv;1;1;no;0;x',  # 19: a quote inside a value is a character
        b"16;s0;o;1;1;no;0;x",  # 20: good
        b"17;\xff;x",  # 21: too few fields, and not UTF-8: the field count is reported
        b"14;s0;n;1;3;no;0;x",  # 22: label not 0/1; no newline at the end
    ]
    path = tmp_path / "edge.csv"
    if line_end != b"\n":
        lines[17] = lines[17].rstrip(b"\r")
    path.write_bytes(line_end.join(lines))
    examples, bad, summaries = run_dofn(spec, str(path))
    assert bad == [
        f"{path}:6: numerical field 'x': 'NA' is not a number",
        f"{path}:7: task 'buy' is 1 but it depends on 'click', which is 0",
        f"{path}:8: scenario column 'scen' is empty",
        f"{path}:9: label rule needs a number, got 'lots'",
        f"{path}:11: not valid UTF-8",
        f"{path}:12: expected 8 fields, got 7: '10;s0;i;1;1;no;0'",
        f"{path}:17: label column 'click' must be 0 or 1, got '2'",
        f"{path}:21: expected 8 fields, got 3: '17;\ufffd;x'",
        f"{path}:22: label column 'click' must be 0 or 1, got '3'",
    ]
    assert summaries == [{"file": str(path), "good_rows": 9, "bad_rows": 9}]
    got = {value(e, "id"): features(e) for e in examples}
    assert sorted(got) == [-13, 1, 2, 3, 8, 11, 12, 15, 16]
    assert got[1] == {"id": ("int64_list", [1]), "scen": ("bytes_list", [b"s0"]),
                      "cat": ("bytes_list", [b"a"]), "x": ("float_list", [1.5]),
                      "click": ("int64_list", [1]), "buy": ("int64_list", [1])}
    assert got[2]["scen"] == ("bytes_list", [b"s1"]) and got[2]["cat"] == ("bytes_list", [b"b"])
    assert got[2]["x"] == ("float_list", [20.0]) and got[2]["buy"] == ("int64_list", [0])
    assert math.isnan(got[3]["x"][1][0]) and got[3]["buy"] == ("int64_list", [1])
    assert got[8]["buy"] == ("int64_list", [1])
    assert got[11]["cat"] == ("bytes_list", [b"multi" + line_end + b"line"])
    assert got[12]["cat"] == ("bytes_list", [b"j;k"])
    assert got[-13]["click"] == ("int64_list", [1]) and got[-13]["buy"] == ("int64_list", [0])
    assert got[15]["cat"] == ("bytes_list", [b'15" tv'])


def test_every_edge_case_with_a_text_split_key(tmp_path):
    spec_path = tmp_path / "text.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "text", "inputs": {"files": str(tmp_path / "t.csv"), "header": False,
                                   "columns": ["id", "scen", "c", "click"]},
        "scenario": {"column": "scen"}, "tasks": [{"name": "click", "label": "click"}],
        "categorical_fields": ["c"], "split": {"key": "id"}}))
    spec = load_dataset_spec(str(spec_path))
    path = tmp_path / "t.csv"
    path.write_text("u-1,s0,a,1\n\n7,s1,b,0\nu-2,s0,c,x\n")
    examples, bad, _ = run_dofn(spec, str(path))
    assert bad == [f"{path}:4: label column 'click' must be 0 or 1, got 'x'"]  # No header line.
    assert sorted(features(e)["id"] for e in examples) == [
        ("bytes_list", [b"u-1"]), ("int64_list", [7])]


@pytest.mark.parametrize("line_end", ["\n", "\r"], ids=["lf", "cr"])
def test_many_blocks_keep_their_line_numbers(synthetic_spec, synthetic_header, tmp_path,
                                             monkeypatch, line_end):
    monkeypatch.setattr(columnar, "BLOCK_BYTES", 1 << 10)  # About 8 rows a block.
    rows, expected_bad, line = [], [], 1  # The header is line 1.
    for i in range(60):
        two_lines = i % 5 == 2
        rows.append(row_values(synthetic_header, row_id=str(i), num_01="bad" if i % 7 == 3 else "1",
                               cat_00='"x\ny, ""z"""' if two_lines else "x"))
        line += 1 + two_lines  # A row is reported at its last line.
        if i % 7 == 3:
            expected_bad.append(f"{line}: numerical field 'num_01': 'bad' is not a number")
        if i % 11 == 5:
            rows.append(",".join(rows[-1][:3]))  # Wrong field count.
            line += 1
            expected_bad.append(f"{line}: expected {len(synthetic_header)} fields, got 3: "
                                f"'{rows[-1]}'")
        if i % 13 == 0:
            rows.append("")
            line += 1
    path = write_csv(tmp_path / "blocks.csv", synthetic_header, rows, line_end)
    examples, bad, summaries = run_dofn(synthetic_spec, path)
    assert bad == [f"{path}:{message}" for message in expected_bad]
    assert sorted(value(e, "row_id") for e in examples) == [i for i in range(60) if i % 7 != 3]
    assert {value(e, "cat_00") for e in examples} == {b"x", b'x\ny, "z"'}
    assert summaries == [{"file": path, "good_rows": len(examples), "bad_rows": len(expected_bad)}]


def _record_lines(data: bytes, chunk: int, sequential: bool = False):
    """The reader's record-end lines when pyarrow pulls ``chunk`` bytes at a time."""
    reader = columnar._LineCountingReader(io.BytesIO(data), ",")
    if sequential:  # Only the one-quote-at-a-time path.
        reader._alternating_toggles = lambda at, field_start: None
    buffer = bytearray(chunk)
    while reader.readinto(buffer):
        pass
    return reader.record_lines(0, len(data) + 1).tolist()


def _csv_bytes(rng, line_end: bytes, quote_all: bool) -> bytes:
    rows = []
    for _ in range(int(rng.integers(1, 30))):
        values = []
        for _ in range(3):
            value = "".join(rng.choice(["a", "b", " ", '"', "\n", "\r", "\r\n", ","],
                                       size=int(rng.integers(0, 4)),
                                       p=[.3, .2, .1, .1, .1, .1, .05, .05]))
            needs_quotes = quote_all or any(c in value for c in '",\r\n') or value == ""
            values.append('"' + value.replace('"', '""') + '"' if needs_quotes else value)
        rows.append(",".join(values).encode())
    return line_end.join(rows) + (line_end if rng.random() < 0.5 else b"")


@pytest.mark.parametrize("seed", range(40))
def test_line_counting_reader_agrees_with_pyarrow_at_any_chunk_size(seed):
    """Records end where pyarrow ends them, on the line of their last byte, however the
    bytes are cut (a \r or a "" on a cut included), on both quote-tracking paths."""
    rng = np.random.default_rng(seed)
    data = _csv_bytes(rng, [b"\n", b"\r\n", b"\r"][seed % 3], quote_all=seed % 2 == 0)
    lines = _record_lines(data, len(data) + 1)
    table = pa_csv.read_csv(io.BytesIO(data), read_options=pa_csv.ReadOptions(
        column_names=["a", "b", "c"]), parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(column_types={c: pa.binary() for c in "abc"}))
    assert len(lines) == table.num_rows
    text_lines = data.decode().splitlines(keepends=True)  # Python's universal newlines.
    assert lines[-1] == len(text_lines)
    assert lines == sorted(set(lines))
    for chunk in (1, 2, 3, 7, 64):
        assert _record_lines(data, chunk) == lines
        assert _record_lines(data, chunk, sequential=True) == lines


def test_line_counting_reader_treats_a_quote_inside_a_value_as_a_character():
    data = b'a,15" tv,c\rd,"x\r\ny",e\r\nf,g"",h\n'
    for chunk in (1, 4, 100):
        assert _record_lines(data, chunk) == [1, 3, 4]
        assert _record_lines(data, chunk, sequential=True) == [1, 3, 4]


# --------------------------------------------------------------------------- TFRecord input


def _tfrecord_spec(tmp_path, path):
    data = {
        "name": "tfr", "inputs": {"files": path, "format": "tfrecord"},
        "scenario": {"column": "domain"},
        "tasks": [{"name": "click", "label": "click"},
                  {"name": "buy", "label_rule": "amount > 10", "depends_on": "click"}],
        "categorical_fields": ["cat_a"], "numerical_fields": ["num_a"],
        "split": {"key": "row_id"},
    }
    spec_path = tmp_path / "tfr.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    return load_dataset_spec(str(spec_path))


def _tf_example(**values):
    feature = {}
    for name, v in values.items():
        vs = v if isinstance(v, list) else [v]
        if not vs or isinstance(vs[0], bytes):
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=vs))
        elif isinstance(vs[0], float):
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=vs))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vs))
    return tf.train.Example(features=tf.train.Features(feature=feature))


@pytest.mark.parametrize("file_name, compression", [("data.tfrecord", ""),
                                                     ("data.tfrecord.gz", "GZIP")])
def test_tfrecord_input(tmp_path, file_name, compression):
    path = str(tmp_path / file_name)
    records = [
        _tf_example(row_id=1, domain=b"s0", cat_a=b"x", num_a=1.5, click=1, amount=12.0),
        _tf_example(row_id=2, domain=b"s1", cat_a=b"y", num_a=[], click=0, amount=3.0),
        _tf_example(row_id=3, domain=b"s0", cat_a=[b"x", b"z"], num_a=0.25, click=1, amount=1.0),
        _tf_example(row_id=4, cat_a=b"w", num_a=-2.0, click=1, amount=50.0),
        _tf_example(row_id=5, domain=b"s1", cat_a=b"v", num_a=0.1, click=0, amount=11.0),
    ]
    with tf.io.TFRecordWriter(path, compression) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    spec = _tfrecord_spec(tmp_path, path)
    assert spec.input_format == "tfrecord"
    examples, bad, summaries = run_dofn(spec, path, (("domain", "const"),))
    assert bad == [f"{path}:3: feature 'cat_a' has 2 values, expected one",
                   f"{path}:5: task 'buy' is 1 but it depends on 'click', which is 0"]
    assert summaries == [{"file": path, "good_rows": 3, "bad_rows": 2}]
    got = {value(e, "row_id"): features(e) for e in examples}
    assert got[1] == {"domain": ("bytes_list", [b"s0"]), "cat_a": ("bytes_list", [b"x"]),
                      "num_a": ("float_list", [1.5]), "click": ("int64_list", [1]),
                      "buy": ("int64_list", [1]), "row_id": ("int64_list", [1])}
    assert math.isnan(got[2]["num_a"][1][0])  # An empty feature reads as missing.
    assert got[2]["buy"] == ("int64_list", [0])
    assert got[4]["domain"] == ("bytes_list", [b"const"])  # A constant fills in a missing column.
    assert got[4]["num_a"] == ("float_list", [-2.0]) and got[4]["buy"] == ("int64_list", [1])


def test_tfrecord_missing_column_reported_once(tmp_path):
    path = str(tmp_path / "data.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(3):
            writer.write(_tf_example(row_id=i, domain=b"s0", num_a=1.0, click=1, amount=1.0)
                         .SerializeToString())
    examples, bad, summaries = run_dofn(_tfrecord_spec(tmp_path, path), path)
    assert examples == []
    assert bad == [f"{path}: missing column(s) ['cat_a']; every row of this file is unusable"]
    assert summaries == [{"file": path, "good_rows": 0, "bad_rows": 3}]


# --------------------------------------------------------------------------- _ConvertFile


def _mixed_csv(tmp_path, header):
    return write_csv(tmp_path / "mixed.csv", header, [
        row_values(header, row_id="1"),
        row_values(header, row_id="2", num_06="oops"),
        row_values(header, row_id="3", click="0", conversion="1"),
        row_values(header, row_id="4")[:-1],
        row_values(header, row_id="5", domain=""),
        row_values(header, row_id="6", num_00="NA"),
    ])


def test_convert_file_quarantines_bad_rows(synthetic_spec, synthetic_header, tmp_path):
    path = _mixed_csv(tmp_path, synthetic_header)
    examples, bad, summaries = run_dofn(synthetic_spec, path)
    assert all(isinstance(e, bytes) for e in examples)  # Serialized tf.Examples.
    assert [value(e, "row_id") for e in examples] == [1, 6]
    assert math.isnan(value(examples[1], "num_00"))
    assert [b.split(": ", 1)[0] for b in bad] == [f"{path}:3", f"{path}:4", f"{path}:5", f"{path}:6"]
    assert "numerical field 'num_06': 'oops' is not a number" in bad[0]
    assert "task 'conversion' is 1 but it depends on 'click'" in bad[1]
    assert f"expected {len(synthetic_header)} fields, got {len(synthetic_header) - 1}" in bad[2]
    assert "scenario column 'domain' is empty" in bad[3]
    assert summaries == [{"file": path, "good_rows": 2, "bad_rows": 4}]


def test_convert_file_under_direct_runner(synthetic_spec, synthetic_header, tmp_path):
    path = _mixed_csv(tmp_path, synthetic_header)
    with TestPipeline() as p:
        results = (p | beam.Create([(path, ())])
                   | beam.ParDo(ex._ConvertFile(synthetic_spec.to_json())).with_outputs(
                       "bad", "summary", main="examples"))
        ids = results.examples | "Ids" >> beam.Map(lambda e: value(e, "row_id"))
        assert_that(ids, equal_to([1, 6]), label="examples")
        lines = results.bad | "Lines" >> beam.Map(lambda s: s.split(": ", 1)[0])
        assert_that(lines, equal_to([f"{path}:{n}" for n in (3, 4, 5, 6)]), label="bad")
        assert_that(results.summary | "Parse" >> beam.Map(json.loads),
                    equal_to([{"file": path, "good_rows": 2, "bad_rows": 4}]), label="summary")


def test_missing_column_reported_once(synthetic_spec, synthetic_header, tmp_path):
    header = [c for c in synthetic_header if c != "num_03"]
    rows = [row_values(header, row_id=str(i)) for i in range(5)]
    rows.insert(2, ",".join(rows[0][:3]))  # A row with too few fields is still named.
    path = write_csv(tmp_path / "short.csv", header, rows)
    examples, bad, summaries = run_dofn(synthetic_spec, path)
    assert examples == []
    assert bad == [f"{path}: missing column(s) ['num_03']; every row of this file is unusable",
                   f"{path}:4: expected {len(header)} fields, got 3: '0,ch1,s3'"]
    assert summaries == [{"file": path, "good_rows": 0, "bad_rows": 6}]


def test_constant_supplies_required_column(synthetic_spec, synthetic_header, tmp_path):
    spec = dataclasses.replace(synthetic_spec, files=(
        InputFile(synthetic_spec.files[0].path, constants=(("channel", "app"),)),))
    header = [c for c in synthetic_header if c != "channel"]
    path = write_csv(tmp_path / "no_channel.csv", header, [row_values(header, row_id="9")])
    examples, bad, summaries = run_dofn(spec, path, (("channel", "app"),))
    assert bad == [] and summaries[0]["good_rows"] == 1
    assert value(examples[0], "channel") == b"app"


# --------------------------------------------------------------------------- hash split


def _partition_config(key="row_id"):
    return example_gen_pb2.SplitConfig(partition_feature_name=key, splits=[
        example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=80),
        example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=20)])


def test_keyed_examples_split_as_tfx_splits_parsed_ones(synthetic_spec, synthetic_header, tmp_path):
    rows = [row_values(synthetic_header, row_id=str(i) if i % 3 else f"u{i}") for i in range(300)]
    path = write_csv(tmp_path / "keys.csv", synthetic_header, rows)
    fn = ex._ConvertFile(synthetic_spec.to_json(), keyed=True)
    fn.setup()
    keyed, _, _ = split_outputs(fn.process((path, ())))
    assert len(keyed) == 300
    ours = [ex._partition_by_key(k, 2, [80, 100]) for k in keyed]
    tfx = [base_example_gen_executor._PartitionFn(tf.train.Example.FromString(e), 2, [80, 100],
                                                  _partition_config()) for _, e in keyed]
    assert ours == tfx
    assert 30 <= ours.count(1) <= 90  # About 20% eval.


def test_hash_split_on_the_split_key_under_direct_runner(synthetic_spec, synthetic_file, tmp_path):
    props = dict(ex.make_example_gen(synthetic_spec).exec_properties)
    props[ex._SPLIT_BY_PATTERN_KEY] = {"data.csv.gz": "all"}
    props[ex._QUARANTINE_KEY] = str(tmp_path / "quarantine")
    examples, _, _ = run_dofn(synthetic_spec, synthetic_file)
    expected = {"train": [], "eval": []}
    for e in examples:
        split = base_example_gen_executor._PartitionFn(
            tf.train.Example.FromString(e), 2, [80, 100], _partition_config())
        expected[("train", "eval")[split]].append(value(e, "row_id"))
    assert expected["train"] and expected["eval"]
    with TestPipeline() as p:
        splits = ex.Executor().GenerateExamplesByBeam(p, props)
        assert sorted(splits) == ["eval", "train"]
        for name, split in splits.items():
            ids = split | f"Ids[{name}]" >> beam.Map(lambda e: value(e, "row_id"))
            assert_that(ids, equal_to(expected[name]), label=f"check[{name}]")


# --------------------------------------------------------------------------- writing splits


def test_executor_writes_every_row_once_as_fast_gzip_tfrecords(synthetic_spec, synthetic_file,
                                                               tmp_path):
    component = ex.make_example_gen(synthetic_spec)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "ExampleGen" / "examples" / "1")
    ex.Executor().Do({}, {"examples": [examples]}, dict(component.exec_properties))
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples.get_string_custom_property("file_format") == "tfrecords_gzip"
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    expected, _, _ = run_dofn(synthetic_spec, synthetic_file)
    by_split = {}
    for split in ("train", "eval"):
        files = tf.io.gfile.glob(os.path.join(examples.uri, f"Split-{split}", "data_tfrecord-*.gz"))
        assert files
        for path in files:
            with open(path, "rb") as f:
                header = f.read(10)
            assert header[:3] == b"\x1f\x8b\x08" and header[8] == 4  # gzip, XFL 4: fastest
        by_split[split] = [value(e, "row_id") for e in
                           tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()]
    assert sorted(by_split["train"] + by_split["eval"]) == sorted(value(e, "row_id")
                                                                  for e in expected)
    assert len(by_split["eval"]) < len(by_split["train"])


def test_written_order_does_not_depend_on_the_random_state(synthetic_spec, tmp_path,
                                                           monkeypatch):
    # Beam's Reshuffle keys every example by random.randrange: examples that drew the same
    # key were grouped, which moved them, so a rerun on the same data trained on another
    # order. Forcing different key collisions on each run must not change the order.
    orders = []
    for run, cycle in enumerate((3, 5)):
        draws = itertools.count()
        monkeypatch.setattr(random, "randrange", lambda *args, c=cycle: next(draws) % c)
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / str(run))
        ex.Executor().Do({}, {"examples": [examples]},
                         dict(ex.make_example_gen(synthetic_spec).exec_properties))
        files = tf.io.gfile.glob(os.path.join(examples.uri, "Split-train", "*.gz"))
        orders.append([value(e, "row_id") for e in
                       tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()])
    assert len(orders[0]) > 50 and orders[0] == orders[1]


IN_MEMORY = ["--runner=FnApiRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def test_only_the_in_process_one_worker_runner_counts_as_keeping_order():
    assert write.runner_keeps_order(IN_MEMORY)
    assert not write.runner_keeps_order(None)  # Beam picks the runner: shuffle
    assert not write.runner_keeps_order(
        ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"])
    assert not write.runner_keeps_order(["--runner=DataflowRunner", "--project=p"])
    assert not write.runner_keeps_order(["--runner=FlinkRunner"])


def test_the_in_memory_runner_shuffle_moves_nothing(synthetic_spec, tmp_path, monkeypatch):
    """The premise of skipping it there: with the shuffle forced on, the in-memory runner
    writes the input order, the order the executor writes without it. If a Beam release
    starts moving examples there, this fails and ``runner_keeps_order`` must go."""
    orders = {}
    for shuffle in (True, False):
        monkeypatch.setattr(write, "runner_keeps_order", lambda args, keep=not shuffle: keep)
        examples = standard_artifacts.Examples()
        examples.uri = str(tmp_path / str(shuffle))
        ex.Executor(ex.Executor.Context(beam_pipeline_args=IN_MEMORY)).Do(
            {}, {"examples": [examples]}, dict(ex.make_example_gen(synthetic_spec).exec_properties))
        files = sorted(tf.io.gfile.glob(os.path.join(examples.uri, "Split-train", "*.gz")))
        orders[shuffle] = [value(e, "row_id") for e in
                           tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()]
    assert len(orders[True]) > 50 and orders[True] == orders[False]
    assert orders[False] == sorted(orders[False], key=int)  # the input's order


def test_write_split_without_shuffle_writes_the_input_order(tmp_path):
    records = [f"record {i}".encode() for i in range(300)]
    with beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(IN_MEMORY)) as p:
        _ = p | beam.Create(records) | write.WriteSplit(str(tmp_path), shuffle=False)
    files = sorted(tf.io.gfile.glob(str(tmp_path / "data_tfrecord-*.gz")))
    assert list(tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()) == records


def test_write_split_records_read_back_as_written(tmp_path):
    records = [b"", b"x", os.urandom(70_000)] + [f"record {i}".encode() for i in range(500)]
    with TestPipeline() as p:
        _ = p | beam.Create(records) | write.WriteSplit(str(tmp_path), compression_level=1)
    files = tf.io.gfile.glob(str(tmp_path / "data_tfrecord-*.gz"))
    assert sorted(tf.data.TFRecordDataset(files, "GZIP").as_numpy_iterator()) == sorted(records)
    with TestPipeline() as p:  # Beam's reader too (gzip detected from the suffix).
        read = p | beam.io.ReadFromTFRecord(str(tmp_path / "data_tfrecord-*.gz"))
        assert_that(read, equal_to(records))


# --------------------------------------------------------------------------- AliExpress sample


def test_aliexpress_sample_converts():
    train = shared_file("aliexpress-sample", "aliexpress_train_sample.csv")
    test = shared_file("aliexpress-sample", "aliexpress_test_sample.csv")
    base = load_dataset_spec("aliexpress")
    spec = dataclasses.replace(base, files=(InputFile(train, "train", (("country", "sample"),)),
                                            InputFile(test, "eval", (("country", "sample"),))))
    counts = {}
    for f in spec.files:
        with open(f.path) as text:
            header, *lines = text.read().splitlines()
        raw = [dict(zip(header.split(","), line.split(","))) for line in lines]
        examples, bad, summaries = run_dofn(spec, f.path, f.constants)
        assert bad == [] and len(examples) == len(raw)
        assert summaries == [{"file": f.path, "good_rows": len(raw), "bad_rows": 0}]
        counts[f.split] = len(examples)
        clicks = 0
        for example, row in zip(examples, raw):  # One block: rows keep their order.
            got = features(example)
            assert got["country"] == ("bytes_list", [b"sample"])
            assert got["click"] == ("int64_list", [int(row["click"])])
            assert got["conversion"][1][0] <= got["click"][1][0]
            assert got["numerical_1"] == ("float_list", [pytest.approx(float(row["numerical_1"]))])
            assert "search_id" not in got
            assert len(got) == 1 + 2 + 16 + 63
            clicks += got["click"][1][0]
        assert 0 < clicks < len(raw)
    assert counts == {"train": 100, "eval": 20}


# --------------------------------------------------------------------------- check_output


def _write_split(uri, split, examples):
    directory = os.path.join(uri, f"Split-{split}")
    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "data_tfrecord-00000-of-00001.gz"),
                              "GZIP") as writer:
        for example in examples:
            writer.write(example.SerializeToString())


def _fake_output(tmp_path, good, bad, eval_examples=1):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    one = _tf_example(domain=b"s0")
    _write_split(examples.uri, "train", [one, one])
    _write_split(examples.uri, "eval", [one] * eval_examples)
    quarantine = os.path.join(examples.uri, ex.QUARANTINE_DIR)
    os.makedirs(quarantine)
    with open(os.path.join(quarantine, "all-summary-00000-of-00001.jsonl"), "w") as f:
        f.write(json.dumps({"file": "/data/a.csv", "good_rows": good - 10, "bad_rows": bad}) + "\n")
        f.write(json.dumps({"file": "/data/b.csv", "good_rows": 10, "bad_rows": 0}) + "\n")
    with open(os.path.join(quarantine, "all-bad_rows-00000-of-00001.txt"), "w") as f:
        for i in range(bad):
            f.write(f"/data/a.csv:{i + 2}: label column 'click' must be 0 or 1, got '7'\n")
    return examples, quarantine


def test_check_output_fails_above_max_bad_fraction(synthetic_spec, tmp_path):
    examples, quarantine = _fake_output(tmp_path, good=995, bad=5)
    spec = dataclasses.replace(synthetic_spec, max_bad_row_fraction=0.001)
    with pytest.raises(ex.BadInputError) as info:
        ex.check_output(spec, examples, quarantine)
    message = str(info.value)
    assert quarantine in message
    assert "5 of 1000 rows (0.500%)" in message
    assert "/data/a.csv:2: label column 'click' must be 0 or 1" in message
    assert "max_bad_row_fraction=0.001" in message and spec.source in message


def test_check_output_warns_below_max_bad_fraction(synthetic_spec, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(ex.logging, "warning", lambda msg, *a: warnings.append(msg % a if a else msg))
    examples, quarantine = _fake_output(tmp_path, good=995, bad=5)
    spec = dataclasses.replace(synthetic_spec, max_bad_row_fraction=0.01)
    ex.check_output(spec, examples, quarantine)  # Does not raise.
    assert len(warnings) == 1
    assert "5 of 1000 rows" in warnings[0] and quarantine in warnings[0]


def test_check_output_quiet_without_bad_rows(synthetic_spec, tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(ex.logging, "warning", lambda msg, *a: warnings.append(msg))
    examples, quarantine = _fake_output(tmp_path, good=500, bad=0)
    ex.check_output(synthetic_spec, examples, quarantine)
    assert warnings == []


def test_check_output_fails_on_empty_split(synthetic_spec, tmp_path):
    examples, quarantine = _fake_output(tmp_path, good=500, bad=0, eval_examples=0)
    with pytest.raises(ex.BadInputError, match=r"split 'eval' is empty after reading 500 good rows"):
        ex.check_output(synthetic_spec, examples, quarantine)


def test_check_output_fails_on_missing_split_files(synthetic_spec, tmp_path):
    examples, quarantine = _fake_output(tmp_path, good=500, bad=0)
    os.remove(os.path.join(examples.uri, "Split-train", "data_tfrecord-00000-of-00001.gz"))
    with pytest.raises(ex.BadInputError, match=r"split 'train' is empty"):
        ex.check_output(synthetic_spec, examples, quarantine)


# --------------------------------------------------------------------------- make_example_gen


def _output_config(component):
    return proto_utils.json_to_proto(component.exec_properties["output_config"],
                                     example_gen_pb2.Output())


def _input_config(component):
    return proto_utils.json_to_proto(component.exec_properties["input_config"],
                                     example_gen_pb2.Input())


@pytest.mark.parametrize("fraction, train, eval_", [
    (0.2, 80, 20), (0.25, 75, 25), (0.001, 99, 1), (0.996, 1, 99)])
def test_make_example_gen_hash_split(synthetic_spec, synthetic_file, fraction, train, eval_):
    spec = dataclasses.replace(synthetic_spec, eval_fraction=fraction)
    component = ex.make_example_gen(spec)
    output = _output_config(component)
    assert [(s.name, s.hash_buckets) for s in output.split_config.splits] == [
        ("train", train), ("eval", eval_)]
    assert output.split_config.partition_feature_name == "row_id"
    inputs = _input_config(component)
    assert [(s.name, s.pattern) for s in inputs.splits] == [("all", "data.csv.gz")]
    assert component.exec_properties["input_base"] == os.path.dirname(synthetic_file)
    assert component.executor_spec.executor_class is ex.Executor
    assert ex.spec_from_exec_properties(component.exec_properties) == spec


def test_make_example_gen_without_split_key(synthetic_spec):
    spec = dataclasses.replace(synthetic_spec, split_key=None)
    output = _output_config(ex.make_example_gen(spec))
    assert output.split_config.partition_feature_name == ""


def test_make_example_gen_file_splits(synthetic_spec, tmp_path):
    for name in ("a/train.csv", "a/more_train.csv", "b/test.csv"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x\n")
    spec = dataclasses.replace(synthetic_spec, split_method="files", files=(
        InputFile(str(tmp_path / "a" / "train.csv"), "train", (("country", "NL"),)),
        InputFile(str(tmp_path / "b" / "test.csv"), "eval", (("country", "NL"),)),
        InputFile(str(tmp_path / "a" / "more_*.csv"), "train", (("country", "FR"),))))
    component = ex.make_example_gen(spec)
    assert component.exec_properties["input_base"] == str(tmp_path)
    assert [(s.name, s.pattern) for s in _input_config(component).splits] == [
        ("train", "a/train.csv"), ("eval", "b/test.csv")]
    assert not _output_config(component).split_config.splits  # Outputs follow the inputs.
    assert ex.spec_from_exec_properties(component.exec_properties) == spec


def test_files_fingerprint_tracks_file_changes(synthetic_spec, tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a\n")
    spec = synthetic_spec.with_files([str(path)])
    first = ex.files_fingerprint(spec)
    assert ex.files_fingerprint(spec) == first
    path.write_text("a\nb\n")
    assert ex.files_fingerprint(spec) != first
