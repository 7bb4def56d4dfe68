"""TensorBoard diagnostics: the computations, every gated backbone's ``diagnostics()``, and a
real ``tensorboard`` process (started by ``msmt tensorboard``) serving a trained model's logs."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from sklearn.metrics import log_loss, roc_auc_score
from tensorboard.backend.event_processing import event_accumulator

from components.feature_selector.artifact import Selection
from models import diagnostics, factory
from pipeline import cli, specs

SCENARIOS = ("s0", "s1", "s2")
TASKS = ("click", "conversion")
DATA = factory.DataInfo(
    field_names=("f0", "f1", "f2", "f3"), vocab_sizes=(7, 11, 5, 9), task_names=TASKS,
    scenario_names=SCENARIOS, scenario_prior=(0.5, 0.3, 0.2), task_parents=(None, "click"),
    scenario_level_sizes=(3,))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _spec(architecture: str, **hparams) -> specs.ModelSpec:
    path = os.path.join(specs.MODEL_SPEC_DIR, f"{architecture}.yaml")
    spec = specs.load_model_spec(path) if os.path.exists(path) else specs.parse_model_spec(
        {"architecture": architecture}, f"<{architecture}>")
    return dataclasses.replace(spec, embedding_dim=4,
                               hparams=tuple(sorted({**dict(spec.hparams), **hparams}.items())))


def _examples(n: int, seed: int):
    """Features, labels (each scenario with its own signal on f0/f1) and scenario weights."""
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, v, n) for f, v in zip(DATA.field_names, DATA.vocab_sizes)}
    s = rng.choice(3, n, p=DATA.scenario_prior)
    x["scenario_id"], x["scenario_level_0_id"] = s, s % 2
    logit = np.where(s == 1, -1.0, 1.0) * (x["f0"] - 3) / 2 + 0.3 * (x["f1"] % 3) - 0.5
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    conversion = click * (rng.random(n) < np.where(x["f2"] > 2, 0.7, 0.2))
    labels = {"click": click[:, None], "conversion": conversion.astype(np.float32)[:, None]}
    weights = {t: np.ones((n, 1), np.float32) for t in TASKS}
    return x, labels, weights


# --------------------------------------------------------------------------- computations


def test_gate_entropy_uniform_is_log_num_experts_and_one_hot_is_zero():
    for experts in (2, 4, 7):
        uniform = np.full((5, 3, experts), 1.0 / experts)
        np.testing.assert_allclose(diagnostics.gate_entropy(uniform), np.log(experts), rtol=1e-12)
    np.testing.assert_allclose(diagnostics.gate_entropy(np.eye(4)), 0.0, atol=1e-12)
    peaked = diagnostics.gate_entropy(np.array([0.7, 0.1, 0.1, 0.1]))
    assert 0.0 < peaked < np.log(4)


def test_heatmap_png_has_the_figure_size_and_four_channels():
    rows, columns = 6, 9
    png = diagnostics.heatmap_png(np.random.default_rng(0).random((rows, columns)),
                                  [f"r{i}" for i in range(rows)], [f"c{j}" for j in range(columns)],
                                  "title")
    assert png.startswith(PNG_MAGIC)
    image = tf.io.decode_png(png, channels=4).numpy()
    assert image.shape == (round(100 * (1.4 + 0.32 * rows)), round(100 * (2.0 + 0.45 * columns)),
                           4)
    assert image[..., :3].std() > 10  # Not a blank canvas.
    more_rows = tf.io.decode_png(diagnostics.heatmap_png(
        np.full((12, columns), np.nan), [f"r{i}" for i in range(12)], list("abcdefghi"), "t"))
    assert more_rows.shape[0] > image.shape[0] and more_rows.shape[1] == image.shape[1]


def test_scenario_metrics_match_sklearn_on_known_data():
    rng = np.random.default_rng(1)
    n = 600
    ids = np.repeat([0, 1, 2, 3], n // 4)  # 3 is an unseen scenario: left out.
    labels = rng.integers(0, 2, (n, 2)).astype(np.float32)
    scores = np.clip(0.5 + 0.3 * rng.standard_normal((n, 2)), 0.01, 0.99)
    predictions = scores.copy()
    predictions[ids == 0] = np.where(labels[ids == 0] > 0, 0.9, 0.1)  # Perfect ranking.
    predictions[ids == 1] = np.where(labels[ids == 1] > 0, 0.2, 0.8)  # Inverted ranking.
    labels[ids == 2, 1] = 0.0  # One class only: AUC undefined.
    result = diagnostics.scenario_task_metrics(predictions, labels, ids, SCENARIOS, TASKS)
    assert set(result) == set(SCENARIOS) and all(set(r) == set(TASKS) for r in result.values())
    for t, task in enumerate(TASKS):
        assert result["s0"][task]["auc"] == 1.0 and result["s1"][task]["auc"] == 0.0
        for s, scenario in enumerate(SCENARIOS):
            rows = ids == s
            assert result[scenario][task]["count"] == rows.sum()
            assert result[scenario][task]["logloss"] == pytest.approx(
                log_loss(labels[rows, t], predictions[rows, t], labels=[0, 1]))
    assert result["s2"]["click"]["auc"] == pytest.approx(
        roc_auc_score(labels[ids == 2, 0], predictions[ids == 2, 0]))
    assert np.isnan(result["s2"]["conversion"]["auc"])
    pooled = roc_auc_score(labels[ids < 3, 0], predictions[ids < 3, 0])
    assert 0.2 < pooled < 0.8  # Per scenario is not the pooled AUC.


def test_rows_by_scenario_reads_each_row_on_the_examples_it_serves():
    ids = np.array([0, 1, 2, 1, 0, 5])  # 5: an unseen scenario.
    n, E = len(ids), 3
    heads = np.arange(n * 6 * E, dtype=np.float64).reshape(n, 6, E)
    rows = diagnostics.rows_by_scenario(heads, ids, SCENARIOS, TASKS)
    assert list(rows) == ["s0/click", "s0/conversion", "s1/click", "s1/conversion",
                          "s2/click", "s2/conversion"]
    np.testing.assert_array_equal(rows["s1/conversion"], heads[[1, 3], 3])
    per_scenario = diagnostics.rows_by_scenario(heads[:, :3], ids, SCENARIOS, TASKS)
    np.testing.assert_array_equal(per_scenario["s2"], heads[[2], 2])
    shared = diagnostics.rows_by_scenario(heads[:, :1], ids, SCENARIOS, TASKS)
    np.testing.assert_array_equal(shared["s0"], heads[[0, 4], 0])


# --------------------------------------------------------------------------- backbones


def _diagnostics(architecture, **hparams):
    keras.utils.set_random_seed(0)
    model = factory.build_model(_spec(architecture, **hparams), DATA)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    x, _, _ = _examples(32, seed=2)
    inputs = keras.Model(model.inputs, backbone.input)(
        {k: tf.constant(v) for k, v in x.items()})
    return {k: v.numpy() for k, v in backbone.diagnostics(inputs, training=False).items()}


@pytest.mark.parametrize("architecture,expected", [
    ("mmoe", {"gate_weights/experts": (6, 4)}),
    ("cgc", {"gate_weights/level_0": (6, 6)}),
    ("ple", {"gate_weights/level_0": (6, 6), "gate_weights/level_0_shared": (3, 8),
             "gate_weights/level_1": (6, 6)}),
    ("hinet", {"gate_weights/shared_sei": (1, 5), "gate_weights/specific_sei": (3, 5),
               "gate_weights/task_extraction": (6, 4)}),
])
def test_gate_weights_are_distributions_per_head(architecture, expected):
    values = _diagnostics(architecture)
    gates = {k: v for k, v in values.items() if k.startswith(diagnostics.GATE_WEIGHTS)}
    assert {k: v.shape[1:] for k, v in gates.items()} == expected
    for name, weights in gates.items():
        assert weights.shape[0] == 32
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5, err_msg=name)
        assert (weights >= 0).all()


def test_hinet_san_attention_attends_over_the_other_scenarios():
    san = _diagnostics("hinet")[diagnostics.SAN_ATTENTION]
    assert san.shape == (3, 3)
    np.testing.assert_array_equal(np.diag(san), 0.0)
    np.testing.assert_allclose(san.sum(-1), 1.0, rtol=1e-5)


def test_aesm2_selection_marks_exactly_the_top_k_experts():
    values = _diagnostics("aesm2", num_experts=5, top_k_specific=2, top_k_shared=1)
    names = ["scenario_level_0", "scenario_level_1", "task_layer"]
    assert sorted(k for k in values if k.startswith("gate_weights/")) == [
        f"gate_weights/{n}" for n in names]
    shapes = {"scenario_level_0": (1, 5), "scenario_level_1": (3, 5), "task_layer": (6, 5)}
    for name in names:
        weights, selected = values[f"gate_weights/{name}"], values[f"expert_selection/{name}"]
        assert weights.shape[1:] == shapes[name]
        np.testing.assert_array_equal(selected.sum(-1), 3.0)  # top_k_specific + top_k_shared
        np.testing.assert_array_equal(selected, (weights > 0).astype(np.float32))
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def test_automtl_derived_gates_only_the_selected_experts():
    selected = ((0, 1), (1, 2), (0, 3), (2, 3), (0, 2), (1, 3))
    values = _diagnostics("automtl_derived", selected_experts=selected)
    weights, selection = values["gate_weights/experts"], values["expert_selection/experts"]
    assert weights.shape == (32, 6, 4) and selection.shape == (32, 6, 4)
    expected = np.zeros((6, 4))
    for head, experts in enumerate(selected):
        expected[head, list(experts)] = 1.0
    np.testing.assert_array_equal(selection[0], expected)
    np.testing.assert_array_equal(weights[:, expected == 0], 0.0)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


def _tags(path: str):
    events = event_accumulator.EventAccumulator(path, size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def test_automtl_search_parameters_are_written(tmp_path):
    keras.utils.set_random_seed(0)
    spec = _spec("automtl", interaction_ops=("inner_product", "cross_1", "skip"),
                 expert_ops=("mlp_16", "bit_gate", "skip"), num_experts=3)
    model = factory.build_model(spec, DATA)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=1):
        diagnostics.write_automtl_search(backbone, diagnostics.head_names(SCENARIOS, TASKS))
    writer.close()
    tags = _tags(str(tmp_path)).Tags()["tensors"]
    for op in ("inner_product", "cross_1", "skip"):
        assert f"automtl/alpha/interaction/{op}" in tags
    for tag in ("automtl/alpha_entropy/interaction", "automtl/alpha_entropy/expert_block_1",
                "automtl/alpha/expert_block_0", "automtl/beta", "automtl/interaction_weights",
                "automtl/expert_op_weights", "automtl/expert_selection"):
        assert tag in tags, tag


# --------------------------------------------------------------------------- a real TensorBoard


def _train(spec: specs.ModelSpec, log_dir: str, selection=None, epochs: int = 2):
    """Fits under MirroredStrategy on the 2 logical CPUs (as ``models.training.run`` does)."""
    from tensorflow.python.distribute import mirrored_strategy
    mirrored_strategy.MirroredStrategy._collective_key_base += 100_000  # As test_models.py.
    keras.utils.set_random_seed(0)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        model = factory.build_model(spec, DATA)
        model.compile(optimizer=keras.optimizers.Adam(0.02),
                      loss={t: keras.losses.BinaryCrossentropy() for t in TASKS})
    train = tf.data.Dataset.from_tensor_slices(_examples(2048, seed=3)).batch(256)
    eval_x, eval_y, eval_w = _examples(1024, seed=4)
    eval_ds = tf.data.Dataset.from_tensor_slices((eval_x, eval_y, eval_w)).batch(256)
    callback = diagnostics.MSMTDiagnostics(log_dir, eval_ds, DATA, max_gate_batches=2,
                                           selection=selection)
    model.fit(train, validation_data=eval_ds, epochs=epochs, verbose=0, callbacks=[
        keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch"), callback])
    # The last epoch's AUC, recomputed here from the trained model's own predictions.
    predicted = model.predict(eval_x, batch_size=512, verbose=0)
    expected = {(s, t): roc_auc_score(eval_y[t][eval_x["scenario_id"] == i, 0],
                                      predicted[t][eval_x["scenario_id"] == i, 0])
                for i, s in enumerate(SCENARIOS) for t in TASKS}
    return expected, callback


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory laid out as the pipeline's: two Trainer executions' logs."""
    root = tmp_path_factory.mktemp("run")
    (root / "metadata.sqlite").write_bytes(b"")
    logdir = cli.tensorboard_logdir(str(root))
    rng = np.random.default_rng(0)
    scores = rng.random((3, 2, 4))
    selection = Selection("saliency", {"top_k": 2}, list(SCENARIOS), list(TASKS),
                          list(DATA.field_names), scores,
                          (scores >= np.sort(scores, axis=-1)[..., -2:-1]).astype(np.float32),
                          "fingerprint")
    expected, callback = _train(_spec("mmoe", expert_units=(16,), tower_units=(8,)),
                                os.path.join(logdir, "1"), selection)
    for (s, t), auc in expected.items():
        assert callback.last_metrics[s][t]["auc"] == pytest.approx(auc, abs=1e-6)
    _train(_spec("hinet", sub_expert_units=(16,), expert_units=(16,), tower_units=(8,)),
           os.path.join(logdir, "2"))
    return str(root), expected


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.fixture(scope="module")
def tensorboard_url(run_dir):
    """``msmt tensorboard RUN`` on a free port; always stopped (its process group)."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "tensorboard", run_dir[0], "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        cwd=specs.REPO_DIR)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"msmt tensorboard exited: {process.stdout.read().decode()}")
            try:  # Up, and done with its first load of the logs.
                if "1/diagnostics" in json.loads(_get(url + "/data/plugin/images/tags")):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if time.time() > deadline:
                raise AssertionError("TensorBoard did not serve the logs within 120 s")
            time.sleep(1)
        yield url, process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stops the process group ``process`` leads (msmt and its tensorboard child)."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:  # Already gone.
            break
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue


def test_msmt_tensorboard_prints_the_url(tensorboard_url):
    url, process = tensorboard_url
    first_lines = process.stdout.readline() + process.stdout.readline()
    assert f"TensorBoard on {url}/".encode() in first_lines


def test_tensorboard_serves_per_scenario_task_metrics(tensorboard_url, run_dir):
    url, _ = tensorboard_url
    _, expected = run_dir
    tags = json.loads(_get(url + "/data/plugin/scalars/tags"))
    assert {"1/train", "1/validation", "1/diagnostics", "2/diagnostics"} <= set(tags)
    for (scenario, task), auc in expected.items():
        for metric in ("auc", "logloss"):
            assert f"eval_by_scenario/{scenario}/{task}/{metric}" in tags["1/diagnostics"]
        query = urllib.parse.urlencode({"run": "1/diagnostics",
                                        "tag": f"eval_by_scenario/{scenario}/{task}/auc"})
        points = json.loads(_get(f"{url}/data/plugin/scalars/scalars?{query}"))
        assert [p[1] for p in points] == [0, 1]  # [wall_time, step, value] per epoch.
        assert points[-1][2] == pytest.approx(auc, abs=1e-5)


def test_tensorboard_serves_gate_entropy_and_histograms(tensorboard_url):
    url, _ = tensorboard_url
    scalars = json.loads(_get(url + "/data/plugin/scalars/tags"))
    histograms = json.loads(_get(url + "/data/plugin/histograms/tags"))
    for head in diagnostics.head_names(SCENARIOS, TASKS):
        assert f"gate_entropy/experts/{head}" in scalars["1/diagnostics"]
        assert f"gate_weights/experts/{head}" in histograms["1/diagnostics"]
        assert f"gate_entropy/task_extraction/{head}" in scalars["2/diagnostics"]
    for scenario in SCENARIOS:  # HiNet's shared SEI gate, seen from each scenario.
        assert f"gate_entropy/shared_sei/{scenario}" in scalars["2/diagnostics"]
        assert f"gate_weights/specific_sei/{scenario}" in histograms["2/diagnostics"]
    assert "log(4)" in scalars["1/diagnostics"]["gate_entropy/experts/s0/click"]["description"]


def test_tensorboard_serves_heatmap_images(tensorboard_url):
    url, _ = tensorboard_url
    images = json.loads(_get(url + "/data/plugin/images/tags"))
    assert {"gate_heatmap/experts", diagnostics.FEATURE_SELECTION_TAG} <= set(
        images["1/diagnostics"])
    assert {"gate_heatmap/shared_sei", "gate_heatmap/specific_sei",
            "gate_heatmap/task_extraction", diagnostics.SAN_ATTENTION} <= set(
        images["2/diagnostics"])
    for run, tag, steps in (("1/diagnostics", "gate_heatmap/experts", [0, 1]),
                            ("1/diagnostics", diagnostics.FEATURE_SELECTION_TAG, [0]),
                            ("2/diagnostics", diagnostics.SAN_ATTENTION, [0, 1])):
        query = urllib.parse.urlencode({"run": run, "tag": tag, "sample": 0})
        entries = json.loads(_get(f"{url}/data/plugin/images/images?{query}"))
        assert [e["step"] for e in entries] == steps
        png = _get(f"{url}/data/plugin/images/individualImage?{entries[-1]['query']}")
        assert png.startswith(PNG_MAGIC)
        height, width = tf.io.decode_png(png).shape[:2]
        assert height > 100 and width > 100


def test_msmt_tensorboard_names_a_run_without_training_logs(tmp_path):
    (tmp_path / "metadata.sqlite").write_bytes(b"")
    args = cli.parser().parse_args(["tensorboard", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="has no training logs"):
        args.func(args)
