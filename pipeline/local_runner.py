"""Runs the pipeline locally: LocalDagRunner, Beam's DirectRunner, MLMD on SQLite."""

from tfx import v1 as tfx

from pipeline import configs, evaluation
from pipeline import pipeline as msmt_pipeline


def run(config: configs.PipelineConfig) -> None:
    tfx.orchestration.LocalDagRunner().run(msmt_pipeline.create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        dataset_spec=config.dataset,
        custom_config=config.custom_config(),
        preprocessing_fn=configs.PREPROCESSING_FN,
        run_fn=configs.RUN_FN,
        selector_method=config.selector,
        selector_params=dict(config.selector_params),
        eval_config=evaluation.eval_config(config.dataset, config.thresholds),
        serving_model_dir=config.serving_model_dir,
        beam_pipeline_args=config.beam_pipeline_args,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        enable_cache=config.enable_cache))
