"""Compiles the same pipeline for Kubeflow Pipelines (KubeflowV2DagRunner): configuration only.

The pipeline definition is `pipeline.pipeline.create_pipeline`, the one the
local runner uses. The compiled pipeline spec runs every component in
``image``, a container with this project installed from the same lock file
(see kubeflow/README.md for building and pushing it).
"""

import json
import os
from typing import Any, Dict

from tfx import v1 as tfx

from pipeline import configs, evaluation
from pipeline import pipeline as msmt_pipeline

DEFAULT_IMAGE = "msmt-tfx:latest"


def compile_pipeline(config: configs.PipelineConfig, output_file: str, pipeline_root: str,
                     image: str = DEFAULT_IMAGE) -> Dict[str, Any]:
    """Writes the pipeline spec JSON to ``output_file`` and returns it."""
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(msmt_pipeline.create_pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=pipeline_root,
        dataset_spec=config.dataset,
        custom_config=config.custom_config(),
        preprocessing_fn=configs.PREPROCESSING_FN,
        run_fn=configs.RUN_FN,
        selector_method=config.selector,
        selector_params=dict(config.selector_params),
        eval_config=evaluation.eval_config(config.dataset, config.thresholds),
        serving_model_dir=os.path.join(pipeline_root, "serving", config.model.name),
        beam_pipeline_args=config.beam_pipeline_args,
        enable_cache=config.enable_cache))
    with open(output_file) as f:
        return json.load(f)
