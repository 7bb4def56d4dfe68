"""tf.Example encoding of Arrow record batches in numpy (ExampleGen's output, Transform's).

ExampleGen and Transform's materialization encode record batches with tfx_bsl's
``RecordBatchToExamplesEncoder``, which builds one ``tf.Example`` proto per row and
serializes it: 17-19 µs per example of issue #7's 80-column shape here (batches of
1000), and 7.6 s of the four data components' 62 s per 200k rows once decoding was fast
(benchmarks/RESULTS.md, session 12).

``ExampleEncoder`` writes the same wire format for a whole batch with numpy operations
whose number does not grow with the rows (see its docstring). Its examples parse to exactly
tfx_bsl's: the same features, types, values and NaN bits. The bytes differ in one way:
features come in column order, where tfx_bsl's C++ map writes them in its hash map's
order; so ours are also the same bytes on every run.

The fast path takes a batch whose every column is a list (or large list) of int64,
float32 or binary values with exactly one value per row, which is what ExampleGen
and a ``preprocessing_fn`` of dense features write, and where each length prefix of a
column has the same varint size in every row (not so for a column of strings both shorter
and longer than about 120 bytes). Anything else (a null row, an empty or longer list, a
nested list, another value type such as Arrow's strings) goes to tfx_bsl's encoder, which
encodes it or raises its own error; so does a batch of fewer rows than columns, where
tfx_bsl's encoder is the faster (benchmarks/codec_throughput.py).

``FastExampleEncoding`` is a Beam ``PTransformOverride`` that gives TFX Transform's
encoding ``DoFn`` this encoder; ``components.beam_pipeline.FastPipeline`` applies it.
"""

import copy
from typing import Dict, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.pipeline import PTransformOverride
from tfx_bsl.coders import example_coder

_TRANSFORM_ENCODE_QUALNAME = "TransformProcessor._RecordBatchToExamplesFn"

_INT, _FLOAT, _BYTES = "int64", "float32", "bytes"
# The value types tfx_bsl's encoder takes (it refuses Arrow's string types).
_VALUE_KINDS = {pa.int64(): _INT, pa.float32(): _FLOAT, pa.binary(): _BYTES,
                pa.large_binary(): _BYTES}

# Wire-format tags (field number << 3 | wire type 2, length-delimited).
_TAG_1, _TAG_2, _TAG_3 = 0x0A, 0x12, 0x1A


# Largest value of each varint length: 2**7 - 1, 2**14 - 1, ...
_VARINT_LIMITS = {np.dtype(np.uint64): np.array([(1 << (7 * k)) - 1 for k in range(1, 10)],
                                                np.uint64)}
_VARINT_LIMITS[np.dtype(np.int64)] = _VARINT_LIMITS[np.dtype(np.uint64)][:8].astype(np.int64)


def _varint_lengths(values: np.ndarray) -> np.ndarray:
    """Bytes of each varint in ``values``: uint64, or int64 lengths (>= 0); any shape."""
    limits = _VARINT_LIMITS[values.dtype]
    needed = int(np.searchsorted(limits, values.max(initial=0)))  # thresholds to compare
    if needed == 0:
        return np.ones(values.shape, np.int64)
    return 1 + np.searchsorted(limits[:needed], values).astype(np.int64)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _binary_parts(values: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
    """A binary array's ``(offsets from its first value, data bytes)``."""
    large = pa.types.is_large_binary(values.type)
    _, offsets_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64 if large else np.int32)
    offsets = offsets[values.offset:values.offset + len(values) + 1].astype(np.int64)
    data = (np.frombuffer(data_buffer, np.uint8) if data_buffer is not None
            else np.zeros(0, np.uint8))
    return offsets - offsets[0], data[offsets[0]:offsets[-1]]


def _single_values(column: pa.Array) -> Optional[Tuple[str, pa.Array]]:
    """``(kind, values)`` if ``column`` is a list column with exactly one value per row."""
    large = pa.types.is_large_list(column.type)
    if not (large or pa.types.is_list(column.type)):
        return None
    kind = _VALUE_KINDS.get(column.type.value_type)
    if kind is None or column.null_count:
        return None
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], np.int64 if large else np.int32)
    offsets = offsets[column.offset:column.offset + n + 1]
    first = int(offsets[0]) if n else 0
    if n and (offsets[-1] - first != n or not np.array_equal(offsets, first + np.arange(n + 1))):
        return None
    values = column.values.slice(first, n)
    if values.null_count:
        return None
    return kind, values


def _put_varints(rows: np.ndarray, at: np.ndarray, values: np.ndarray,
                 lengths: np.ndarray) -> None:
    """Writes ``values[:, j]`` (uint64, or int64 >= 0; ``[n, k]``) as varints at column
    ``at[j]`` of ``rows``.

    ``lengths``: each varint's bytes, ``[n, k]`` or one per column ``[k]``. Where they vary by
    row, a shorter varint's unused bytes get garbage: they are padding, masked out later.
    """
    most = lengths.max(axis=0) if lengths.ndim == 2 else lengths
    if int(most.max(initial=0)) <= 1:
        rows[:, at] = values
        return
    kind = values.dtype.type
    for byte in range(int(most.max())):
        columns = most > byte if byte else slice(None)
        value = (values[:, columns] >> kind(7 * byte)) & kind(0x7F)
        more = lengths[..., columns] > byte + 1
        rows[:, at[columns] + byte] = value | (more.astype(values.dtype) << kind(7))


def _constant(sizes: np.ndarray) -> Optional[np.ndarray]:
    """``sizes[0]`` (per column) if every row has the same varint sizes ``[n, k]``, else None."""
    return sizes[0] if (sizes == sizes[0]).all() else None


class _Kind:
    """The columns of one value kind (``[n, k]`` cells): the lengths in their map entries.

    A column's map entry in ``Features`` is
    ``0x0A <entry length> 0x0A <key length> <key> 0x12 <feature length> <feature>``, and
    its one-value feature is
    int64 ``0x1A <list length> 0x0A <varint length> <varint>`` (``int64_list``, packed),
    float ``0x12 0x06 0x0A 0x04 <4 bytes>`` (``float_list``, packed fixed32),
    bytes ``0x0A <list length> 0x0A <length> <bytes>`` (``bytes_list``).
    ``ok`` is False where a length other than the last part's has a varint size that varies
    by row (e.g. a column of strings both shorter and longer than 120 bytes).
    """

    def __init__(self, kind: str, columns: List[int], values: List[pa.Array],
                 key_lengths: np.ndarray):
        self.kind, self.columns = kind, np.array(columns, np.int64)
        keys = key_lengths[self.columns]
        n = len(values[0])
        if kind == _INT:
            self.values = np.stack([v.to_numpy(zero_copy_only=False) for v in values],
                                   axis=1).astype(np.int64, copy=False).view(np.uint64)
            self.value_lengths = _varint_lengths(self.values)
            self.feature_lengths = 4 + self.value_lengths
            self.tail = self.value_lengths  # the varint, last in the slot
        elif kind == _FLOAT:
            floats = np.stack([v.to_numpy(zero_copy_only=False) for v in values], axis=1)
            self.values = np.ascontiguousarray(floats, np.float32).view(np.uint8)
            self.feature_lengths = np.full((n, len(columns)), 8, np.int64)
            self.tail = np.full((n, len(columns)), 4, np.int64)
        else:
            self.parts = [_binary_parts(v) for v in values]
            self.value_lengths = np.stack([np.diff(offsets) for offsets, _ in self.parts],
                                          axis=1)
            self.list_lengths = 1 + _varint_lengths(self.value_lengths) + self.value_lengths
            self.feature_lengths = (1 + _varint_lengths(self.list_lengths) + self.list_lengths)
            self.tail = self.value_lengths
            self.value_size = _constant(_varint_lengths(self.value_lengths))
            self.list_size = _constant(_varint_lengths(self.list_lengths))
        self.feature_size = _constant(_varint_lengths(self.feature_lengths))
        entry_lengths = keys + self.feature_lengths
        if self.feature_size is not None:
            entry_lengths += self.feature_size
        self.entry_lengths = entry_lengths
        self.entry_size = _constant(_varint_lengths(entry_lengths))
        self.ok = self.feature_size is not None and self.entry_size is not None and (
            kind != _BYTES or (self.value_size is not None and self.list_size is not None))
        if self.ok:
            self.piece_lengths = 1 + self.entry_size + entry_lengths
            self.widths = self.piece_lengths.max(axis=0)

    def layout(self, template: np.ndarray, starts: np.ndarray, key_parts: List[bytes]) -> None:
        """Writes the bytes that are the same in every row into ``template`` and records
        where the varying ones go; ``starts``: each column's slot start."""
        at = starts[self.columns]
        self.entry_at = at + 1
        self.feature_length_at = self.entry_at + self.entry_size + np.array(
            [len(key_parts[c]) for c in self.columns])
        feature_at = self.feature_length_at + self.feature_size
        for column, slot, key_at in zip(self.columns, at, self.entry_at + self.entry_size):
            template[slot] = _TAG_1
            part = key_parts[column]
            template[key_at:key_at + len(part)] = np.frombuffer(part, np.uint8)
        if self.kind == _INT:
            template[feature_at] = _TAG_3
            template[feature_at + 2] = _TAG_1
            self.tail_at = feature_at + 4
        elif self.kind == _FLOAT:
            for byte, value in enumerate((_TAG_2, 6, _TAG_1, 4)):
                template[feature_at + byte] = value
            self.tail_at = feature_at + 4
        else:
            template[feature_at] = _TAG_1
            self.list_at = feature_at + 1
            self.value_length_at = self.list_at + self.list_size + 1
            template[self.value_length_at - 1] = _TAG_1
            self.tail_at = self.value_length_at + self.value_size

    def write(self, rows: np.ndarray, mask: np.ndarray) -> None:
        """Writes the varying bytes into ``rows`` ``[n, width]`` and masks out the padding."""
        _put_varints(rows, self.entry_at, self.entry_lengths, self.entry_size)
        _put_varints(rows, self.feature_length_at, self.feature_lengths,
                     self.feature_size)
        if self.kind == _INT:
            rows[:, self.tail_at - 3] = self.value_lengths + 2
            rows[:, self.tail_at - 1] = self.value_lengths
            _put_varints(rows, self.tail_at, self.values, self.value_lengths)
            most = self.value_lengths.max(axis=0)
            for byte in range(1, int(most.max(initial=1))):
                columns = most > byte
                mask[:, self.tail_at[columns] + byte] = self.value_lengths[:, columns] > byte
        elif self.kind == _FLOAT:
            at = (self.tail_at[:, None] + np.arange(4)).ravel()
            rows[:, at] = self.values.reshape(len(rows), -1)
        else:
            _put_varints(rows, self.list_at, self.list_lengths, self.list_size)
            _put_varints(rows, self.value_length_at, self.value_lengths,
                         self.value_size)
            flat, width = rows.reshape(-1), rows.shape[1]
            row_starts = np.arange(len(rows)) * width
            for j, (offsets, data) in enumerate(self.parts):
                lengths, at = self.value_lengths[:, j], int(self.tail_at[j])
                most = int(lengths.max(initial=0))
                mask[:, at:at + most] = np.arange(most) < lengths[:, None]
                if len(data):
                    flat[np.repeat(row_starts + at - offsets[:-1], lengths)
                         + np.arange(len(data))] = data


class ExampleEncoder:
    """``encode(record_batch)``: its rows as serialized tf.Examples (see the module docstring).

    ``fallback``: the tfx_bsl encoder for batches off the fast path (by default one without
    a schema, which tfx_bsl needs only for nested lists).

    Each row is laid out in a ``[rows, width]`` byte matrix with one fixed slot per column,
    as wide as the column's longest map entry. Only an entry's last part (a varint value,
    the bytes) has a length that varies by row, so a row's padding sits at the ends of its
    slots and the encoded rows are the matrix's bytes under a mask, in order. The matrix
    starts as one template row (tags, keys), and each varying byte is written for every
    column of its kind in one numpy operation.
    """

    def __init__(self, fallback: Optional[example_coder.RecordBatchToExamplesEncoder] = None):
        self._fallback = fallback or example_coder.RecordBatchToExamplesEncoder()

    def encode(self, record_batch: pa.RecordBatch) -> List[bytes]:
        # Ours costs about 15 µs per column and batch plus 4-5 µs per example, tfx_bsl's
        # about 20 µs per example (80 columns): below a row per column tfx_bsl is faster.
        fast = record_batch.num_rows >= max(record_batch.num_columns, 1)
        encoded = self._encode(record_batch) if fast else None
        return encoded if encoded is not None else self._fallback.encode(record_batch)

    def _encode(self, record_batch: pa.RecordBatch) -> Optional[List[bytes]]:
        n, num_columns = record_batch.num_rows, record_batch.num_columns
        by_kind: Dict[str, Tuple[List[int], List[pa.Array]]] = {}
        for c, column in enumerate(record_batch.columns):
            single = _single_values(column)
            if single is None:
                return None
            by_kind.setdefault(single[0], ([], []))
            by_kind[single[0]][0].append(c)
            by_kind[single[0]][1].append(single[1])
        if not by_kind:
            return None
        key_parts = [bytes([_TAG_1]) + _varint_bytes(len(key)) + key + bytes([_TAG_2])
                     for key in (name.encode("utf-8") for name in record_batch.schema.names)]
        key_lengths = np.array([len(part) for part in key_parts], np.int64)
        kinds = [_Kind(kind, columns, values, key_lengths)
                 for kind, (columns, values) in by_kind.items()]
        if not all(kind.ok for kind in kinds):
            return None
        widths = np.empty(num_columns, np.int64)
        features_lengths = np.zeros(n, np.int64)
        for kind in kinds:
            widths[kind.columns] = kind.widths
            features_lengths += kind.piece_lengths.sum(axis=1)
        # Example{features (1): Features{...}}: 0x0A <features length>, then the slots.
        header_lengths = _varint_lengths(features_lengths)
        header = 1 + int(header_lengths.max())
        starts = header + np.cumsum(widths) - widths
        template = np.zeros(header + int(widths.sum()), np.uint8)
        template[0] = _TAG_1
        for kind in kinds:
            kind.layout(template, starts, key_parts)
        rows = np.tile(template, (n, 1))
        mask = np.ones(rows.shape, bool)
        _put_varints(rows, np.array([1]), features_lengths[:, None],
                     header_lengths[:, None])
        for byte in range(1, header - 1):
            mask[:, 1 + byte] = header_lengths > byte
        for kind in kinds:
            kind.write(rows, mask)
        buffer = rows[mask].tobytes()
        ends = np.cumsum(1 + header_lengths + features_lengths).tolist()
        return [buffer[start:end] for start, end in zip([0] + ends[:-1], ends)]

    def __reduce__(self):
        return self.__class__, (self._fallback,)


def _transform_encode_dofn():
    """TFX Transform's encoding DoFn class, imported only where a pipeline is built (TFT's
    import costs seconds that ExampleGen, which imports this module, does not need)."""
    from tfx.components.transform import executor  # pylint: disable=import-outside-toplevel
    return executor.TransformProcessor._RecordBatchToExamplesFn  # pylint: disable=protected-access


class FastExampleEncoding(PTransformOverride):
    """Replaces TFX Transform's encoding ``ParDo`` by one over a copy of its DoFn whose coder
    is an ``ExampleEncoder``, with the DoFn's own tfx_bsl encoder as the fallback."""

    def matches(self, applied_ptransform) -> bool:
        transform = applied_ptransform.transform
        return (isinstance(transform, beam.ParDo)
                and type(transform.fn).__qualname__ == _TRANSFORM_ENCODE_QUALNAME
                and type(transform.fn) is _transform_encode_dofn()
                and not isinstance(transform.fn._coder, ExampleEncoder))  # pylint: disable=protected-access

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        # pylint: disable=protected-access  (the DoFn's one setting: its tfx_bsl encoder)
        dofn = copy.copy(applied_ptransform.transform.fn)
        dofn._coder = ExampleEncoder(dofn._coder)
        return beam.ParDo(dofn)
