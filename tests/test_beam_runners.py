"""Beam runners (direct, Flink, Spark, Dataflow): config -> every Beam-powered component.

Checked on the constructed pipeline (TFX's IR: each node's executor spec) and on the
Kubeflow-compiled spec; no cluster is contacted.
"""

import json
import os

import pytest
from tfx.dsl.compiler import compiler
from tfx.proto.orchestration import executable_spec_pb2, pipeline_pb2

from pipeline import cli, configs, specs
from pipeline import pipeline as msmt_pipeline

# TFX's and our components whose executor runs a Beam pipeline.
BEAM_COMPONENTS = {"FileBasedExampleGen", "StatisticsGen", "Transform", "Evaluator"}

RUNNERS = {
    "direct": ({}, ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                    "--direct_num_workers=2"]),
    "flink": ({"flink_master": "flink-jobmanager:8081", "environment_type": "DOCKER",
               "environment_config": "registry.example/msmt-tfx:1", "parallelism": "8"},
              ["--runner=FlinkRunner", "--environment_config=registry.example/msmt-tfx:1",
               "--environment_type=DOCKER", "--flink_master=flink-jobmanager:8081",
               "--parallelism=8"]),
    "spark": ({"job_endpoint": "spark-job-server:8099", "environment_type": "EXTERNAL",
               "environment_config": "localhost:50000"},
              ["--runner=PortableRunner", "--environment_config=localhost:50000",
               "--environment_type=EXTERNAL", "--job_endpoint=spark-job-server:8099"]),
    "dataflow": ({"project": "my-project", "region": "europe-west4",
                  "temp_location": "gs://bucket/tmp", "machine_type": "n2-standard-8",
                  "max_num_workers": "20", "sdk_container_image": "gcr.io/p/msmt-tfx:1",
                  "save_main_session": "false", "experiments": "use_runner_v2"},
                 ["--runner=DataflowRunner", "--experiments=use_runner_v2",
                  "--machine_type=n2-standard-8", "--max_num_workers=20",
                  "--project=my-project", "--region=europe-west4",
                  "--sdk_container_image=gcr.io/p/msmt-tfx:1", "--temp_location=gs://bucket/tmp"]),
}


def _config(runner: str, options, tmp_path) -> configs.PipelineConfig:
    return configs.PipelineConfig(
        dataset=specs.load_dataset_spec("synthetic"), model=specs.load_model_spec("mmoe"),
        output_dir=str(tmp_path), selector="none", beam_workers=2,
        beam=configs.BeamConfig.parse(runner, options, source="test"))


@pytest.mark.parametrize("cores,workers,mode", [(1, 1, "in_memory"), (2, 1, "in_memory"),
                                                (8, 8, "multi_processing")])
def test_default_direct_runner_is_in_memory_on_two_cores(cores, workers, mode, monkeypatch,
                                                          tmp_path):
    monkeypatch.setattr(configs.os, "cpu_count", lambda: cores)
    config = configs.PipelineConfig(
        dataset=specs.load_dataset_spec("synthetic"), model=specs.load_model_spec("mmoe"),
        output_dir=str(tmp_path), selector="none")
    assert config.beam_workers == workers
    assert f"--direct_running_mode={mode}" in config.beam_pipeline_args
    assert f"--direct_num_workers={workers}" in config.beam_pipeline_args


def _executor_beam_args(pipeline) -> dict:
    """Node id -> the Beam arguments in its executor spec, for every Beam executor in the IR."""
    ir = compiler.Compiler().compile(pipeline)
    deployment = pipeline_pb2.IntermediateDeploymentConfig()
    ir.deployment_config.Unpack(deployment)
    result = {}
    for node, spec in deployment.executor_specs.items():
        if spec.Is(executable_spec_pb2.BeamExecutableSpec.DESCRIPTOR):
            beam_spec = executable_spec_pb2.BeamExecutableSpec()
            spec.Unpack(beam_spec)
            result[node] = list(beam_spec.beam_pipeline_args)
    return result


@pytest.mark.parametrize("runner", sorted(RUNNERS))
def test_every_beam_component_gets_the_runner_args(runner, tmp_path):
    options, expected = RUNNERS[runner]
    config = _config(runner, options, tmp_path)
    assert config.beam_pipeline_args == expected
    pipeline = msmt_pipeline.create_pipeline(**config.pipeline_arguments())
    assert pipeline.beam_pipeline_args == expected
    by_node = _executor_beam_args(pipeline)
    assert set(by_node) == BEAM_COMPONENTS
    for node, args in by_node.items():
        assert args == expected, node


def test_flink_and_spark_master_urls_pick_their_runners():
    flink = configs.BeamConfig.parse("flink", {"flink_master": "[auto]", "environment_type": "LOOPBACK"})
    assert flink.pipeline_args(2)[0] == "--runner=FlinkRunner"
    spark = configs.BeamConfig.parse("spark", {"spark_master_url": "spark://m:7077",
                                               "environment_type": "PROCESS",
                                               "environment_config": '{"command": "/opt/boot"}'})
    assert spark.pipeline_args(2) == [
        "--runner=SparkRunner", '--environment_config={"command": "/opt/boot"}',
        "--environment_type=PROCESS", "--spark_master_url=spark://m:7077"]
    direct = configs.BeamConfig.parse("direct", {"direct_num_workers": "4", "save_main_session": "true"})
    assert direct.pipeline_args(2) == ["--runner=FnApiRunner", "--direct_running_mode=multi_processing",
                                       "--direct_num_workers=4", "--save_main_session"]


@pytest.mark.parametrize("runner, options, fragment", [
    ("flnk", {}, "runner: must be one of .* \\(did you mean 'flink'\\?\\)"),
    ("flink", {"flink_mastr": "h:8081"}, "flink_mastr: is not a Beam pipeline option "
                                         "\\(did you mean 'flink_master'\\?\\)"),
    ("flink", {"environment_type": "LOOPBACK"}, "flink_master or job_endpoint: is required by the flink"),
    ("spark", {"job_endpoint": "h:8099"}, "environment_type: is required by the spark runner"),
    ("spark", {"job_endpoint": "h:8099", "environment_type": "DOCKER"},
     "environment_config: is required with environment_type DOCKER"),
    ("flink", {"flink_master": "h", "environment_type": "KUBERNETES"}, "environment_type: must be one of"),
    ("dataflow", {"project": "p", "region": "r", "sdk_container_image": "i"},
     "temp_location: is required by the dataflow runner"),
    ("dataflow", {"project": "p", "region": "r", "temp_location": "gs://b/t"},
     "setup_file or sdk_container_image: is required"),
    ("direct", {"save_main_session": "yes"}, "save_main_session: is a switch"),
    ("direct", {"runner": "DataflowRunner"}, "runner: set the runner with `runner`"),
])
def test_bad_beam_config_names_the_key(runner, options, fragment):
    with pytest.raises(specs.SpecError, match=fragment):
        configs.BeamConfig.parse(runner, options, source="test")


def test_beam_config_file_and_flags(tmp_path):
    path = tmp_path / "flink.yaml"
    path.write_text("runner: flink\noptions:\n  flink_master: h:8081\n  environment_type: EXTERNAL\n"
                    "  environment_config: localhost:50000\n")
    beam = configs.load_beam_config(str(path), args=("parallelism=16",))
    assert beam.runner == "flink" and dict(beam.options)["parallelism"] == "16"
    assert configs.load_beam_config(str(path), runner="direct",
                                    args=("direct_num_workers=3",)).pipeline_args(2)[:1] == [
        "--runner=FnApiRunner"]
    path.write_text("runner: flink\nflink_master: h\n")
    with pytest.raises(specs.SpecError, match=r"flink.yaml: \['flink_master'\]: a Beam config holds only"):
        configs.load_beam_config(str(path))
    with pytest.raises(specs.SpecError, match="--beam-arg: flink_master: must be KEY=VALUE"):
        configs.load_beam_config(None, "flink", ("flink_master",))


def test_kubeflow_spec_passes_the_args_to_every_beam_task(tmp_path, capsys):
    options, expected = RUNNERS["flink"]
    output = tmp_path / "spec.json"
    argv = ["kubeflow", "compile", "--output", str(output), "--pipeline-root", "gs://b/root",
            "--selector", "none", "--beam-runner", "flink"]
    for key, value in options.items():
        argv += ["--beam-arg", f"{key}={value}"]
    assert cli.main(argv) == 0
    job = json.loads(output.read_text())
    spec = job["pipelineSpec"]
    # The Beam arguments are a pipeline parameter whose default is the configured list...
    assert job["runtimeConfig"]["parameterValues"]["beam_pipeline_args"] == expected
    assert spec["root"]["inputDefinitions"]["parameters"]["beam_pipeline_args"][
        "defaultValue"] == expected
    # ... and every Beam-powered task receives it in its container's arguments.
    executors = spec["deploymentSpec"]["executors"]
    for name in BEAM_COMPONENTS:
        task = spec["root"]["dag"]["tasks"][name]
        assert task["inputs"]["parameters"]["beam_pipeline_args"] == {
            "componentInputParameter": "beam_pipeline_args"}, name
        component = spec["components"][task["componentRef"]["name"]]
        args = executors[component["executorLabel"]]["container"]["args"]
        assert "{{$.inputs.parameters['beam_pipeline_args']}}" in args, (name, args)


def test_cli_reports_a_bad_beam_option(tmp_path, capsys):
    code = cli.main(["kubeflow", "compile", "--output", str(tmp_path / "x.json"), "--pipeline-root",
                     "gs://b/r", "--beam-runner", "dataflow", "--beam-arg", "projct=p"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--beam-runner/--beam-arg: projct: is not a Beam pipeline option (did you mean 'project'?)" in err
    assert not os.path.exists(tmp_path / "x.json")


def test_transform_analyzer_cache_is_wired_only_when_asked(tmp_path):
    import dataclasses
    config = _config("direct", {}, tmp_path)
    ids = [c.id for c in msmt_pipeline.create_pipeline(**config.pipeline_arguments()).components]
    assert "latest_transform_cache_resolver" not in ids
    cached = dataclasses.replace(config, transform_analyzer_cache=True)
    pipeline = msmt_pipeline.create_pipeline(**cached.pipeline_arguments())
    nodes = {c.id: c for c in pipeline.components}
    resolver = nodes["latest_transform_cache_resolver"]
    transform = nodes["Transform"]
    assert transform.inputs["analyzer_cache"].producer_component_id == resolver.id
    assert "updated_analyzer_cache" in transform.outputs
    # The resolver runs before Transform, after nothing it depends on.
    assert [c.id for c in pipeline.components].index(resolver.id) < [
        c.id for c in pipeline.components].index("Transform")


def _executor_args(executor_class, args):
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    return executor_class(BaseBeamExecutor.Context(beam_pipeline_args=list(args)))._beam_pipeline_args


def test_in_process_runner_builds_no_tfx_package(monkeypatch):
    """TFX's Beam executors build an sdist of TFX for remote workers unless a dependency flag
    is set; ours name this project's setup.py instead on the in-process runner (which
    ignores it), and leave every other runner to TFX."""
    from tfx.utils import dependency_utils
    from components import beam_pipeline
    from components.evaluator.component import Executor as EvaluatorExecutor
    from components.example_gen.executor import Executor as ExampleGenExecutor
    from components.statistics_gen.component import Executor as StatisticsGenExecutor
    from components.transform.component import Executor as TransformExecutor

    built = []
    monkeypatch.setattr(dependency_utils, "build_ephemeral_package",
                        lambda: built.append(1) or "/tmp/tfx_ephemeral.tar.gz")
    direct = configs.BeamConfig.parse("direct", {}).pipeline_args(1)
    for executor_class in (ExampleGenExecutor, StatisticsGenExecutor, TransformExecutor,
                           EvaluatorExecutor):
        args = _executor_args(executor_class, direct)
        assert f"--setup_file={beam_pipeline.SETUP_FILE}" in args, executor_class
        assert not any(a.startswith("--extra_package") for a in args)
    assert not built and os.path.exists(beam_pipeline.SETUP_FILE)
    assert beam_pipeline.runs_in_process(configs.BeamConfig.parse("direct", {}).pipeline_args(2))
    # A package the user names is kept, and is the only one.
    args = _executor_args(TransformExecutor, direct + ["--extra_packages=/pkgs/mine.tar.gz"])
    assert not any(a.startswith("--setup_file") for a in args) and not built
    # Other runners: TFX's behaviour (it builds its package when none is named).
    flink = configs.BeamConfig.parse("flink", RUNNERS["flink"][0]).pipeline_args(2)
    assert not beam_pipeline.runs_in_process(flink)
    args = _executor_args(TransformExecutor, flink)
    assert "--extra_package=/tmp/tfx_ephemeral.tar.gz" in args and len(built) == 1
    assert not any(a.startswith("--setup_file") for a in args)
