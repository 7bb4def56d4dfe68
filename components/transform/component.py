"""TFX's Transform, writing its transformed examples at a fast gzip level.

The executor is TFX's own (``tfx.components.transform.executor.Executor``); only the Beam
pipeline it builds differs: a ``FastGzipPipeline``, whose gzipped TFRecord writes (the
materialized transformed examples) run at gzip level 1 instead of 6
(``components/gzip_tfrecords.py``). Inputs, outputs, parameters and artifacts are TFX's.
"""

from tfx import v1 as tfx
from tfx.components.transform import executor as transform_executor
from tfx.dsl.components.base import executor_spec

from components import gzip_tfrecords


class Executor(transform_executor.Executor):
    """TFX's Transform executor on a ``FastGzipPipeline``."""

    def _make_beam_pipeline(self):
        if self._make_beam_pipeline_fn is not None:  # The orchestrator makes the pipeline.
            return super()._make_beam_pipeline()
        return gzip_tfrecords.FastGzipPipeline(argv=self._beam_pipeline_args)


class Transform(tfx.components.Transform):
    """``tfx.components.Transform`` with the executor above (same id, spec and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
