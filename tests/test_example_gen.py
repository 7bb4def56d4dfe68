"""Unit tests for the spec-driven ExampleGen (components/example_gen/executor.py).

No TFX or multi-process Beam pipeline runs here: the DoFn is driven directly, and one
test runs it under Beam's in-memory DirectRunner.
"""

import dataclasses
import gzip
import itertools
import json
import math
import os

import apache_beam as beam
import pytest
import tensorflow as tf
import yaml
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import proto_utils

from components.example_gen import executor as ex
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
    """A tf.Example as {name: (kind, [values])}."""
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


def write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(r) if isinstance(r, list) else r for r in rows]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def row_values(header, **changes):
    row = good_row(**changes)
    return [row[c] for c in header]


# --------------------------------------------------------------------------- RowConverter


def test_converts_good_synthetic_row(synthetic_spec):
    example = ex.RowConverter(synthetic_spec).convert(good_row(num_03=" 2.25 ", cat_04=" 7 "))
    got = features(example)
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
    example = ex.RowConverter(synthetic_spec).convert(good_row(num_05=missing))
    kind, values = features(example)["num_05"]
    assert kind == "float_list" and len(values) == 1 and math.isnan(values[0])


def test_na_values_follow_the_spec(synthetic_spec):
    spec = dataclasses.replace(synthetic_spec, na_values=("?",))
    converter = ex.RowConverter(spec)
    assert math.isnan(value(converter.convert(good_row(num_01="?")), "num_01"))
    with pytest.raises(ValueError, match="num_01"):
        converter.convert(good_row(num_01="NA"))


def test_label_may_be_written_as_float(synthetic_spec):
    example = ex.RowConverter(synthetic_spec).convert(good_row(click="1.0", conversion="1.0"))
    assert value(example, "click") == 1 and value(example, "conversion") == 1


def test_text_split_key_is_bytes(synthetic_spec):
    example = ex.RowConverter(synthetic_spec).convert(good_row(row_id="abc-1"))
    assert features(example)["row_id"] == ("bytes_list", [b"abc-1"])
    example = ex.RowConverter(synthetic_spec).convert(good_row(row_id="-5"))
    assert features(example)["row_id"] == ("int64_list", [-5])


@pytest.mark.parametrize("changes, pattern", [
    ({"num_02": "abc"}, r"numerical field 'num_02': 'abc' is not a number"),
    ({"num_07": "1,5"}, r"numerical field 'num_07'"),
    ({"click": "2"}, r"label column 'click' must be 0 or 1, got '2'"),
    ({"click": "yes"}, r"label column 'click' must be 0 or 1, got 'yes'"),
    ({"conversion": ""}, r"label column 'conversion' must be 0 or 1, got ''"),
    ({"click": "0", "conversion": "1"},
     r"task 'conversion' is 1 but it depends on 'click', which is 0"),
    ({"domain": ""}, r"scenario column 'domain' is empty"),
    ({"channel": "  "}, r"scenario column 'channel' is empty"),
])
def test_bad_values_raise_naming_the_column(synthetic_spec, changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        ex.RowConverter(synthetic_spec).convert(good_row(**changes))


def test_synthetic_file_reads_and_converts(synthetic_spec, synthetic_file, synthetic_header):
    rows = list(ex.read_rows(synthetic_spec, synthetic_file, {}))
    assert len(rows) == SYNTHETIC_ROWS
    assert [line for line, _, _ in rows] == list(range(2, SYNTHETIC_ROWS + 2))  # Header is line 1.
    assert all(error == "" for _, _, error in rows)
    assert list(rows[0][1]) == synthetic_header
    converter = ex.RowConverter(synthetic_spec)
    for _, row, _ in rows:
        example = converter.convert(row)
        assert value(example, "click") == int(row["click"])
        assert value(example, "conversion") == int(row["conversion"])
        assert value(example, "domain") == row["domain"].encode()
        assert value(example, "num_04") == pytest.approx(float(row["num_04"]), rel=1e-6)


# --------------------------------------------------------------------------- census (real data)


def test_census_label_rules_match_raw_columns():
    census = load_dataset_spec("census")
    path = shared_file("census-income", "census-income.test.gz")
    spec = census.with_files([path])
    converter = ex.RowConverter(spec)
    rows = list(itertools.islice(ex.read_rows(spec, path, {}), 200))
    assert [line for line, _, _ in rows] == list(range(1, 201))  # No header line.
    incomes = married = 0
    for line, row, error in rows:
        assert error == "", (line, error)
        assert set(spec.required_columns) <= set(row)
        example = converter.convert(row)
        income = int(row["income_50k"].strip() == "50000+.")
        never = int(row["marital_stat"].strip() == "Never married")
        assert value(example, "income_50k") == income, (line, row["income_50k"])
        assert value(example, "never_married") == never, (line, row["marital_stat"])
        assert value(example, "race") == row["race"].strip().encode()
        assert value(example, "age") == float(row["age"])
        assert "instance_weight" not in features(example)
        incomes += income
        married += never
    # Both labels take both values in these rows, so the comparison above means something.
    assert 0 < incomes < 200 and 0 < married < 200
    assert rows[0][1]["education"].strip() == "1st 2nd 3rd or 4th grade"
    assert rows[0][1]["income_50k"].strip() == "- 50000."


# --------------------------------------------------------------------------- read_rows


def test_malformed_row_reports_file_line(synthetic_spec, synthetic_header, tmp_path):
    path = write_csv(tmp_path / "data.csv", synthetic_header, [
        row_values(synthetic_header, row_id="1"),
        "",  # Blank lines are skipped but still counted.
        row_values(synthetic_header, row_id="2") + ["extra"],
        ",".join(row_values(synthetic_header, row_id="3")[:5]),
        row_values(synthetic_header, row_id="4"),
    ])
    rows = list(ex.read_rows(synthetic_spec, path, {}))
    assert [(line, bool(error)) for line, _, error in rows] == [
        (2, False), (4, True), (5, True), (6, False)]
    _, row, error = rows[1]
    assert row == {}
    assert error.startswith(f"expected {len(synthetic_header)} fields, got {len(synthetic_header) + 1}:")
    assert "extra" in error
    assert rows[2][2].startswith(f"expected {len(synthetic_header)} fields, got 5:")
    assert rows[3][1]["row_id"] == "4"


def test_constants_are_added_to_rows(synthetic_spec, synthetic_header, tmp_path):
    header = [c for c in synthetic_header if c != "channel"]
    path = write_csv(tmp_path / "data.csv", header, [row_values(header)])
    (_, row, error), = ex.read_rows(synthetic_spec, path, {"channel": "web"})
    assert error == "" and row["channel"] == "web"
    assert value(ex.RowConverter(synthetic_spec).convert(row), "channel") == b"web"


def test_gzip_and_quoted_csv(synthetic_spec, synthetic_header, tmp_path):
    path = str(tmp_path / "data.csv.gz")
    values = row_values(synthetic_header)
    values[synthetic_header.index("cat_00")] = '"a, b"'
    with gzip.open(path, "wt") as f:
        f.write(",".join(synthetic_header) + "\n" + ",".join(values) + "\n")
    (line, row, error), = ex.read_rows(synthetic_spec, path, {})
    assert (line, error) == (2, "") and row["cat_00"] == "a, b"


def test_empty_file_yields_nothing(synthetic_spec, tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    assert list(ex.read_rows(synthetic_spec, str(path), {})) == []


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
    ]
    with tf.io.TFRecordWriter(path, compression) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    spec = _tfrecord_spec(tmp_path, path)
    assert spec.input_format == "tfrecord"
    rows = list(ex.read_rows(spec, path, {"domain": "const"}))
    assert [line for line, _, _ in rows] == [1, 2, 3, 4]
    assert rows[0][2] == "" and rows[0][1] == {
        "row_id": "1", "domain": "s0", "cat_a": "x", "num_a": "1.5", "click": "1", "amount": "12.0"}
    assert rows[1][1]["num_a"] == ""  # An empty feature reads as missing.
    assert rows[2][1] == {} and rows[2][2] == "feature 'cat_a' has 2 values, expected one"
    assert rows[3][1]["domain"] == "const"  # A constant fills in a column the record lacks.

    converter = ex.RowConverter(spec)
    first = features(converter.convert(rows[0][1]))
    assert first == {"domain": ("bytes_list", [b"s0"]), "cat_a": ("bytes_list", [b"x"]),
                     "num_a": ("float_list", [1.5]), "click": ("int64_list", [1]),
                     "buy": ("int64_list", [1]), "row_id": ("int64_list", [1])}
    second = converter.convert(rows[1][1])
    assert math.isnan(value(second, "num_a")) and value(second, "buy") == 0
    assert value(converter.convert(rows[3][1]), "num_a") == -2.0

    examples, bad, summaries = run_dofn(spec, path, (("domain", "const"),))
    assert len(examples) == 3
    assert bad == [f"{path}:3: feature 'cat_a' has 2 values, expected one"]
    assert summaries == [{"file": path, "good_rows": 3, "bad_rows": 1}]


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
    assert [value(e, "row_id") for e in examples] == [1, 6]
    assert all(isinstance(e, tf.train.Example) for e in examples)
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
        ids = results.examples | "Ids" >> beam.Map(lambda e: e.features.feature["row_id"].int64_list.value[0])
        assert_that(ids, equal_to([1, 6]), label="examples")
        lines = results.bad | "Lines" >> beam.Map(lambda s: s.split(": ", 1)[0])
        assert_that(lines, equal_to([f"{path}:{n}" for n in (3, 4, 5, 6)]), label="bad")
        assert_that(results.summary | "Parse" >> beam.Map(json.loads),
                    equal_to([{"file": path, "good_rows": 2, "bad_rows": 4}]), label="summary")


def test_missing_column_reported_once(synthetic_spec, synthetic_header, tmp_path):
    header = [c for c in synthetic_header if c != "num_03"]
    path = write_csv(tmp_path / "short.csv", header,
                     [row_values(header, row_id=str(i)) for i in range(5)])
    examples, bad, summaries = run_dofn(synthetic_spec, path)
    assert examples == []
    assert bad == [f"{path}: missing column(s) ['num_03']; every row of this file is unusable"]
    assert summaries == [{"file": path, "good_rows": 0, "bad_rows": 5}]


def test_constant_supplies_required_column(synthetic_spec, synthetic_header, tmp_path):
    spec = dataclasses.replace(synthetic_spec, files=(
        InputFile(synthetic_spec.files[0].path, constants=(("channel", "app"),)),))
    header = [c for c in synthetic_header if c != "channel"]
    path = write_csv(tmp_path / "no_channel.csv", header, [row_values(header, row_id="9")])
    examples, bad, summaries = run_dofn(spec, path, (("channel", "app"),))
    assert bad == [] and summaries[0]["good_rows"] == 1
    assert value(examples[0], "channel") == b"app"


# --------------------------------------------------------------------------- AliExpress sample


def test_aliexpress_sample_converts():
    train = shared_file("aliexpress-sample", "aliexpress_train_sample.csv")
    test = shared_file("aliexpress-sample", "aliexpress_test_sample.csv")
    base = load_dataset_spec("aliexpress")
    spec = dataclasses.replace(base, files=(InputFile(train, "train", (("country", "sample"),)),
                                            InputFile(test, "eval", (("country", "sample"),))))
    converter = ex.RowConverter(spec)
    counts = {}
    for f in spec.files:
        rows = list(ex.read_rows(spec, f.path, dict(f.constants)))
        counts[f.split] = len(rows)
        clicks = 0
        for line, row, error in rows:
            assert error == "", (f.path, line, error)
            assert set(spec.required_columns) <= set(row)
            example = converter.convert(row)
            got = features(example)
            assert got["country"] == ("bytes_list", [b"sample"])
            assert got["click"] == ("int64_list", [int(row["click"])])
            assert got["conversion"][1][0] <= got["click"][1][0]
            assert got["numerical_1"] == ("float_list", [pytest.approx(float(row["numerical_1"]))])
            assert "search_id" not in got
            assert len(got) == 1 + 2 + 16 + 63
            clicks += got["click"][1][0]
        assert 0 < clicks < len(rows)
        examples, bad, summaries = run_dofn(spec, f.path, f.constants)
        assert bad == [] and len(examples) == len(rows)
        assert summaries == [{"file": f.path, "good_rows": len(rows), "bad_rows": 0}]
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
