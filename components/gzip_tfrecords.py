"""Gzipped TFRecords written at a fast compression level (ExampleGen's and Transform's output).

Beam's ``WriteToTFRecord``, which TFX's ExampleGen and Transform write through, compresses
``.gz`` files at zlib's default level 6: about 31 MB/s here. On 200k rows of issue #7's
80-column shape py-spy put 9 of ExampleGen's 26 s and 8.5 of Transform's 49 s there
(benchmarks/RESULTS.md, sessions 5 and 10). Level 1 runs at about 134 MB/s into files 1.2x
the size. The files are otherwise Beam's (standard gzip, the same names and shards), so
TFXIO, tf.data and Beam read them unchanged.

``GzipTFRecordSink`` is the sink; ``FastGzipTFRecordWrites`` is the Beam
``PTransformOverride`` that swaps every batch ``Write`` of gzipped TFRecords (such as TFX's
Transform's ``WriteToTFRecord``) for a ``GzipTFRecordSink`` write; ``beam_pipeline.FastPipeline``
applies it.
"""

import zlib

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink, tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.pipeline import PTransformOverride

COMPRESSION_LEVEL = 1


class _GzipWriter:
    """A write-only file object that gzips what is written into ``raw`` at ``level``."""

    def __init__(self, raw, level: int):
        self._raw = raw
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)

    def write(self, data: bytes) -> None:
        compressed = self._compressor.compress(data)
        if compressed:
            self._raw.write(compressed)

    def close(self) -> None:
        self._raw.write(self._compressor.flush())
        self._raw.close()


class GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord sink with the gzip level chosen here instead of zlib's default."""

    def __init__(self, file_path_prefix, compression_level: int = COMPRESSION_LEVEL,
                 file_name_suffix=".gz", num_shards: int = 0, shard_name_template=None):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(),
                         file_name_suffix=file_name_suffix, num_shards=num_shards,
                         shard_name_template=shard_name_template,
                         mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.compression_level = int(compression_level)

    def open(self, temp_path):
        return _GzipWriter(super().open(temp_path), self.compression_level)

    def write_encoded_record(self, file_handle, value):
        tfrecordio._TFRecordUtil.write_record(file_handle, value)  # pylint: disable=protected-access


def _writes_gzip_tfrecords(sink) -> bool:
    """Whether ``sink`` is Beam's TFRecord sink writing serialized bytes into gzip files."""
    if type(sink) is not tfrecordio._TFRecordSink:  # pylint: disable=protected-access
        return False
    if not isinstance(sink.coder, coders.BytesCoder) or not sink.file_name_suffix.is_accessible():
        return False
    return (sink.compression_type == CompressionTypes.GZIP
            or (sink.compression_type == CompressionTypes.AUTO
                and CompressionTypes.detect_compression_type(sink.file_name_suffix.get())
                == CompressionTypes.GZIP))


class FastGzipTFRecordWrites(PTransformOverride):
    """Replaces each batch ``beam.io.Write`` of gzipped TFRecords by a ``GzipTFRecordSink`` write
    (a streaming write, of an unbounded PCollection, stays Beam's: it writes per window)."""

    def matches(self, applied_ptransform) -> bool:
        transform = applied_ptransform.transform
        return (isinstance(transform, beam.io.Write) and _writes_gzip_tfrecords(transform.sink)
                and all(pcoll.is_bounded for pcoll in applied_ptransform.inputs))

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        sink = applied_ptransform.transform.sink
        return beam.io.Write(GzipTFRecordSink(
            sink.file_path_prefix, file_name_suffix=sink.file_name_suffix,
            num_shards=sink.num_shards, shard_name_template=sink.shard_name_template))

