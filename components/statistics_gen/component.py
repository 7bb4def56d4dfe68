"""TFX's StatisticsGen on a ``FastPipeline`` (``components/beam_pipeline.py``).

The executor is TFX's own; only the Beam pipeline it builds differs: TFXIO's tf.Example
decoding runs through ``tf.io.parse_example`` (``components/example_decoding.py``), which
gives the record batches tfx_bsl's decoder gives. Inputs, outputs, parameters and artifacts
(and so the statistics) are TFX's.
"""

from tfx import v1 as tfx
from tfx.components.statistics_gen import executor as statistics_gen_executor
from tfx.dsl.components.base import executor_spec

from components.beam_pipeline import FastPipelineExecutor


class Executor(FastPipelineExecutor, statistics_gen_executor.Executor):
    """TFX's StatisticsGen executor on a ``FastPipeline``."""


class StatisticsGen(tfx.components.StatisticsGen):
    """``tfx.components.StatisticsGen`` with the executor above (same id, spec and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
