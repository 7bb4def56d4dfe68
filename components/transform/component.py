"""TFX's Transform on a ``FastPipeline`` (``components/beam_pipeline.py``).

The executor is TFX's own (``tfx.components.transform.executor.Executor``); only the Beam
pipeline it builds differs: its tf.Example decoding (analysis and materialization) runs
through ``tf.io.parse_example`` (``components/example_decoding.py``) and its gzipped
TFRecord writes (the materialized transformed examples) at gzip level 1 instead of 6
(``components/gzip_tfrecords.py``). Inputs, outputs, parameters and artifacts are TFX's.
"""

from tfx import v1 as tfx
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec

from components.beam_pipeline import FastPipelineExecutor


class Executor(FastPipelineExecutor, transform_executor.Executor):
    """TFX's Transform executor on a ``FastPipeline``."""


class Transform(tfx.components.Transform):
    """``tfx.components.Transform`` with the executor above (same id, spec and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
