"""The compiled Kubeflow spec runs, not only compiles.

`kubeflow.local_launcher` (a stand-in for KFP's driver and launcher) executes
every task of the spec `msmt kubeflow compile` writes as a local subprocess,
with the command and arguments the spec gives the task's container, and the
artifacts are checked against the local run of the same pipeline on the same
data (the session's `pipeline_runs`). The data root is a runtime parameter:
the run reads a copy of the data in another directory.
"""

import dataclasses
import glob
import json
import os
import shutil

import pytest
import tensorflow as tf

from conftest import small_model_spec
from kubeflow import container_entrypoint, local_launcher, runner
from models.training import SERVING_SIGNATURE
from pipeline import configs

TASKS = {"FileBasedExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform",
         "FeatureSelector", "MSMTTrainer", "Evaluator", "Pusher"}
RESOLVERS = {"latest_blessed_model_resolver-model-blessing-resolver",
             "latest_blessed_model_resolver-model-resolver"}


@pytest.fixture(scope="module")
def spec_run(pipeline_runs, tmp_path_factory):
    """The local run's config, compiled (1 epoch) and run by the local launcher."""
    config, local, _, _ = pipeline_runs
    # One epoch on 6000 rows can leave a small scenario at AUC 0.5: no AUC floor here, so
    # that the blessing and the push are exercised (model quality is test_pipeline_e2e's).
    config = dataclasses.replace(config, model=small_model_spec(epochs=1), beam_workers=1,
                                 thresholds=configs.EvalThresholds(auc_floor=0.0))
    tmp = tmp_path_factory.mktemp("kubeflow")
    pipeline_root = str(tmp / "pipeline_root")
    job = runner.compile_pipeline(config, str(tmp / "pipeline.json"), pipeline_root,
                                  image="example.com/msmt:test")
    moved = tmp / "moved_data"  # Where the data root parameter points this run.
    shutil.copytree(os.path.dirname(config.dataset.files[0].path), moved)
    run = local_launcher.run_job(job, parameter_values={"data_root": str(moved)},
                                 timeout_s=900)
    return job, run, local, pipeline_root, str(moved)


def _uri(run, task, key):
    (artifact,) = run.outputs[task][key]
    return artifact["uri"]


def _records(uri, split):
    files = glob.glob(os.path.join(uri, f"Split-{split}", "*"))
    return sum(1 for _ in tf.data.TFRecordDataset(files, "GZIP"))


def test_compiled_spec_declares_runtime_parameters(spec_run):
    job, _, _, pipeline_root, _ = spec_run
    spec = job["pipelineSpec"]
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["data_root"]["parameterType"] == "STRING"
    assert parameters["beam_pipeline_args"]["parameterType"] == "LIST"
    assert "--direct_num_workers=1" in parameters["beam_pipeline_args"]["defaultValue"]
    assert spec["defaultPipelineRoot"] == pipeline_root
    assert job["runtimeConfig"]["gcsOutputDirectory"] == pipeline_root
    example_gen = spec["root"]["dag"]["tasks"]["FileBasedExampleGen"]
    assert example_gen["inputs"]["parameters"]["input_base"] == {
        "componentInputParameter": "data_root"}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        if "container" in executor:
            args = executor["container"]["args"]
            assert args[-2:] == ["--beam_pipeline_args",
                                 "{{$.inputs.parameters['beam_pipeline_args']}}"], label
            assert executor["container"]["command"][:3] == runner.ENTRYPOINT


def test_every_task_ran_in_dependency_order(spec_run):
    job, run, _, _, _ = spec_run
    assert set(run.outputs) == TASKS | RESOLVERS
    order = list(run.seconds)
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    for name, task in tasks.items():
        for upstream in task.get("dependentTasks", []):
            assert order.index(upstream) < order.index(name), (upstream, name)
    # First run under this pipeline root: no blessed model yet, no baseline.
    assert run.outputs["latest_blessed_model_resolver-model-resolver"] == {"model": []}


def test_example_gen_read_the_data_root_given_at_run_time(spec_run):
    _, run, local, _, moved = spec_run
    examples = run.outputs["FileBasedExampleGen"]["examples"][0]
    assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval"]
    summaries = glob.glob(os.path.join(run.run_dir, "quarantine", "*", "*-summary*.jsonl"))
    files = {json.loads(line)["file"] for path in summaries for line in open(path)}
    assert files == {os.path.join(moved, "data.csv.gz")}
    for split in ("train", "eval"):
        assert _records(examples["uri"], split) == _records(
            local.uri("FileBasedExampleGen.examples"), split)


def test_statistics_schema_and_transform_match_the_local_run(spec_run):
    _, run, local, _, _ = spec_run
    assert os.listdir(_uri(run, "StatisticsGen", "statistics"))
    with open(os.path.join(_uri(run, "SchemaGen", "schema"), "schema.pbtxt")) as f:
        schema = f.read()
    with open(os.path.join(local.uri("SchemaGen.schema"), "schema.pbtxt")) as f:
        assert schema == f.read()
    vocabularies = "transform_fn/assets"
    ours = os.path.join(_uri(run, "Transform", "transform_graph"), vocabularies)
    theirs = os.path.join(local.uri("Transform.transform_graph"), vocabularies)
    assert sorted(os.listdir(ours)) == sorted(os.listdir(theirs))
    for name in os.listdir(ours):
        with open(os.path.join(ours, name), "rb") as a, open(os.path.join(theirs, name), "rb") as b:
            assert a.read() == b.read(), name


def test_feature_selection_model_evaluation_and_push(spec_run):
    _, run, local, _, _ = spec_run
    selection_dir = _uri(run, "FeatureSelector", "feature_selection")
    with open(os.path.join(selection_dir, "selection.json")) as f:
        selection = json.load(f)
    with open(os.path.join(local.uri("FeatureSelector.feature_selection"), "selection.json")) as f:
        local_selection = json.load(f)
    assert set(selection) == set(local_selection)
    model = tf.saved_model.load(os.path.join(_uri(run, "MSMTTrainer", "model"), "Format-Serving"))
    raw = glob.glob(os.path.join(local.uri("FileBasedExampleGen.examples"), "Split-eval", "*"))
    batch = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(raw, "GZIP").take(50)])
    scores = model.signatures[SERVING_SIGNATURE](examples=batch)
    for task in ("click", "conversion"):
        assert scores[task].shape == (50,)
        assert bool(tf.reduce_all((scores[task] >= 0) & (scores[task] <= 1)))
    assert glob.glob(os.path.join(_uri(run, "Evaluator", "evaluation"), "metrics*"))
    blessing = run.outputs["Evaluator"]["blessing"][0]
    assert blessing["metadata"]["blessed"] == 1.0  # No AUC floor, no baseline to regress from.
    pushed = run.outputs["Pusher"]["pushed_model"][0]
    assert pushed["metadata"]["pushed"] == 1.0
    destination = pushed["metadata"]["pushed_destination"]
    assert tf.saved_model.contains_saved_model(destination)


def test_next_run_resolves_this_runs_blessed_model_as_baseline(spec_run):
    job, run, _, pipeline_root, _ = spec_run
    registry = local_launcher._Registry(pipeline_root)
    executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
    queries = {name: executors[f"{name}_executor"]["resolver"]["outputArtifactQueries"]
               for name in RESOLVERS}
    (blessing,) = registry.query(queries[
        "latest_blessed_model_resolver-model-blessing-resolver"]["model_blessing"]["filter"], {})
    assert blessing["uri"] == _uri(run, "Evaluator", "blessing")
    (model,) = registry.query(queries["latest_blessed_model_resolver-model-resolver"]["model"]
                              ["filter"], {"input": [blessing]})
    assert model["uri"] == _uri(run, "MSMTTrainer", "model")


def test_entrypoint_splices_beam_arguments_and_hides_their_parameter():
    executor_input = {"inputs": {"parameterValues": {"beam_pipeline_args": ["--a"], "x": "1"}}}
    module, args = container_entrypoint.split_arguments([
        "tfx.module", "--json_serialized_invocation_args", json.dumps(executor_input),
        "--beam_pipeline_args", json.dumps(["--runner=DataflowRunner", "--project=p"])])
    assert module == "tfx.module"
    assert args[0] == "--json_serialized_invocation_args"
    assert json.loads(args[1]) == {"inputs": {"parameterValues": {"x": "1"}}}
    assert args[2:] == ["--runner=DataflowRunner", "--project=p"]
    with pytest.raises(SystemExit, match="JSON list of strings"):
        container_entrypoint.split_arguments(["m", "--beam_pipeline_args", '"--runner=X"'])


def test_launcher_rejects_unknown_parameters_and_cycles():
    spec = {"root": {"inputDefinitions": {"parameters": {"data_root": {
        "parameterType": "STRING"}}}, "dag": {"tasks": {
            "a": {"dependentTasks": ["b"]}, "b": {"dependentTasks": ["a"]}}}}}
    with pytest.raises(ValueError, match=r"unknown pipeline parameter\(s\) \['data_rot'\]"):
        local_launcher.pipeline_parameters(spec, {"data_rot": "/x"})
    with pytest.raises(ValueError, match=r"\['data_root'\] have no default"):
        local_launcher.pipeline_parameters(spec, {})
    with pytest.raises(ValueError, match="cycle"):
        local_launcher.task_order(spec)
