"""Gzipped TFRecords at gzip level 1: the sink, the Beam override, and Transform on it."""

import glob
import os
import types

import apache_beam as beam
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components import gzip_tfrecords
from components.beam_pipeline import FastPipeline
from components.transform import Transform
from components.transform.component import Executor

RECORDS = [b"record-%d" % i * (1 + i % 7) for i in range(500)]


def _gzip_level_flag(path: str) -> int:
    """The gzip header's XFL byte: 4 for the fastest level, 0 for zlib's default."""
    with open(path, "rb") as f:
        header = f.read(10)
    assert header[:3] == b"\x1f\x8b\x08", path  # gzip, deflate
    return header[8]


def _write(pipeline_class, directory):
    with pipeline_class() as p:
        records = p | beam.Create(RECORDS)
        _ = records | "Gzip" >> beam.io.WriteToTFRecord(
            os.path.join(directory, "gz", "data"), file_name_suffix=".gz")
        _ = records | "Plain" >> beam.io.WriteToTFRecord(os.path.join(directory, "plain", "data"))
    return glob.glob(os.path.join(directory, "gz", "*")), glob.glob(os.path.join(directory, "plain", "*"))


def _read(files, compression):
    return sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression))


def test_fast_gzip_pipeline_writes_gzip_tfrecords_at_level_1(tmp_path):
    gz, plain = _write(FastPipeline, str(tmp_path))
    assert gz and all(f.endswith(".gz") and _gzip_level_flag(f) == 4 for f in gz)
    assert _read(gz, "GZIP") == sorted(RECORDS)
    with beam.Pipeline() as p:  # Beam's reader too (gzip detected from the suffix).
        read = p | beam.io.ReadFromTFRecord(os.path.join(str(tmp_path), "gz", "*"))
        assert_that(read, equal_to(RECORDS))
    # A write that is not gzipped is left as Beam's.
    with open(plain[0], "rb") as f:
        assert f.read(3) != b"\x1f\x8b\x08"
    assert _read(plain, "") == sorted(RECORDS)


def test_a_plain_beam_pipeline_writes_zlib_default_level(tmp_path):
    gz, _ = _write(beam.Pipeline, str(tmp_path))
    assert gz and all(_gzip_level_flag(f) == 0 for f in gz)  # What the override changes.


def test_override_matches_only_gzipped_tfrecord_writes():
    override = gzip_tfrecords.FastGzipTFRecordWrites()

    class Applied:
        def __init__(self, transform, bounded=True):
            self.transform = transform
            self.inputs = (types.SimpleNamespace(is_bounded=bounded),)

    def inner_write(transform):
        return beam.io.Write(transform._sink)  # What WriteToTFRecord.expand applies.

    assert override.matches(Applied(inner_write(beam.io.WriteToTFRecord("x", file_name_suffix=".gz"))))
    assert override.matches(Applied(inner_write(beam.io.WriteToTFRecord(
        "x", compression_type=beam.io.filesystem.CompressionTypes.GZIP))))
    assert not override.matches(Applied(inner_write(beam.io.WriteToTFRecord("x"))))
    assert not override.matches(Applied(  # A streaming write.
        inner_write(beam.io.WriteToTFRecord("x", file_name_suffix=".gz")), bounded=False))
    assert not override.matches(Applied(beam.io.WriteToText("x", file_name_suffix=".gz")))
    replacement = override.get_replacement_transform_for_applied_ptransform(
        Applied(inner_write(beam.io.WriteToTFRecord("dir/x", file_name_suffix=".gz", num_shards=3))))
    sink = replacement.sink
    assert isinstance(sink, gzip_tfrecords.GzipTFRecordSink)
    assert (sink.file_path_prefix.get(), sink.file_name_suffix.get(), sink.num_shards) == ("dir/x", ".gz", 3)


def test_transform_component_is_tfx_transform_on_the_fast_pipeline():
    from tfx import v1 as tfx
    assert issubclass(Transform, tfx.components.Transform)
    assert Transform.EXECUTOR_SPEC.executor_class is Executor
    executor = Executor(Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"]))
    assert isinstance(executor._make_beam_pipeline(), FastPipeline)
