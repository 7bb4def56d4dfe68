"""Runs the pipeline locally: LocalDagRunner, Beam's DirectRunner, MLMD on SQLite."""

from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as msmt_pipeline


def run(config: configs.PipelineConfig) -> None:
    tfx.orchestration.LocalDagRunner().run(msmt_pipeline.create_pipeline(
        **config.pipeline_arguments(),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path)))
