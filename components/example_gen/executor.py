"""A FileBasedExampleGen executor that reads the files a dataset spec names.

It reads CSV (plain or gzipped, with or without a header) and TFRecord files of
tf.Examples column-wise (``columnar.py``: pyarrow tokenizes, numpy validates, tfx_bsl
encodes), adds per-file constant columns (e.g. the country of an AliExpress
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

import bisect
import dataclasses
import glob
import hashlib
import itertools
import json
import os
from typing import Any, Dict, List, Tuple

import apache_beam as beam
import tensorflow as tf
from absl import logging
from google.protobuf import wrappers_pb2
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.beam_pipeline import FastPipelineExecutor
from components.example_gen import columnar, write
from pipeline.specs import DatasetSpec

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


class _ConvertFile(beam.DoFn):
    """Converts one input file: serialized tf.Examples to the main output (with their
    split-key partition keys as ``(key, example)`` when ``keyed``), bad rows to 'bad'."""

    def __init__(self, spec_json: str, keyed: bool = False):
        self._spec_json = spec_json
        self._keyed = keyed

    def setup(self):
        self._spec = DatasetSpec.from_json(self._spec_json)
        self._converter = columnar.ExampleConverter(self._spec, self._keyed)

    def process(self, item):
        path, constants = item
        for kind, value in columnar.convert_file(self._spec, path, constants, self._converter):
            if kind == "examples":
                if self._keyed:
                    yield from zip(value.partition_keys, value.examples)
                else:
                    yield from value.examples
            elif kind == "bad":
                yield beam.pvalue.TaggedOutput("bad", value)
            else:
                yield beam.pvalue.TaggedOutput("summary", json.dumps(value))


def _convert_files(pipeline: beam.Pipeline, exec_properties: Dict[str, Any], split_pattern: str,
                   keyed: bool) -> beam.pvalue.PCollection:
    spec = spec_from_exec_properties(exec_properties)
    split = exec_properties[_SPLIT_BY_PATTERN_KEY][split_pattern]
    items = [(path, f.constants) for f in spec.files
             if split == "all" or f.split == split for path in sorted(tf.io.gfile.glob(f.path))]
    if not items:
        raise BadInputError(f"dataset {spec.name!r}: no input file matches for split {split!r}")
    quarantine = exec_properties[_QUARANTINE_KEY]
    results = (pipeline
               | "ListFiles" >> beam.Create(items)
               | "ConvertRows" >> beam.ParDo(_ConvertFile(spec.to_json(), keyed)).with_outputs(
                   "bad", "summary", main="examples"))
    _ = results.bad | "WriteBadRows" >> beam.io.WriteToText(
        os.path.join(quarantine, f"{split}-bad_rows"), file_name_suffix=".txt")
    _ = results.summary | "WriteSummary" >> beam.io.WriteToText(
        os.path.join(quarantine, f"{split}-summary"), file_name_suffix=".jsonl")
    # No Reshuffle: write.WriteSplit shuffles each split before writing.
    return results.examples


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _SpecFilesToExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                        split_pattern: str) -> beam.pvalue.PCollection:
    """The spec's files of one input split as serialized tf.Examples."""
    return _convert_files(pipeline, exec_properties, split_pattern, keyed=False)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(Tuple[bytes, bytes])
def _SpecFilesToKeyedExample(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                             split_pattern: str) -> beam.pvalue.PCollection:
    """As ``_SpecFilesToExample``, each example keyed by its split key's serialized feature."""
    return _convert_files(pipeline, exec_properties, split_pattern, keyed=True)


def _partition_by_key(keyed: Tuple[bytes, bytes], num_partitions: int,
                      buckets: List[int]) -> int:
    """TFX's hash split (``base_example_gen_executor._PartitionFn`` with a
    ``partition_feature_name``) on a precomputed key, as TFX's own needs a parsed proto."""
    bucket = int(hashlib.sha256(keyed[0]).hexdigest(), 16) % buckets[-1]
    return bisect.bisect(buckets, bucket)


class Executor(FastPipelineExecutor, base_example_gen_executor.BaseExampleGenExecutor):
    """ExampleGen executor driven by a dataset spec (see the module docstring), on a
    ``FastPipeline`` like our other Beam components (its writes are already level 1)."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _SpecFilesToExample

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline, exec_properties: Dict[str, Any]
                               ) -> Dict[str, beam.pvalue.PCollection]:
        """TFX's, except that a hash split on the split key hashes precomputed keys."""
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                                  output_config)
        split_config = output_config.split_config
        if not split_config.partition_feature_name:
            return super().GenerateExamplesByBeam(pipeline, exec_properties)
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                  input_config)
        buckets = list(itertools.accumulate(s.hash_buckets for s in split_config.splits))
        splits = (pipeline
                  | "InputToRecord" >> _SpecFilesToKeyedExample(  # pylint: disable=no-value-for-parameter
                      exec_properties, input_config.splits[0].pattern)
                  | "SplitData" >> beam.Partition(_partition_by_key, len(buckets), buckets))
        return {s.name: split | f"DropKeys[{s.name}]" >> beam.Values()
                for s, split in zip(split_config.splits, splits)}

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
        self._generate_examples(input_dict, output_dict, exec_properties, input_config)
        check_output(spec, examples, quarantine)

    def _generate_examples(self, input_dict, output_dict, exec_properties,
                           input_config: example_gen_pb2.Input) -> None:
        """TFX's ``BaseExampleGenExecutor.Do`` for gzipped tf.Examples, writing each split
        with ``write.WriteSplit`` (a faster gzip level, a content-keyed shuffle where the
        runner can move anything: ``write.runner_keeps_order``)."""
        self._log_startup(input_dict, output_dict, exec_properties)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                                  output_config)
        outputs = output_dict[standard_component_specs.EXAMPLES_KEY]
        artifact_utils.get_single_instance(outputs).split_names = (
            artifact_utils.encode_split_names(
                example_gen_utils.generate_output_split_names(input_config, output_config)))
        shuffle = not write.runner_keeps_order(self._beam_pipeline_args)
        with self._make_beam_pipeline() as pipeline:
            for split, examples in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                _ = examples | f"WriteSplit[{split}]" >> write.WriteSplit(  # pylint: disable=no-value-for-parameter
                    artifact_utils.get_split_uri(outputs, split), shuffle=shuffle)
        for artifact in outputs:
            examples_utils.set_payload_format(artifact, example_gen_pb2.FORMAT_TF_EXAMPLE)
            examples_utils.set_file_format(
                artifact, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))


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
