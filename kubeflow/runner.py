"""Compiles the same pipeline for Kubeflow Pipelines (KubeflowV2DagRunner): configuration only.

The pipeline definition is `pipeline.pipeline.create_pipeline`, the one the
local runner uses. The compiled pipeline spec runs every component in
``image``, a container with this project installed from the same lock file
(see kubeflow/README.md for building and pushing it).

Runtime parameters (set per run or per recurring run, see kubeflow/schedule.py):

- ``data_root``: ExampleGen's ``input_base``, a TFX ``RuntimeParameter``; the
  dataset spec's files are read at the same relative paths under it.
- ``beam_pipeline_args``: a list of strings, the Beam arguments of every
  component. TFX compiles ``beam_pipeline_args`` verbatim into each container's
  arguments, so ``_beam_args_as_parameter`` makes them a pipeline parameter that
  each task receives and ``kubeflow/container_entrypoint.py`` splices back.
- the pipeline root: KFP's own ``pipelineRoot`` (``runtime_config.pipeline_root``
  of a run); the compiled default is the spec's ``defaultPipelineRoot``. TFX's V2
  compiler takes the pipeline root as a string only (it becomes the job's
  ``gcsOutputDirectory``), so it is not a TFX RuntimeParameter.
"""

import json
import os
from typing import Any, Dict, List, Optional

from tfx import v1 as tfx

from components.example_gen.executor import data_root as spec_data_root
from pipeline import configs
from pipeline import pipeline as msmt_pipeline

DEFAULT_IMAGE = "msmt-tfx:latest"
DATA_ROOT = "data_root"
BEAM_ARGS = "beam_pipeline_args"
ENTRYPOINT = ["python", "-m", "kubeflow.container_entrypoint"]


def compile_pipeline(config: configs.PipelineConfig, output_file: str, pipeline_root: str,
                     image: str = DEFAULT_IMAGE, data_root: Optional[str] = None,
                     serving_model_dir: Optional[str] = None) -> Dict[str, Any]:
    """Writes the pipeline job JSON to ``output_file`` and returns it.

    ``data_root`` and ``serving_model_dir`` default to the spec's data directory
    and ``<pipeline_root>/serving/<model>``.
    """
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    arguments = config.pipeline_arguments(
        pipeline_root, serving_model_dir or os.path.join(pipeline_root, "serving",
                                                         config.model.name))
    defaults = {DATA_ROOT: data_root or spec_data_root(config.dataset),
                BEAM_ARGS: list(arguments["beam_pipeline_args"])}
    data_root_parameter = tfx.dsl.experimental.RuntimeParameter(
        name=DATA_ROOT, ptype=str, default=defaults[DATA_ROOT])
    job = runner.run(msmt_pipeline.create_pipeline(**arguments, data_root=data_root_parameter),
                     parameter_values={DATA_ROOT: defaults[DATA_ROOT]}, write_out=False)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = pipeline_root
    _beam_args_as_parameter(spec, defaults[BEAM_ARGS])
    # The defaults also go into the spec itself: KFP reads them there when the spec
    # is uploaded without this job's runtime config (kubeflow/schedule.py).
    for name, value in defaults.items():
        spec["root"]["inputDefinitions"]["parameters"][name].update(
            defaultValue=value, isOptional=True)
    job["runtimeConfig"]["parameterValues"] = defaults
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    return job


def _beam_args_as_parameter(spec: Dict[str, Any], beam_args: List[str]) -> None:
    """Turns the Beam arguments compiled into every container into the pipeline
    parameter ``beam_pipeline_args`` (default: ``beam_args``), passed to each task
    and spliced back into arguments by ``kubeflow.container_entrypoint``."""
    spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {})[BEAM_ARGS] = {
        "parameterType": "LIST"}
    placeholder = [f"--{BEAM_ARGS}", "{{$.inputs.parameters['" + BEAM_ARGS + "']}}"]
    executors = spec["deploymentSpec"]["executors"]
    for name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        container = executors[component["executorLabel"]].get("container")
        if container is None:  # A resolver: no container.
            continue
        component.setdefault("inputDefinitions", {}).setdefault("parameters", {})[BEAM_ARGS] = {
            "parameterType": "LIST"}
        task.setdefault("inputs", {}).setdefault("parameters", {})[BEAM_ARGS] = {
            "componentInputParameter": BEAM_ARGS}
        for step in [container] + list(container.get("lifecycle", {}).values()):
            args = step["args"]
            if beam_args and args[-len(beam_args):] != list(beam_args):
                raise ValueError(f"task {name!r}: the compiled arguments do not end with the "
                                 f"Beam arguments {beam_args}: {args}")
            step["args"] = args[:len(args) - len(beam_args)] + placeholder
            step["command"] = ENTRYPOINT + [step["command"][-1]]
