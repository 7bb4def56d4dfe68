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

from pipeline import configs
from pipeline import pipeline as msmt_pipeline

DEFAULT_IMAGE = "msmt-tfx:latest"


def compile_pipeline(config: configs.PipelineConfig, output_file: str, pipeline_root: str,
                     image: str = DEFAULT_IMAGE) -> Dict[str, Any]:
    """Writes the pipeline spec JSON to ``output_file`` and returns it."""
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(msmt_pipeline.create_pipeline(**config.pipeline_arguments(
        pipeline_root, os.path.join(pipeline_root, "serving", config.model.name))))
    with open(output_file) as f:
        return json.load(f)
