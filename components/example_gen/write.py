"""Writes an ExampleGen split as gzipped TFRecords at a fast compression level.

TFX's ``WriteSplit`` writes through Beam's ``WriteToTFRecord``, which compresses
``.gz`` files at zlib's default level 6: about 31 MB/s here, 9 of ExampleGen's 26 s
per 200k rows of 80 columns (benchmarks/RESULTS.md). Level 1 compresses the same
tf.Examples at about 134 MB/s into files 1.23x the size. The output is what TFX's
writes otherwise (shuffled, ``data_tfrecord-*.gz``, standard gzip), so TFXIO, tf.data
and Beam read it unchanged.

The shuffle is keyed by a hash of each example rather than by Beam's ``Reshuffle`` random
key. Examples that drew the same random key were grouped, which moved them: on the local
runner, three of six ExampleGen runs of the default data wrote the train split in a
different order, and so trained a different model (AUC 0.7817 against 0.7792 for click).
Content keys give the same order on every run of the same data.
"""

import hashlib
import os
import zlib

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import filebasedsink, tfrecordio
from apache_beam.io.filesystem import CompressionTypes
from tfx.components.example_gen import write_split

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


class _GzipTFRecordSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord sink with the gzip level chosen here instead of zlib's default."""

    def __init__(self, file_path_prefix: str, compression_level: int):
        super().__init__(file_path_prefix, coder=coders.BytesCoder(), file_name_suffix=".gz",
                         num_shards=0, shard_name_template=None,
                         mime_type="application/octet-stream",
                         compression_type=CompressionTypes.UNCOMPRESSED)
        self.compression_level = int(compression_level)

    def open(self, temp_path):
        return _GzipWriter(super().open(temp_path), self.compression_level)

    def write_encoded_record(self, file_handle, value):
        tfrecordio._TFRecordUtil.write_record(file_handle, value)  # pylint: disable=protected-access


def _content_key(serialized: bytes) -> int:
    """A 64-bit hash of a serialized example: its shuffle key."""
    return int.from_bytes(hashlib.blake2b(serialized, digest_size=8).digest(), "little")


@beam.ptransform_fn
@beam.typehints.with_input_types(bytes)
def WriteSplit(examples: beam.PCollection, output_split_path: str,
               compression_level: int = COMPRESSION_LEVEL) -> beam.pvalue.PDone:
    """Shuffles serialized examples (keyed by content, see the module doc) and writes them
    under ``output_split_path``, as TFX's ``write_split.WriteSplit`` does for TFRecords, at
    ``compression_level``."""
    return (examples
            | "KeyByContent" >> beam.Map(lambda e: (_content_key(e), e))
            | "Shuffle" >> beam.transforms.util.ReshufflePerKey()
            | "DropKeys" >> beam.Values()
            | "Write" >> beam.io.Write(_GzipTFRecordSink(
                os.path.join(output_split_path, write_split.DEFAULT_TF_RECORD_FILE_NAME),
                compression_level)))
