"""TFXIO's tf.Example decoding through ``tf.io.parse_example`` (StatisticsGen, Transform, TFMA).

TFXIO decodes tf.Examples into Arrow record batches with tfx_bsl's
``ExamplesToRecordBatchDecoder``: 51-58 µs per example of issue #7's 80-column shape here,
where ``tf.io.parse_example`` of the same batch takes about 4 µs (this module, with the
Arrow columns: about 8 µs). StatisticsGen decodes every example once and Transform the train
split twice (analysis, then materialization with the eval split): 560,000 decodes per 200k
rows (benchmarks/RESULTS.md, session 11).

``ExampleDecoder`` gives exactly the record batch tfx_bsl's decoder gives, or hands the batch
to tfx_bsl's decoder. Arrow tells a feature absent from an example (null) from one with an
empty list; ``parse_example`` does not, so the fast path takes only batches where every decoded
feature has at least one value in every example, and (without a schema, where tfx_bsl makes a
column of every feature it meets) where every example has exactly the features of the first.
Anything else (a missing feature, an empty list, an extra feature, a type that does not match)
goes to tfx_bsl's decoder, which decodes it or raises its own error.

``FastExampleDecoding`` is a Beam ``PTransformOverride`` that swaps TFXIO's decoding ``ParDo``
for one over ``ExampleDecoder``; ``components.beam_pipeline.FastPipeline`` applies it.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
from apache_beam.pipeline import PTransformOverride
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder
from tfx_bsl.tfxio import tf_example_record

# tfx_bsl's value types (large lists of these) and the dtype parse_example reads each as.
_VALUE_DTYPES = {pa.large_binary(): tf.string, pa.float32(): tf.float32, pa.int64(): tf.int64}
_KIND_VALUE_TYPES = {"bytes_list": pa.large_binary(), "float_list": pa.float32(),
                     "int64_list": pa.int64()}

Features = Tuple[Tuple[str, pa.DataType], ...]

# TFXIO's decoding DoFn: what the override below matches, and what ours extends.
_TFXIO_DECODE_DOFN = tf_example_record._DecodeBatchExamplesDoFn  # pylint: disable=protected-access

# Below this many examples tfx_bsl's decoder is the faster: the graph call and the Arrow
# columns cost about 1.3 ms a batch of the 80-column shape, tfx_bsl about 55 µs an example.
MIN_FAST_BATCH = 32


class _BatchParser:
    """Parses serialized tf.Examples of ``features`` into Arrow columns with one graph call.

    The graph returns each dtype's values concatenated over its features (strings as one
    joined buffer and their lengths) and every feature's row splits stacked ``[features,
    batch + 1]``, so building the columns costs a few numpy and Arrow calls per feature.
    """

    def __init__(self, features: Features, count_features: bool):
        self.names = [name for name, _ in features]
        self.value_types = [value_type for _, value_type in features]
        self._dtypes = [_VALUE_DTYPES[value_type] for value_type in self.value_types]
        spec = {name: tf.io.RaggedFeature(dtype, row_splits_dtype=tf.int64)
                for name, dtype in zip(self.names, self._dtypes)}
        names, dtypes = self.names, self._dtypes

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def parse(serialized):
            parsed = tf.io.parse_example(serialized, spec)
            out = {"row_splits": tf.stack([parsed[name].row_splits for name in names])}
            for dtype in (tf.float32, tf.int64, tf.string):
                values = [parsed[name].values for name, d in zip(names, dtypes) if d == dtype]
                if not values:
                    continue
                values = tf.concat(values, axis=0)
                if dtype == tf.string:
                    out["string_lengths"] = tf.strings.length(values)
                    out["string_bytes"] = tf.strings.reduce_join(values)
                else:
                    out[dtype.name] = values
            if count_features:
                # Map entries per example: equal to len(names) iff it has no other feature.
                _, features_field = tf.io.decode_proto(
                    serialized, "tensorflow.Example", ["features"], [tf.string])
                entries, _ = tf.io.decode_proto(
                    tf.reshape(features_field[0], [-1]), "tensorflow.Features", ["feature"],
                    [tf.string])
                out["entries"] = entries[:, 0]
            return out

        self._parse = parse

    def __call__(self, examples: List[bytes]) -> Optional[pa.RecordBatch]:
        try:
            out = {k: v.numpy() for k, v in self._parse(tf.constant(examples)).items()}
        except tf.errors.OpError:  # e.g. a value type other than the column's
            return None
        row_splits = out["row_splits"]
        if (row_splits[:, 1:] <= row_splits[:, :-1]).any():
            return None  # an absent feature or an empty list: tfx_bsl tells them apart
        if "entries" in out and (out["entries"] != len(self.names)).any():
            return None  # a feature the first example lacks
        if "string_bytes" in out:
            string_offsets = np.zeros(len(out["string_lengths"]) + 1, np.int64)
            np.cumsum(out["string_lengths"], out=string_offsets[1:])
            string_buffer = pa.py_buffer(out["string_bytes"])
        starts = {tf.float32: 0, tf.int64: 0, tf.string: 0}
        columns = []
        for splits, dtype, value_type in zip(row_splits, self._dtypes, self.value_types):
            start, count = starts[dtype], int(splits[-1])
            starts[dtype] += count
            if dtype == tf.string:
                offsets = string_offsets[start:start + count + 1]
                first = int(offsets[0])
                values = pa.LargeBinaryArray.from_buffers(
                    pa.large_binary(), count,
                    [None, pa.py_buffer(offsets - first),
                     string_buffer.slice(first, int(offsets[-1]) - first)])
            else:
                values = pa.array(out[dtype.name][start:start + count], type=value_type)
            columns.append(pa.LargeListArray.from_arrays(pa.array(splits), values))
        return pa.RecordBatch.from_arrays(columns, self.names)


class ExampleDecoder:
    """tfx_bsl's ``ExamplesToRecordBatchDecoder`` (same interface, same output), faster.

    Args:
      serialized_schema: a serialized TFMD schema to decode by, as tfx_bsl's decoder takes it;
        None decodes every feature found, typed by its values (tfx_bsl's schemaless mode).
    """

    def __init__(self, serialized_schema: Optional[bytes] = None):
        if serialized_schema:
            self._tfx_bsl = example_coder.ExamplesToRecordBatchDecoder(serialized_schema)
            arrow_schema = self._tfx_bsl.ArrowSchema()
            features = tuple((f.name, f.type.value_type) for f in arrow_schema
                             if pa.types.is_large_list(f.type))
            fast = len(features) == len(arrow_schema) and all(
                value_type in _VALUE_DTYPES for _, value_type in features)
            self._schema_parser = _BatchParser(features, count_features=False) if fast else None
        else:
            self._tfx_bsl = example_coder.ExamplesToRecordBatchDecoder()
            self._schema_parser = None
        self._schemaless = not serialized_schema
        self._parsers: Dict[Features, _BatchParser] = {}

    def ArrowSchema(self) -> pa.Schema:  # pylint: disable=invalid-name  (tfx_bsl's name)
        return self._tfx_bsl.ArrowSchema()

    def DecodeBatch(self, examples: Sequence[bytes]) -> pa.RecordBatch:  # pylint: disable=invalid-name
        examples = list(examples)
        parser = self._parser_for(examples)
        batch = parser(examples) if parser is not None else None
        return batch if batch is not None else self._tfx_bsl.DecodeBatch(examples)

    def _parser_for(self, examples: List[bytes]) -> Optional[_BatchParser]:
        if len(examples) < MIN_FAST_BATCH:
            return None
        if not self._schemaless:
            return self._schema_parser
        try:
            first = tf.train.Example.FromString(examples[0]).features.feature
        except Exception:  # pylint: disable=broad-except  (tfx_bsl reports a bad record)
            return None
        kinds = {name: feature.WhichOneof("kind") for name, feature in first.items()}
        if not kinds or any(kind not in _KIND_VALUE_TYPES for kind in kinds.values()):
            return None
        # tfx_bsl's schemaless columns come sorted by name.
        features = tuple((name, _KIND_VALUE_TYPES[kinds[name]]) for name in sorted(kinds))
        if features not in self._parsers:
            self._parsers[features] = _BatchParser(features, count_features=True)
        return self._parsers[features]


@beam.typehints.with_input_types(List[bytes])
@beam.typehints.with_output_types(pa.RecordBatch)
class DecodeExamplesDoFn(_TFXIO_DECODE_DOFN):
    """TFXIO's decoding DoFn (raw record column included) over ``ExampleDecoder``."""

    def setup(self):
        self._decoder = ExampleDecoder(self._serialized_schema)


class FastExampleDecoding(PTransformOverride):
    """Replaces TFXIO's tf.Example decoding ``ParDo`` by one over ``ExampleDecoder``."""

    def matches(self, applied_ptransform) -> bool:
        transform = applied_ptransform.transform
        return isinstance(transform, beam.ParDo) and type(transform.fn) is _TFXIO_DECODE_DOFN

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        # pylint: disable=protected-access  (the DoFn's own two settings)
        serialized_schema = applied_ptransform.transform.fn._serialized_schema
        raw_record_column_name = applied_ptransform.transform.fn._raw_record_column_name
        schema = schema_pb2.Schema.FromString(serialized_schema) if serialized_schema else None
        return beam.ParDo(DecodeExamplesDoFn(schema, raw_record_column_name))
