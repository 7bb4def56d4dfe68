"""A FileBasedExampleGen executor that reads the files a dataset spec names.

It reads CSV (plain or gzipped, with or without a header) and TFRecord files of
tf.Examples, adds per-file constant columns (e.g. the country of an AliExpress
file), turns label rules into 0/1 labels, and writes tf.Examples with typed
features: categorical and scenario columns as bytes, numerical fields as float
(NaN where missing), labels as int64 named after their task.

A malformed row (wrong number of fields, a number that does not parse, a label
that is not 0/1, a conversion without a click, an empty scenario) is never
dropped silently: it is written to ``<pipeline_root>/<ExampleGen>/quarantine/<id>/``
(beside the examples artifact, so that it survives a failed execution) with its file,
line and reason, and the run fails if more than the spec's
``max_bad_row_fraction`` of the rows are bad.
"""

import csv
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import math
import os
from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
import tensorflow as tf
from absl import logging
from google.protobuf import wrappers_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from pipeline.specs import DatasetSpec, LabelRule

QUARANTINE_DIR = "quarantine"


def quarantine_dir(examples_uri: str) -> str:
    """``<root>/<component>/quarantine/<id>`` for ``<root>/<component>/examples/<id>``.

    Outside the output artifact, which TFX removes when the execution fails.
    """
    component_dir, execution_id = os.path.split(os.path.normpath(examples_uri))
    return os.path.join(os.path.dirname(component_dir), QUARANTINE_DIR, execution_id)
_SPLIT_BY_PATTERN_KEY = "_msmt_split_by_pattern"
_QUARANTINE_KEY = "_msmt_quarantine_dir"


class BadInputError(ValueError):
    """The input data is unusable; the message says what and where."""


def files_fingerprint(spec: DatasetSpec) -> str:
    """Changes whenever an input file is added, removed or rewritten (name, size, mtime)."""
    digest = hashlib.sha256()
    for f in spec.files:
        for path in f.matches():
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def data_root(spec: DatasetSpec) -> str:
    """The directory holding every input file: ExampleGen's ``input_base``."""
    paths = [p for f in spec.files for p in (f.matches() or [f.path])]
    return os.path.commonpath([os.path.dirname(p) for p in paths])


def spec_to_custom_config(spec: DatasetSpec) -> example_gen_pb2.CustomConfig:
    """Packs the spec, its data root and the input files' fingerprint (caching sees new data)."""
    payload = json.dumps({"spec": spec.to_json(), "data_root": data_root(spec),
                          "files_fingerprint": files_fingerprint(spec)})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(wrappers_pb2.StringValue(value=payload))
    return config


def spec_from_exec_properties(exec_properties: Dict[str, Any]) -> DatasetSpec:
    config = example_gen_pb2.CustomConfig()
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if isinstance(raw, str):
        proto_utils.json_to_proto(raw, config)
    else:
        config = raw
    value = wrappers_pb2.StringValue()
    config.custom_config.Unpack(value)
    payload = json.loads(value.value)
    spec = DatasetSpec.from_json(payload["spec"])
    input_base = exec_properties.get(standard_component_specs.INPUT_BASE_KEY)
    if input_base and payload.get("data_root") and input_base != payload["data_root"]:
        # The data root is a runtime parameter (Kubeflow): the spec's files, relative
        # to the data root they were compiled with, are read under the one given.
        spec = dataclasses.replace(spec, files=tuple(
            dataclasses.replace(f, path=os.path.join(
                input_base, os.path.relpath(f.path, payload["data_root"])))
            for f in spec.files))
    return spec


class RowConverter:
    """Turns one raw row (column -> string) into a tf.Example, or raises ValueError."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        self.na_values = set(spec.na_values)
        self.rules = {t.name: LabelRule(t.label_rule).compile() for t in spec.tasks if t.label_rule}
        self.split_key = spec.split_key

    def _label(self, task, row) -> int:
        if task.name in self.rules:
            return self.rules[task.name](row)
        value = row[task.label].strip()
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number not in (0.0, 1.0):
            raise ValueError(f"label column {task.label!r} must be 0 or 1, got {value!r}")
        return int(number)

    def convert(self, row: Dict[str, str]) -> tf.train.Example:
        spec = self.spec
        feature = {}
        for column in spec.scenario_columns:
            value = row[column].strip()
            if not value:
                raise ValueError(f"scenario column {column!r} is empty")
            feature[column] = _bytes(value)
        for field in spec.categorical_fields:
            feature[field.name] = _bytes(row[field.name].strip())
        for field in spec.numerical_fields:
            value = row[field.name].strip()
            if value in self.na_values:
                number = math.nan
            else:
                try:
                    number = float(value)
                except ValueError:
                    raise ValueError(f"numerical field {field.name!r}: {value!r} is not a number")
            feature[field.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[number]))
        labels = {}
        for task in spec.tasks:
            labels[task.name] = self._label(task, row)
            if task.depends_on and labels[task.name] and not labels[task.depends_on]:
                raise ValueError(f"task {task.name!r} is 1 but it depends on "
                                 f"{task.depends_on!r}, which is 0")
            feature[task.name] = tf.train.Feature(int64_list=tf.train.Int64List(
                value=[labels[task.name]]))
        if self.split_key and self.split_key not in feature:
            value = row[self.split_key].strip()
            feature[self.split_key] = (
                tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
                if value.lstrip("-").isdigit() else _bytes(value))
        return tf.train.Example(features=tf.train.Features(feature=feature))


def _bytes(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))


class _GFileRaw(io.RawIOBase):
    """Lets io.TextIOWrapper read a tf.io.gfile.GFile, which has no readable()."""

    def __init__(self, f):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_text(path: str) -> io.TextIOBase:
    raw = tf.io.gfile.GFile(path, "rb")
    if path.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)
    else:
        raw = io.BufferedReader(_GFileRaw(raw))
    # Undecodable bytes become U+FFFD, and read_rows sets such a row aside.
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def read_rows(spec: DatasetSpec, path: str, constants: Dict[str, str]
              ) -> Iterator[Tuple[int, Dict[str, str], str]]:
    """Yields ``(line_number, row, error)`` for every data row of one file."""
    if spec.input_format == "tfrecord":
        compression = "GZIP" if path.endswith(".gz") else ""
        for number, record in enumerate(tf.data.TFRecordDataset(path, compression).as_numpy_iterator(), 1):
            example = tf.train.Example.FromString(record)
            row = dict(constants)
            for name, f in example.features.feature.items():
                values = (list(f.bytes_list.value) or list(f.float_list.value)
                          or list(f.int64_list.value))
                if len(values) > 1:
                    yield number, {}, f"feature {name!r} has {len(values)} values, expected one"
                    break
                row[name] = (values[0].decode("utf-8") if isinstance(values[0], bytes)
                             else repr(values[0])) if values else ""
            else:
                yield number, row, ""
        return
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=spec.separator, skipinitialspace=True)
        columns = list(spec.columns) if not spec.header else next(reader, None)
        if columns is None:
            return
        columns = [c.strip() for c in columns]
        for values in reader:
            if not values or values == [""]:
                continue
            if len(values) != len(columns):
                yield reader.line_num, {}, (f"expected {len(columns)} fields, got {len(values)}: "
                                            f"{spec.separator.join(values)[:200]!r}")
                continue
            if any("\ufffd" in v for v in values):
                yield reader.line_num, {}, "not valid UTF-8"
                continue
            row = dict(zip(columns, values))
            row.update(constants)
            yield reader.line_num, row, ""


class _ConvertFile(beam.DoFn):
    """Reads one input file; good rows to the main output, bad rows to 'bad'."""

    def __init__(self, spec_json: str):
        self._spec_json = spec_json

    def setup(self):
        self._spec = DatasetSpec.from_json(self._spec_json)
        self._converter = RowConverter(self._spec)
        self._needed = self._spec.raw_columns

    def process(self, item):
        path, constants = item
        good = bad = 0
        missing_reported = False
        for line, row, error in read_rows(self._spec, path, dict(constants)):
            if not error:
                missing = [c for c in self._needed if c not in row]
                if missing:
                    if not missing_reported:
                        yield beam.pvalue.TaggedOutput("bad", f"{path}: missing column(s) "
                                                       f"{missing}; every row of this file is unusable")
                        missing_reported = True
                    bad += 1
                    continue
                try:
                    example = self._converter.convert(row)
                except ValueError as e:
                    error = str(e)
            if error:
                bad += 1
                yield beam.pvalue.TaggedOutput("bad", f"{path}:{line}: {error}")
                continue
            good += 1
            yield example
        yield beam.pvalue.TaggedOutput("summary", json.dumps(
            {"file": path, "good_rows": good, "bad_rows": bad}))


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _SpecFilesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                        split_pattern: str) -> beam.pvalue.PCollection:
    spec = spec_from_exec_properties(exec_properties)
    split = exec_properties[_SPLIT_BY_PATTERN_KEY][split_pattern]
    items = [(path, f.constants) for f in spec.files
             if split == "all" or f.split == split for path in sorted(tf.io.gfile.glob(f.path))]
    if not items:
        raise BadInputError(f"dataset {spec.name!r}: no input file matches for split {split!r}")
    quarantine = exec_properties[_QUARANTINE_KEY]
    results = (pipeline
               | "ListFiles" >> beam.Create(items)
               | "ConvertRows" >> beam.ParDo(_ConvertFile(spec.to_json())).with_outputs(
                   "bad", "summary", main="examples"))
    _ = results.bad | "WriteBadRows" >> beam.io.WriteToText(
        os.path.join(quarantine, f"{split}-bad_rows"), file_name_suffix=".txt")
    _ = results.summary | "WriteSummary" >> beam.io.WriteToText(
        os.path.join(quarantine, f"{split}-summary"), file_name_suffix=".jsonl")
    return results.examples | "Reshuffle" >> beam.Reshuffle()


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """ExampleGen executor driven by a dataset spec (see the module docstring)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _SpecFilesToExample

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        spec = spec_from_exec_properties(exec_properties)
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        quarantine = quarantine_dir(examples.uri)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        split_by_pattern = {s.pattern: (s.name if spec.split_method == "files" else "all")
                            for s in input_config.splits}
        exec_properties = dict(exec_properties, **{_SPLIT_BY_PATTERN_KEY: split_by_pattern,
                                                   _QUARANTINE_KEY: quarantine})
        super().Do(input_dict, output_dict, exec_properties)
        check_output(spec, examples, quarantine)


def check_output(spec: DatasetSpec, examples, quarantine: str) -> None:
    """Fails with a clear message on too many bad rows or an empty split."""
    summaries = []
    for path in glob.glob(os.path.join(quarantine, "*-summary*.jsonl")):
        with open(path) as f:
            summaries += [json.loads(line) for line in f if line.strip()]
    good = sum(s["good_rows"] for s in summaries)
    bad = sum(s["bad_rows"] for s in summaries)
    total = good + bad
    bad_files = sorted(glob.glob(os.path.join(quarantine, "*-bad_rows*.txt")))
    if bad:
        first = []
        for path in bad_files:
            with open(path) as f:
                first += [line.rstrip("\n") for _, line in zip(range(5 - len(first)), f)]
        message = (f"dataset {spec.name!r}: {bad} of {total} rows "
                   f"({100.0 * bad / max(total, 1):.3f}%) are malformed and were set aside in "
                   f"{quarantine}; first: " + "; ".join(first))
        if total == 0 or bad / total > spec.max_bad_row_fraction:
            raise BadInputError(message + f". This exceeds inputs.max_bad_row_fraction="
                                f"{spec.max_bad_row_fraction} in {spec.source}.")
        logging.warning(message)
    for split in artifact_utils.decode_split_names(examples.split_names):
        files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
        empty = not files or not any(True for _ in tf.data.TFRecordDataset(files, "GZIP").take(1))
        if empty:
            raise BadInputError(
                f"dataset {spec.name!r}: split {split!r} is empty after reading {good} good rows; "
                f"add data or change split (eval_fraction={spec.eval_fraction}) in {spec.source}")


def make_example_gen(spec: DatasetSpec, input_base: Any = None) -> FileBasedExampleGen:
    """A FileBasedExampleGen running this executor over the spec's files.

    ``input_base`` (e.g. a Kubeflow runtime parameter) replaces the spec's data root;
    the files are then read at the same paths relative to it.
    """
    paths = [p for f in spec.files for p in (f.matches() or [f.path])]
    spec_root = data_root(spec)
    if spec.split_method == "files":
        splits = []
        for split in ("train", "eval"):
            first = next(p for f in spec.files if f.split == split for p in (f.matches() or [f.path]))
            splits.append(example_gen_pb2.Input.Split(
                name=split, pattern=os.path.relpath(first, spec_root)))
        input_config = example_gen_pb2.Input(splits=splits)
        output_config = example_gen_pb2.Output()
    else:
        input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
            name="all", pattern=os.path.relpath(paths[0], spec_root))])
        eval_buckets = min(99, max(1, round(100 * spec.eval_fraction)))
        split_config = example_gen_pb2.SplitConfig(splits=[
            example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=100 - eval_buckets),
            example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=eval_buckets)])
        if spec.split_key:
            split_config.partition_feature_name = spec.split_key
        output_config = example_gen_pb2.Output(split_config=split_config)
    return FileBasedExampleGen(
        input_base=spec_root if input_base is None else input_base,
        input_config=input_config, output_config=output_config,
        custom_config=spec_to_custom_config(spec),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor))
