"""The whole local pipeline on a small synthetic set, run twice."""

import glob
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models.training import SCENARIO_KNOWN, SERVING_SIGNATURE, TRANSFORMED_SIGNATURE

COMPONENTS = {"FileBasedExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform",
              "FeatureSelector", "MSMTTrainer", "Evaluator", "Pusher"}


def _raw_eval_examples(result, limit=300):
    files = glob.glob(os.path.join(result.uri("FileBasedExampleGen.examples"), "Split-eval", "*"))
    return [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(limit)]


def _pushed_model(result):
    return tf.saved_model.load(result.pushed_destination)


def test_every_component_ran(pipeline_runs):
    _, first, _, _ = pipeline_runs
    assert COMPONENTS <= set(first.component_states)
    assert {c: first.component_states[c] for c in COMPONENTS} == {c: "ran" for c in COMPONENTS}


def test_transformed_examples_are_written_at_gzip_level_1(pipeline_runs):
    """components.transform.Transform: TFX's executor on a FastPipeline."""
    _, first, _, _ = pipeline_runs
    files = glob.glob(os.path.join(first.uri("Transform.transformed_examples"), "Split-*", "*.gz"))
    assert len(files) >= 2
    for path in files:
        with open(path, "rb") as f:
            header = f.read(10)
        assert header[:3] == b"\x1f\x8b\x08" and header[8] == 4  # gzip, XFL 4: the fastest level.


def test_unchanged_inputs_are_served_from_cache(pipeline_runs):
    _, first, (second, third), _ = pipeline_runs
    assert len({first.run_id, second.run_id, third.run_id}) == 3
    upstream = COMPONENTS - {"Evaluator", "Pusher"}
    assert {c: second.component_states[c] for c in upstream} == {c: "cached" for c in upstream}
    assert second.uri("MSMTTrainer.model") == first.uri("MSMTTrainer.model")
    # New input for the Evaluator: the first run's blessed model as its baseline (the same
    # artifact as the candidate, which MLMD records as one input event).
    assert second.inputs["Evaluator.model"] == first.uri("MSMTTrainer.model")
    assert second.component_states["Evaluator"] == "ran" and second.blessed
    assert {c: third.component_states[c] for c in COMPONENTS} == {c: "cached" for c in COMPONENTS}
    assert third.pushed_destination == second.pushed_destination


def test_metrics_for_every_scenario_and_task(pipeline_runs):
    config, first, _, truth = pipeline_runs
    scenarios = {f"{v['channel']}/{s}" for s, v in truth["scenarios"].items()}
    cells = {(s, t) for s in scenarios | {"overall"} for t in ("click", "conversion")}
    assert cells <= set(first.metrics)
    for cell in cells:
        values = first.metrics[cell]
        assert 0.0 <= values["auc"] <= 1.0 and values["binary_crossentropy"] > 0
        assert values["example_count"] > 0
    total = sum(first.metrics[(s, "click")]["example_count"] for s in scenarios)
    assert total == first.metrics[("overall", "click")]["example_count"]
    # It learnt something: the planted signal is strong (oracle AUC about 0.8).
    assert first.metrics[("overall", "click")]["auc"] > 0.6


def test_blessed_model_is_pushed(pipeline_runs):
    _, first, _, _ = pipeline_runs
    assert first.validation_ok and first.blessed and first.pushed
    assert os.path.exists(os.path.join(first.pushed_destination, "saved_model.pb"))


def test_pushed_model_scores_raw_examples_like_the_trained_model(pipeline_runs):
    _, first, _, _ = pipeline_runs
    serialized = _raw_eval_examples(first)
    served = _pushed_model(first).signatures[SERVING_SIGNATURE](examples=tf.constant(serialized))
    assert set(served) == {"click", "conversion", SCENARIO_KNOWN}
    assert served["click"].shape == (len(serialized),)
    assert np.all(served[SCENARIO_KNOWN].numpy() == 1.0)

    # The trained model, fed Transform's output computed separately, gives the same scores.
    tft_output = tft.TFTransformOutput(first.uri("Transform.transform_graph"))
    raw_spec = tft_output.raw_feature_spec()
    raw = tf.io.parse_example(tf.constant(serialized), raw_spec)
    transformed = tft_output.transform_raw_features(raw, drop_unused_features=True)
    trained = tf.saved_model.load(os.path.join(first.uri("MSMTTrainer.model"), "Format-Serving"))
    inputs = {k: tf.reshape(transformed[k], [-1])
              for k in trained.signatures[TRANSFORMED_SIGNATURE].structured_input_signature[1]}
    direct = trained.signatures[TRANSFORMED_SIGNATURE](**inputs)
    for task in ("click", "conversion"):
        np.testing.assert_allclose(served[task].numpy(), direct[task].numpy(), rtol=1e-5, atol=1e-6)


def test_unseen_scenario_and_missing_feature_are_served(pipeline_runs):
    _, first, _, _ = pipeline_runs
    model = _pushed_model(first)
    example = tf.train.Example.FromString(_raw_eval_examples(first, 1)[0])
    unseen = tf.train.Example()
    unseen.CopyFrom(example)
    unseen.features.feature["domain"].bytes_list.value[:] = [b"never-seen-scenario"]
    missing = tf.train.Example()
    missing.CopyFrom(example)
    del missing.features.feature["cat_00"]
    del missing.features.feature["num_00"]
    out = model.signatures[SERVING_SIGNATURE](examples=tf.constant(
        [example.SerializeToString(), unseen.SerializeToString(), missing.SerializeToString()]))
    known = out[SCENARIO_KNOWN].numpy()
    assert known.tolist() == [1.0, 0.0, 1.0]
    for task in ("click", "conversion"):
        p = out[task].numpy()
        assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))


def test_tensorboard_event_files_written(pipeline_runs):
    _, first, _, _ = pipeline_runs
    events = glob.glob(os.path.join(first.uri("MSMTTrainer.model_run"), "**", "events.out.tfevents.*"),
                       recursive=True)
    assert events


def test_explore_notebook_executes_against_the_run(pipeline_runs, monkeypatch):
    import nbclient
    import nbformat
    from pipeline.specs import REPO_DIR
    config, _, _, _ = pipeline_runs
    monkeypatch.setenv("MSMT_RUN_DIR", config.run_dir)
    notebook = nbformat.read(os.path.join(REPO_DIR, "notebooks", "explore_dataset.ipynb"), 4)
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "'train':" in text and "'eval':" in text and "anomalies: none" in text
    assert any("text/html" in o.get("data", {}) for o in outputs)  # TFDV's view rendered.
