"""The Beam pipeline our Beam components run on: Beam's, with three of Beam's own overrides.

Before it runs, ``FastPipeline`` swaps (``PTransformOverride``, applied by ``replace_all``):

- every batch write of gzipped TFRecords for one at gzip level 1
  (``gzip_tfrecords.FastGzipTFRecordWrites``): Transform's materialized examples;
- TFXIO's tf.Example decoding for ``tf.io.parse_example`` with tfx_bsl's decoder as the
  fallback (``example_decoding.FastExampleDecoding``): StatisticsGen's, Transform's and the
  Evaluator's reads;
- Transform's tf.Example encoding of its materialized examples for numpy's, with tfx_bsl's
  encoder as the fallback (``example_encoding.FastExampleEncoding``).

All three leave what is written and what is decoded as TFX's own components write and decode it.
``FastPipelineExecutor`` is the mixin that gives a TFX Beam executor this pipeline.
"""

import copy
import os

import apache_beam as beam
from apache_beam.options import pipeline_options

from components import example_decoding, example_encoding, gzip_tfrecords
from pipeline.specs import REPO_DIR

SETUP_FILE = os.path.join(REPO_DIR, "setup.py")


class FastPipeline(beam.Pipeline):
    """A Beam pipeline with the overrides above."""

    def run(self, test_runner_api="AUTO"):
        self.replace_all([gzip_tfrecords.FastGzipTFRecordWrites(),
                          example_decoding.FastExampleDecoding(),
                          example_encoding.FastExampleEncoding()])
        return super().run(test_runner_api)


def runs_in_process(beam_pipeline_args) -> bool:
    """Whether these arguments run Beam's ``FnApiRunner``, whose workers are this process (or,
    ``multi_processing``, its subprocesses): they import this installation, nothing is staged."""
    options = pipeline_options.PipelineOptions(beam_pipeline_args or [])
    return options.view_as(pipeline_options.StandardOptions).runner == "FnApiRunner"


def _naming_this_project(context):
    """``context`` with ``--setup_file`` naming this project's setup.py, on the in-process runner.

    Unless a dependency flag is set, TFX's ``BaseBeamExecutor.__init__`` copies the installed
    TFX package into a new temporary directory and builds an sdist of it there for the Beam
    workers, which the in-process runner never reads: about 1.2 s per Beam component, and 52 MB
    left in the temporary directory per component per run. ``FnApiRunner`` ignores the flag.
    """
    if (context is None or not runs_in_process(context.beam_pipeline_args)
            or not os.path.exists(SETUP_FILE)):
        return context
    options = pipeline_options.PipelineOptions(context.beam_pipeline_args).get_all_options()
    if any(options.get(flag) for flag in ("extra_packages", "setup_file", "requirements_file",
                                          "worker_harness_container_image",
                                          "sdk_container_image")):  # TFX's own list
        return context
    context = copy.copy(context)
    context.beam_pipeline_args = list(context.beam_pipeline_args) + [f"--setup_file={SETUP_FILE}"]
    return context


class FastPipelineExecutor:
    """Mixin for a ``BaseBeamExecutor`` subclass: its pipeline is a ``FastPipeline``, and on
    the in-process runner it builds no TFX package (``_naming_this_project``)."""

    def __init__(self, context=None):
        super().__init__(_naming_this_project(context))

    def _make_beam_pipeline(self):
        if self._make_beam_pipeline_fn is not None:  # The orchestrator makes the pipeline.
            return super()._make_beam_pipeline()
        return FastPipeline(argv=self._beam_pipeline_args)
