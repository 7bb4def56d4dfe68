"""Writes an ExampleGen split as gzipped TFRecords at a fast compression level.

TFX's ``WriteSplit`` writes through Beam's ``WriteToTFRecord`` at gzip level 6; this one
writes through ``gzip_tfrecords.GzipTFRecordSink`` at level 1 (9 of ExampleGen's 26 s per
200k rows of 80 columns went to level 6, benchmarks/RESULTS.md). The output is what TFX's
writes otherwise (shuffled, ``data_tfrecord-*.gz``, standard gzip), so TFXIO, tf.data
and Beam read it unchanged.

The shuffle is keyed by a hash of each example rather than by Beam's ``Reshuffle`` random
key. Examples that drew the same random key were grouped, which moved them: on the local
runner, three of six ExampleGen runs of the default data wrote the train split in a
different order, and so trained a different model (AUC 0.7817 against 0.7792 for click).
Content keys give the same order on every run of the same data.

On Beam's in-process runner with one worker (``FnApiRunner``, ``in_memory``: the local
default on up to 2 cores) a GroupByKey hands its keys on in arrival order, so the shuffle
moves nothing: the examples are written in input order either way (checked on 160,144 rows
of the 80-column shape), and the shuffle's GroupByKey cost about 5 s per 200k rows. There
``WriteSplit`` is given ``shuffle=False`` (``runner_keeps_order``); every other runner
shuffles.
"""

import hashlib
import os
from typing import List, Optional

import apache_beam as beam
from apache_beam.options import pipeline_options
from tfx.components.example_gen import write_split

from components import gzip_tfrecords
from components.beam_pipeline import runs_in_process


def _content_key(serialized: bytes) -> int:
    """A 64-bit hash of a serialized example: its shuffle key."""
    return int.from_bytes(hashlib.blake2b(serialized, digest_size=8).digest(), "little")


def runner_keeps_order(beam_pipeline_args: Optional[List[str]]) -> bool:
    """Whether these Beam arguments run the in-process ``FnApiRunner`` on one worker, whose
    GroupByKey keeps the arrival order (so a shuffle there moves nothing)."""
    direct = pipeline_options.PipelineOptions(beam_pipeline_args or []).view_as(
        pipeline_options.DirectOptions)
    return (runs_in_process(beam_pipeline_args)
            and direct.direct_running_mode == "in_memory" and direct.direct_num_workers == 1)


@beam.ptransform_fn
@beam.typehints.with_input_types(bytes)
def WriteSplit(examples: beam.PCollection, output_split_path: str,
               compression_level: int = gzip_tfrecords.COMPRESSION_LEVEL,
               shuffle: bool = True) -> beam.pvalue.PDone:
    """Shuffles serialized examples (keyed by content, see the module doc; not with
    ``shuffle=False``) and writes them under ``output_split_path``, as TFX's
    ``write_split.WriteSplit`` does for TFRecords, at ``compression_level``."""
    if shuffle:
        examples = (examples
                    | "KeyByContent" >> beam.Map(lambda e: (_content_key(e), e))
                    | "Shuffle" >> beam.transforms.util.ReshufflePerKey()
                    | "DropKeys" >> beam.Values())
    return (examples
            | "Write" >> beam.io.Write(gzip_tfrecords.GzipTFRecordSink(
                os.path.join(output_split_path, write_split.DEFAULT_TF_RECORD_FILE_NAME),
                compression_level)))
