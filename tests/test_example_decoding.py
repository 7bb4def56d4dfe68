"""tf.Example decoding through tf.io.parse_example: tfx_bsl's record batches, exactly.

Every test compares against tfx_bsl's ``ExamplesToRecordBatchDecoder`` (what TFXIO, and so
TFX's StatisticsGen and Transform, decode with), and checks which path decoded the batch.
"""

import math
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that
from google.protobuf import json_format, text_format
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder
from tfx_bsl.tfxio import record_based_tfxio, tf_example_record

from components import example_decoding
from components.beam_pipeline import FastPipeline

SCHEMA = text_format.Parse("""
feature { name: "country" type: BYTES }
feature { name: "price" type: FLOAT }
feature { name: "clicks" type: INT }
feature { name: "tags" type: BYTES }
""", schema_pb2.Schema())


def _example(i: int, **overrides) -> tf.train.Example:
    features = {
        "country": [[b"NL", b"ES", b"", "\u00e9t\u00e9".encode(), b"\xff\x00bin"][i % 5]],
        "price": [[1.5, math.nan, -math.inf, 3e38, 0.0][i % 5]],
        "clicks": [[0, -7, 2 ** 62, 1, i][i % 5]],
        "tags": [b"t%d" % j for j in range(1 + i % 3)],  # 1 to 3 values
    }
    kinds = {name: type(values[0]) for name, values in features.items()}
    features.update(overrides)
    example = tf.train.Example()
    for name, values in features.items():
        if values is None:
            continue
        feature = example.features.feature[name]
        if not values:  # present, with an empty list of the feature's kind
            getattr(feature, {bytes: "bytes_list", float: "float_list", int: "int64_list"}[
                kinds[name]]).SetInParent()
        elif isinstance(values[0], bytes):
            feature.bytes_list.value.extend(values)
        elif isinstance(values[0], float):
            feature.float_list.value.extend(values)
        else:
            feature.int64_list.value.extend(values)
    return example


def _batch(n=64, **overrides_at):
    """``n`` serialized examples; ``overrides_at={index: {feature: values}}`` edits some."""
    return [_example(i, **overrides_at.get("at", {}).get(i, {})).SerializeToString()
            for i in range(n)]


def _decoders(schema):
    serialized = schema.SerializeToString() if schema is not None else None
    reference = (example_coder.ExamplesToRecordBatchDecoder(serialized) if serialized
                 else example_coder.ExamplesToRecordBatchDecoder())
    return example_decoding.ExampleDecoder(serialized), reference


def _fast_path_taken(decoder, examples) -> bool:
    parser = decoder._parser_for(examples)
    return parser is not None and parser(examples) is not None


def _assert_same(decoded: pa.RecordBatch, reference: pa.RecordBatch):
    """Same schema, nulls, offsets and values; floats bit for bit (Arrow's equals has NaN != NaN)."""
    assert decoded.schema.equals(reference.schema), (decoded.schema, reference.schema)
    assert decoded.num_rows == reference.num_rows
    for ours, theirs in zip(decoded.columns, reference.columns):
        assert ours.is_null().equals(theirs.is_null())
        assert ours.offsets.equals(theirs.offsets)
        values, expected = ours.flatten(), theirs.flatten()
        if pa.types.is_floating(values.type):
            assert np.array_equal(np.asarray(values).view(np.uint32),
                                  np.asarray(expected).view(np.uint32))
        else:
            assert values.equals(expected)


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "schemaless"])
def test_decodes_the_record_batch_tfx_bsl_decodes(schema):
    decoder, reference = _decoders(schema)
    examples = _batch(64)
    assert _fast_path_taken(decoder, examples)
    decoded = decoder.DecodeBatch(examples)
    _assert_same(decoded, reference.DecodeBatch(examples))
    assert decoded.num_rows == 64
    assert decoded.column(decoded.schema.get_field_index("tags")).to_pylist()[:3] == [
        [b"t0"], [b"t0", b"t1"], [b"t0", b"t1", b"t2"]]
    assert decoder.ArrowSchema().equals(reference.ArrowSchema()) if schema else True


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "schemaless"])
@pytest.mark.parametrize("edit", [
    {"country": None},             # absent from one example: null in Arrow
    {"tags": []},                  # present with an empty list: [] in Arrow
])
def test_an_absent_feature_or_an_empty_list_is_decoded_by_tfx_bsl(schema, edit):
    decoder, reference = _decoders(schema)
    examples = _batch(64, at={17: edit})
    assert not _fast_path_taken(decoder, examples)
    decoded = decoder.DecodeBatch(examples)
    _assert_same(decoded, reference.DecodeBatch(examples))
    column = decoded.column(decoded.schema.get_field_index(next(iter(edit))))
    assert column.to_pylist()[17] == (None if next(iter(edit.values())) is None else [])


def test_an_extra_feature_is_a_column_without_a_schema_and_ignored_with_one():
    examples = _batch(64, at={5: {"extra": [1.0]}})
    decoder, reference = _decoders(None)
    assert not _fast_path_taken(decoder, examples)  # tfx_bsl makes it a column
    decoded = decoder.DecodeBatch(examples)
    _assert_same(decoded, reference.DecodeBatch(examples))
    assert "extra" in decoded.schema.names
    decoder, reference = _decoders(SCHEMA)
    assert _fast_path_taken(decoder, examples)  # with a schema tfx_bsl ignores it too
    _assert_same(decoder.DecodeBatch(examples), reference.DecodeBatch(examples))


def test_a_value_of_the_wrong_type_raises_tfx_bsl_error():
    examples = _batch(64, at={3: {"price": [5]}})  # int64 where the schema says float
    decoder, reference = _decoders(SCHEMA)
    with pytest.raises(Exception) as expected:
        reference.DecodeBatch(examples)
    with pytest.raises(type(expected.value)):
        decoder.DecodeBatch(examples)


def test_small_batches_and_an_empty_string_feature_set_go_to_tfx_bsl():
    decoder, reference = _decoders(SCHEMA)
    small = _batch(example_decoding.MIN_FAST_BATCH - 1)
    assert decoder._parser_for(small) is None
    _assert_same(decoder.DecodeBatch(small), reference.DecodeBatch(small))
    empty = [tf.train.Example().SerializeToString()] * 40
    decoder, reference = _decoders(None)
    assert not _fast_path_taken(decoder, empty)
    _assert_same(decoder.DecodeBatch(empty), reference.DecodeBatch(empty))


def test_many_random_batches_match_tfx_bsl():
    rng = np.random.default_rng(0)
    decoder, reference = _decoders(SCHEMA)
    for _ in range(20):
        n = int(rng.integers(32, 300))
        examples = []
        for i in range(n):
            tags = [bytes(rng.integers(0, 256, int(rng.integers(0, 12))).astype(np.uint8))
                    for _ in range(int(rng.integers(1, 5)))]
            examples.append(_example(int(rng.integers(0, 1000)), tags=tags,
                                     price=list(rng.normal(size=int(rng.integers(1, 4))))
                                     ).SerializeToString())
        assert _fast_path_taken(decoder, examples)
        _assert_same(decoder.DecodeBatch(examples), reference.DecodeBatch(examples))


def _write_examples(path, examples):
    with tf.io.TFRecordWriter(path, "GZIP") as writer:
        for e in examples:
            writer.write(e)


def _rows(batches):
    """Every row of ``batches`` as a repr (NaN compares equal to itself as text), sorted."""
    return sorted(repr(row) for b in batches for row in pa.Table.from_batches([b]).to_pylist())


@pytest.mark.parametrize("raw_record_column_name", [None, "__raw_record__"])
def test_fast_pipeline_decodes_tfxio_reads_as_tfx_bsl_does(tmp_path, raw_record_column_name):
    examples = _batch(3000) + _batch(40, at={7: {"country": None}})
    path = os.path.join(str(tmp_path), "data.gz")
    _write_examples(path, examples)
    tfxio = tf_example_record.TFExampleRecord(
        path, schema=SCHEMA, raw_record_column_name=raw_record_column_name,
        telemetry_descriptors=["test"])
    reference = example_coder.ExamplesToRecordBatchDecoder(SCHEMA.SerializeToString())
    expected_batch = reference.DecodeBatch(examples)
    if raw_record_column_name:
        expected_batch = record_based_tfxio.AppendRawRecordColumn(
            expected_batch, raw_record_column_name, examples)
    expected = _rows([expected_batch])

    def check(actual):
        assert _rows(actual) == expected

    with FastPipeline() as p:
        assert_that(p | tfxio.BeamSource(batch_size=500), check)
        p.replace_all([example_decoding.FastExampleDecoding()])  # what run() does, to look
        decoders = []

        class Visitor(beam.pipeline.PipelineVisitor):
            def visit_transform(self, node):
                if isinstance(node.transform, beam.ParDo):
                    decoders.append(type(node.transform.fn))
        p.visit(Visitor())
        assert example_decoding.DecodeExamplesDoFn in decoders
        assert tf_example_record._DecodeBatchExamplesDoFn not in decoders


def test_statistics_gen_transform_and_evaluator_are_tfx_executors_on_the_fast_pipeline():
    from tfx import v1 as tfx
    from components.evaluator import Evaluator
    from components.statistics_gen import StatisticsGen
    from components.transform import Transform
    for component, tfx_component in ((StatisticsGen, tfx.components.StatisticsGen),
                                     (Transform, tfx.components.Transform),
                                     (Evaluator, tfx.components.Evaluator)):
        assert issubclass(component, tfx_component)
        executor_class = component.EXECUTOR_SPEC.executor_class
        assert issubclass(executor_class, tfx_component.EXECUTOR_SPEC.executor_class)
        executor = executor_class(executor_class.Context(
            beam_pipeline_args=["--direct_running_mode=in_memory"]))
        assert isinstance(executor._make_beam_pipeline(), FastPipeline)


def test_statistics_gen_statistics_equal_tfx_own(tmp_path):
    """Our StatisticsGen and TFX's, on the same examples artifact: the same statistics."""
    from tfx.components.statistics_gen import executor as tfx_executor
    from tfx.types import artifact_utils, standard_artifacts
    from tensorflow_metadata.proto.v0 import statistics_pb2
    from components.statistics_gen.component import Executor

    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    for split, n in (("train", 2500), ("eval", 700)):
        os.makedirs(os.path.join(examples.uri, f"Split-{split}"))
        _write_examples(os.path.join(examples.uri, f"Split-{split}", "data.gz"),
                        _batch(n, at={11: {"country": None}, 12: {"tags": []}}))

    def statistics(executor_class, name):
        output = standard_artifacts.ExampleStatistics()
        output.uri = str(tmp_path / name)
        executor_class(executor_class.Context(
            beam_pipeline_args=["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
            tmp_dir=str(tmp_path / "tmp"))).Do(
            {"examples": [examples]}, {"statistics": [output]}, {"exclude_splits": "[]"})
        result = {}
        for split in ("train", "eval"):
            stats = statistics_pb2.DatasetFeatureStatisticsList()
            with open(os.path.join(output.uri, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
                stats.ParseFromString(f.read())
            result[split] = stats
        return result

    ours, theirs = statistics(Executor, "ours"), statistics(tfx_executor.Executor, "tfx")
    assert ours["train"].datasets[0].num_examples == 2500
    for split in ("train", "eval"):
        _assert_close(json_format.MessageToDict(ours[split]),
                      json_format.MessageToDict(theirs[split]), split)


def _assert_close(ours, theirs, where):
    """Equal, floats to 1e-12 relative: TFDV merges per-batch moments, and Beam sizes the
    batches by their timing, so a mean's last bit depends on the batch boundaries."""
    assert type(ours) is type(theirs), where
    if isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours:
            _assert_close(ours[key], theirs[key], f"{where}.{key}")
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs)):
            _assert_close(a, b, f"{where}[{i}]")
    elif isinstance(ours, float):
        assert ours == theirs or math.isclose(ours, theirs, rel_tol=1e-12) or (
            math.isnan(ours) and math.isnan(theirs)), where
    else:
        assert ours == theirs, where
