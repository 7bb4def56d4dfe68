"""TFX's Evaluator on a ``FastPipeline`` (``components/beam_pipeline.py``).

The executor is TFX's own; only the Beam pipeline it builds differs: TFXIO's tf.Example
decoding of the raw eval examples (each with its serialized record, which TFMA feeds to the
serving signature) runs through ``tf.io.parse_example`` (``components/example_decoding.py``),
which gives the record batches tfx_bsl's decoder gives. Inputs, outputs, parameters, the
metrics and the blessing are TFX's.
"""

from tfx import v1 as tfx
from tfx.components.evaluator import executor as evaluator_executor
from tfx.dsl.components.base import executor_spec

from components.beam_pipeline import FastPipelineExecutor


class Executor(FastPipelineExecutor, evaluator_executor.Executor):
    """TFX's Evaluator executor on a ``FastPipeline``."""


class Evaluator(tfx.components.Evaluator):
    """``tfx.components.Evaluator`` with the executor above (same id, spec and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
