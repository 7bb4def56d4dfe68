"""tf.Example encoding in numpy: the examples tfx_bsl's encoder writes, in column order.

Every test compares against tfx_bsl's ``RecordBatchToExamplesEncoder`` (what TFX's
Transform and our ExampleGen encoded with), value bits included, and checks which path
encoded the batch.
"""

import math
import pickle

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx.components.transform import executor as transform_executor
from tfx_bsl.coders import example_coder

from components import example_encoding
from components.beam_pipeline import FastPipeline

TFX_BSL = example_coder.RecordBatchToExamplesEncoder()


class _CountingFallback:
    """tfx_bsl's encoder, counting the batches it encodes."""

    def __init__(self):
        self.calls = 0

    def encode(self, record_batch):
        self.calls += 1
        return TFX_BSL.encode(record_batch)


def _values(example: bytes):
    """``{feature: (kind, values)}`` of a serialized example; floats as their bits."""
    parsed = {}
    for name, feature in tf.train.Example.FromString(example).features.feature.items():
        kind = feature.WhichOneof("kind")
        values = list(getattr(feature, kind).value) if kind else None
        if kind == "float_list":
            values = np.array(values, np.float32).view(np.uint32).tolist()
        parsed[name] = (kind, values)
    return dict(sorted(parsed.items()))


def _keys_in_order(example: bytes):
    """The feature names in the order they are written."""
    def varint(data, i):
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, i
    assert example[0] == 0x0A
    length, i = varint(example, 1)
    end, keys = i + length, []
    while i < end:
        length, j = varint(example, i + 1)
        entry = example[j:j + length]
        key_length, k = varint(entry, 1)
        keys.append(entry[k:k + key_length].decode())
        i = j + length
    return keys


def _assert_same_examples(record_batch, fast=True):
    fallback = _CountingFallback()
    ours = example_encoding.ExampleEncoder(fallback).encode(record_batch)
    theirs = TFX_BSL.encode(record_batch)
    assert len(ours) == len(theirs) == record_batch.num_rows
    for mine, reference in zip(ours, theirs):
        assert _values(mine) == _values(reference)
        assert len(mine) == len(reference)
    assert fallback.calls == (0 if fast else 1)
    if fast:
        for example in ours:
            assert _keys_in_order(example) == record_batch.schema.names
    return ours


def _single(values, value_type, large=True):
    list_type = pa.large_list(value_type) if large else pa.list_(value_type)
    return pa.array([[v] for v in values], list_type)


def _wide_batch(n, rng):
    """Issue #7's raw shape: 16 string fields, 63 floats, 2 int64 labels."""
    columns, names = [], []
    for i in range(16):
        columns.append(_single([b"v%d" % v for v in rng.integers(0, 2000, n)], pa.large_binary()))
        names.append(f"cat_{i:02d}")
    for i in range(63):
        columns.append(_single(rng.standard_normal(n).astype(np.float32), pa.float32()))
        names.append(f"num_{i:02d}")
    for task in ("click", "conversion"):
        columns.append(_single(rng.integers(0, 2, n), pa.int64()))
        names.append(task)
    return pa.RecordBatch.from_arrays(columns, names)


def test_encodes_the_examples_tfx_bsl_encodes_in_column_order():
    rng = np.random.default_rng(0)
    _assert_same_examples(_wide_batch(500, rng))
    transformed = pa.RecordBatch.from_arrays(
        [_single(rng.integers(0, 2100, 300), pa.int64()) for _ in range(81)],
        [f"field_{i}_xf" for i in range(81)])
    _assert_same_examples(transformed)


def test_edge_values_and_types():
    batch = pa.RecordBatch.from_arrays([
        _single([0, -1, 127, 128, 2 ** 63 - 1, -2 ** 63, 16383, 16384], pa.int64()),
        _single([0.0, -0.0, math.nan, math.inf, -math.inf, 3e38, 1e-45, 1.5], pa.float32(),
                large=False),
        _single([b"", b"\x00\xff", b"a" * 60, b"b" * 30, b"c", b"d" * 99, b"e", b"f"],
                pa.binary(), large=False),
        _single([s.encode() for s in ["", "\u00e9t\u00e9", "x", "y", "z", "w", "v", "u"]],
                pa.large_binary()),
        _single([b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h"], pa.binary()),
    ], ["ints", "floats", "bytes", "\u00e9", "k" * 200])  # a key longer than 127 bytes
    _assert_same_examples(batch)
    # A NaN's payload is kept bit for bit.
    payload = np.array([0x7FC00123], np.uint32).view(np.float32)
    _assert_same_examples(pa.RecordBatch.from_arrays([_single(payload, pa.float32())], ["f"]))


def test_long_strings_on_the_fast_path_and_mixed_varint_sizes_through_tfx_bsl():
    long = pa.RecordBatch.from_arrays([_single([b"x" * 300, b"y" * 5000], pa.binary())], ["s"])
    _assert_same_examples(long)
    # A column with strings both under and over 127 bytes: its length prefixes differ in size.
    mixed = pa.RecordBatch.from_arrays([_single([b"x" * 3, b"y" * 300], pa.binary())], ["s"])
    _assert_same_examples(mixed, fast=False)


@pytest.mark.parametrize("column", [
    pa.array([[1], None, [3]], pa.large_list(pa.int64())),  # a null row: no value
    pa.array([[1], [], [3]], pa.large_list(pa.int64())),  # an empty list
    pa.array([[1], [2, 3], [4]], pa.large_list(pa.int64())),  # two values
    pa.array([[b"a"], [None], [b"c"]], pa.large_list(pa.large_binary())),  # a null value
    pa.array([[[1]], [[2]], [[3]]], pa.large_list(pa.large_list(pa.int64()))),  # nested
    pa.array([["a"], ["b"], ["c"]], pa.large_list(pa.large_string())),  # tfx_bsl refuses
    pa.array([[1], [2], [3]], pa.large_list(pa.int32())),
])
def test_batches_off_the_fast_path_go_to_tfx_bsl(column):
    batch = pa.RecordBatch.from_arrays([_single([1.0, 2.0, 3.0], pa.float32()), column],
                                       ["f", "g"])
    try:
        TFX_BSL.encode(batch)
    except Exception as error:  # pylint: disable=broad-except
        with pytest.raises(type(error), match=str(error)[:40]):
            example_encoding.ExampleEncoder().encode(batch)
        return
    _assert_same_examples(batch, fast=False)


def test_sliced_small_and_empty_batches():
    rng = np.random.default_rng(1)
    batch = _wide_batch(300, rng)
    _assert_same_examples(batch.slice(7, 120))
    # Fewer rows than columns: tfx_bsl's encoder is the faster there.
    _assert_same_examples(batch.slice(7, 80), fast=False)
    assert example_encoding.ExampleEncoder().encode(batch.slice(0, 0)) == []


def test_many_random_batches_match_tfx_bsl():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(12, 200))
        columns, names = [], []
        for c in range(int(rng.integers(1, 12))):
            kind = rng.integers(0, 3)
            if kind == 0:
                scale = 2 ** int(rng.integers(1, 63))
                values = rng.integers(-scale, scale, n)
                columns.append(_single(values, pa.int64(), large=bool(rng.integers(0, 2))))
            elif kind == 1:
                values = (rng.standard_normal(n) * 10.0 ** rng.integers(-5, 5)).astype(np.float32)
                columns.append(_single(values, pa.float32()))
            else:
                length = int(rng.integers(0, 40))
                values = [bytes(rng.integers(0, 256, int(rng.integers(0, length + 1)),
                                             dtype=np.uint8)) for _ in range(n)]
                columns.append(_single(values, pa.large_binary()))
            # Entries under 128 bytes: every length prefix is one byte (the fast path).
            names.append("f" * int(rng.integers(1, 60)) + str(c))
        _assert_same_examples(pa.RecordBatch.from_arrays(columns, names))


def test_the_encoder_pickles():
    encoder = pickle.loads(pickle.dumps(example_encoding.ExampleEncoder()))
    batch = _wide_batch(100, np.random.default_rng(3))
    assert encoder.encode(batch) == example_encoding.ExampleEncoder().encode(batch)


def test_fast_pipeline_encodes_transform_output_with_the_numpy_encoder():
    """TFX Transform's own encoding DoFn, on a FastPipeline: column-ordered examples (tfx_bsl
    writes this batch's 81 features in its hash map's order)."""
    batch = _wide_batch(100, np.random.default_rng(4))
    dofn = transform_executor.TransformProcessor._RecordBatchToExamplesFn(  # pylint: disable=protected-access
        schema_pb2.Schema())

    def check(keyed_examples):
        assert len(keyed_examples) == 100
        expected = [_values(e) for e in TFX_BSL.encode(batch)]
        assert sorted(map(str, (_values(e) for _, e in keyed_examples))) == sorted(
            map(str, expected))
        for _, example in keyed_examples:
            assert _keys_in_order(example) == batch.schema.names

    with FastPipeline(runner="FnApiRunner") as pipeline:
        encoded = (pipeline | beam.Create([(batch, {})]) | beam.ParDo(dofn))
        assert_that(encoded, check)
    # The override copies the DoFn: TFX's own instance keeps tfx_bsl's encoder.
    assert isinstance(dofn._coder, example_coder.RecordBatchToExamplesEncoder)  # pylint: disable=protected-access
