"""The Trainer and the served model honour a feature selection (models/layers/selection.py).

Model-level tests build tiny models from a hand-made DataInfo; the pipeline tests
re-run the small pipeline of conftest with other selectors in the same root (the
data components come from cache).
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from components.feature_selector.artifact import Selection
from models import factory, features
from models.layers.selection import ScenarioFieldMask, ValueMask
from models.training import selected_data_info
from pipeline import specs

FIELDS = ("f0", "f1", "f2", "f3")
VOCAB = (5, 4, 3, 6)
S, T = 2, 2


def _info(**masks) -> factory.DataInfo:
    return factory.DataInfo(field_names=FIELDS, vocab_sizes=VOCAB, task_names=("click", "conversion"),
                            scenario_names=("s0", "s1"), scenario_prior=(0.6, 0.4), **masks)


def _spec(architecture: str) -> specs.ModelSpec:
    spec = specs.load_model_spec("mmoe")
    hparams = {"mmoe": (("expert_units", [16]), ("num_experts", 2), ("tower_units", [8])),
               "cgc": (("expert_units", [16]), ("tower_units", [8])),
               "ple": (("expert_units", [16]), ("tower_units", [8])),
               "shared_bottom": (("bottom_units", [16]), ("tower_units", [8]))}[architecture]
    return dataclasses.replace(spec, architecture=architecture, hparams=hparams, esmm=False,
                               embedding_dim=4)


def _inputs(ids, scenario):
    ids = np.asarray(ids, np.int64)
    x = {f: tf.constant(ids[:, i]) for i, f in enumerate(FIELDS)}
    x[features.SCENARIO_ID] = tf.constant(scenario, tf.int64)
    return x


# Paths: (s0, click) reads f0, f1; (s0, conversion) f0, f2; (s1, click) f3; (s1, conversion) f1, f3.
HEADS = np.array([[[1, 1, 0, 0], [1, 0, 1, 0]], [[0, 0, 0, 1], [0, 1, 0, 1]]], np.float32)


def _selection(shared: str, value_masks=None, mask=HEADS) -> Selection:
    reduce = np.max if shared == "union" else np.min
    return Selection("test", {}, ["s0", "s1"], ["click", "conversion"], list(FIELDS),
                     scores=mask.astype(float), mask=mask, vocabulary_fingerprint="x",
                     shared_mask=reduce(mask, axis=1), value_masks=value_masks)


def _all_scenario_probs(model, x):
    return factory.all_scenario_model(model)(x).numpy()  # [B, S, T]


@pytest.mark.parametrize("architecture", ["mmoe", "cgc"])
def test_a_path_does_not_read_a_field_it_did_not_select(architecture):
    """Intersection shared set + per-path gates/specific experts: each path reads its own fields.

    (PLE's upper-level shared gates mix all of a scenario's specific experts, so there a
    path also reads its scenario's other paths' fields: the union test below covers it.)
    """
    info = selected_data_info(_info(), _selection("intersection"))
    keras.utils.set_random_seed(0)
    model = factory.build_model(_spec(architecture), info)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3, size=(64, 4))
    scenario = np.repeat([0, 1], 32)
    base = _all_scenario_probs(model, _inputs(ids, scenario))
    for f in range(4):
        changed = ids.copy()
        changed[:, f] = (changed[:, f] + 1) % 3
        out = _all_scenario_probs(model, _inputs(changed, scenario))
        for s in range(S):
            rows = scenario == s
            for t in range(T):
                moved = np.abs(out[rows, s, t] - base[rows, s, t]).max()
                if HEADS[s, t, f]:
                    assert moved > 1e-6, (architecture, s, t, f)
                else:
                    assert moved == 0.0, (architecture, s, t, f)


@pytest.mark.parametrize("architecture", ["mmoe", "ple", "shared_bottom"])
def test_a_field_outside_the_scenario_set_is_not_read_and_gets_no_gradient(architecture):
    """Union shared set: a field none of a scenario's paths selected has no effect there."""
    info = selected_data_info(_info(), _selection("union"))
    keras.utils.set_random_seed(1)
    model = factory.build_model(_spec(architecture), info)
    ids = np.random.default_rng(1).integers(0, 3, size=(16, 4))
    scenario = np.zeros(16, np.int64)  # s0 reads f0, f1, f2; never f3.
    x = _inputs(ids, scenario)
    changed = ids.copy()
    changed[:, 3] = (changed[:, 3] + 1) % 3
    np.testing.assert_array_equal(model(x)["click"].numpy(),
                                  model(_inputs(changed, scenario))["click"].numpy())
    table = model.get_layer("field_embedding").embeddings
    with tf.GradientTape() as tape:
        out = model(x)
        loss = tf.reduce_sum(out["click"]) + tf.reduce_sum(out["conversion"])
    grad = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
    offset = sum(VOCAB[:3])
    assert np.all(grad[offset:offset + VOCAB[3]] == 0)  # f3's rows.
    assert np.abs(grad[:VOCAB[0]]).sum() > 0  # f0's rows learn.


def test_value_masks_line_up_with_vocabulary_rows():
    """``ValueMask`` zeroes exactly row ``offset_f + id`` of the masked (scenario, value)."""
    dropped = {(0, 0, 2), (1, 2, 1), (0, 3, 5)}  # (scenario, field, value id)
    value_masks = [np.ones([S, v], np.float32) for v in VOCAB]
    for s, f, v in dropped:
        value_masks[f][s, v] = 0.0
    layer = ValueMask([m.tolist() for m in value_masks])
    rows = []
    for s in range(S + 1):  # S: the unseen-scenario id keeps what any scenario keeps.
        for f in range(4):
            for v in range(VOCAB[f]):
                ids = np.zeros([1, 4], np.int64)
                ids[0, f] = v
                rows.append((s, f, v, ids))
    ids = np.concatenate([r[3] for r in rows])
    scenario = np.array([r[0] for r in rows])
    embedded = tf.ones([len(rows), 4, 2])
    out = layer(embedded, tf.constant(ids), tf.constant(scenario)).numpy()
    for i, (s, f, v, _) in enumerate(rows):
        expected = 0.0 if (s, f, v) in dropped else 1.0
        assert out[i, f, 0] == expected, (s, f, v)
    # Round trip through the config.
    clone = ValueMask.from_config(layer.get_config())
    np.testing.assert_array_equal(clone(embedded, tf.constant(ids), tf.constant(scenario)), out)


def test_value_masked_values_behave_like_missing():
    """A value dropped in a scenario reads as zeros there: two dropped values look the same,
    the model's output equals that of the field masked out, and their rows get no gradient."""
    value_masks = [np.ones([S, v], np.float32) for v in VOCAB]
    value_masks[1][0, [1, 2]] = 0.0  # f1's values 1 and 2 dropped in s0 (kept in s1).
    selection = _selection("union", value_masks=value_masks, mask=np.ones([S, T, 4], np.float32))
    info = selected_data_info(_info(), selection)
    keras.utils.set_random_seed(2)
    model = factory.build_model(_spec("mmoe"), info)
    ids = np.random.default_rng(2).integers(0, 3, size=(8, 4))
    out = {}
    for v in (1, 2, 3):
        ids_v = ids.copy()
        ids_v[:, 1] = v
        out[v] = model(_inputs(ids_v, np.zeros(8, np.int64)))["click"].numpy()
        out[(v, 1)] = model(_inputs(ids_v, np.ones(8, np.int64)))["click"].numpy()
    np.testing.assert_array_equal(out[1], out[2])  # Dropped in s0: the same.
    assert np.abs(out[1] - out[3]).max() > 1e-6  # Value 3 is kept.
    assert np.abs(out[(1, 1)] - out[(2, 1)]).max() > 1e-6  # Kept in s1.
    # Same output as with field f1 masked out of s0 altogether (same weights).
    no_f1 = dataclasses.replace(info, value_masks=None, scenario_field_mask=(
        (1.0, 0.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0)))
    masked_field = factory.build_model(_spec("mmoe"), no_f1)
    masked_field.set_weights(model.get_weights())
    ids_1 = ids.copy()
    ids_1[:, 1] = 1
    np.testing.assert_allclose(
        masked_field(_inputs(ids_1, np.zeros(8, np.int64)))["click"].numpy(), out[1], rtol=1e-6)
    table = model.get_layer("field_embedding").embeddings
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(_inputs(ids_1, np.zeros(8, np.int64)))["click"])
    grad = tf.convert_to_tensor(tape.gradient(loss, table)).numpy()
    assert np.all(grad[VOCAB[0] + 1] == 0)


def test_dropped_fields_leave_the_model_and_shrink_it():
    mask = HEADS.copy()
    mask[:, :, 2] = 0  # f2 selected by no path.
    full = factory.build_model(_spec("mmoe"), _info())
    info = selected_data_info(_info(), _selection("union", mask=mask))
    assert info.field_names == ("f0", "f1", "f3") and info.vocab_sizes == (5, 4, 6)
    model = factory.build_model(_spec("mmoe"), info)
    assert "f2" not in {i.name for i in model.inputs}
    assert factory.model_input_names(info) == ("f0", "f1", "f3", features.SCENARIO_ID)
    # Fewer embedding rows (3 x 4) and a narrower expert/gate input (4 fewer columns).
    saved = full.count_params() - model.count_params()
    assert saved == VOCAB[2] * 4 + 4 * (16 * 2 + 2 * S * T)


def test_masks_survive_config_and_savedmodel_round_trips(tmp_path):
    value_masks = [np.ones([S, v], np.float32) for v in VOCAB]
    value_masks[0][1, 0] = 0.0
    info = selected_data_info(_info(), _selection("intersection", value_masks=value_masks))
    keras.utils.set_random_seed(3)
    model = factory.build_model(_spec("ple"), info)
    x = _inputs(np.random.default_rng(3).integers(0, 4, size=(10, 4)) % 3, np.arange(10) % 3)
    expected = model(x)["conversion"].numpy()
    clone = keras.Model.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(x)["conversion"].numpy(), expected, rtol=1e-6)
    config = model.get_layer("backbone").get_config()
    assert np.asarray(config["head_field_mask"]).shape == (S * T, 4)
    assert model.get_layer("value_mask").get_config()["value_masks"][0][1][0] == 0.0
    model.save(str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    np.testing.assert_allclose(loaded(x, training=False)["conversion"].numpy(), expected, rtol=1e-6)


def test_scenario_field_mask_unseen_scenario_reads_the_union():
    layer = ScenarioFieldMask([[1, 0, 0], [0, 1, 0]])
    out = layer(tf.ones([3, 3, 2]), tf.constant([0, 1, 2])).numpy()[..., 0]
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 1, 0], [1, 1, 0]])


# ---------------------------------------------------------------- the pipeline, end to end

PIPELINE_SELECTORS = {"mi": (("k", 4), ("max_rows", 4000)),
                      "multisfs": (("gnn_epochs", 3), ("num_batches", 2)),
                      "multifs": (("search_epochs", 1), ("max_steps_per_epoch", 4))}


@pytest.fixture(scope="module")
def selector_runs(pipeline_runs):
    """conftest's pipeline re-run in its root with other selectors, 1 epoch each.

    ExampleGen..Transform come from cache; FeatureSelector, Trainer, Evaluator and
    Pusher run. (The default selector is conftest's own run.)
    """
    from pipeline import local_runner, report
    config = pipeline_runs[0]
    model = config.model.with_training(epochs=1)
    results = {}
    for selector, params in PIPELINE_SELECTORS.items():
        run_config = dataclasses.replace(config, selector=selector, selector_params=params,
                                         model=model)
        local_runner.run(run_config)
        results[selector] = report.load_run(run_config.metadata_path, run_config.dataset)
    return config, results


@pytest.mark.parametrize("selector", ["default"] + list(PIPELINE_SELECTORS))
def test_the_pipeline_runs_with_each_selector(pipeline_runs, selector_runs, selector):
    import json
    import os

    from models.training import DATA_INFO_FILE, TRANSFORMED_SIGNATURE
    config, results = selector_runs
    result = pipeline_runs[1] if selector == "default" else results[selector]
    states = result.component_states
    assert states["FeatureSelector"] == "ran" and states["MSMTTrainer"] == "ran"
    if selector != "default":
        assert {states[c] for c in ("FileBasedExampleGen", "StatisticsGen", "Transform")} == {
            "cached"}
    selection = Selection.read(result.uri("FeatureSelector.feature_selection"))
    assert selection.method == (config.selector if selector == "default" else selector)
    assert (selection.value_masks is not None) == (selector == "multifs")
    used = [f for f, m in zip(selection.fields, selection.union_mask) if m]
    trained = tf.saved_model.load(os.path.join(result.uri("MSMTTrainer.model"), "Format-Serving"))
    inputs = set(trained.signatures[TRANSFORMED_SIGNATURE].structured_input_signature[1])
    assert inputs & set(config.dataset.field_names) == set(used)
    with open(os.path.join(result.uri("MSMTTrainer.model_run"), DATA_INFO_FILE)) as f:
        info = json.load(f)
    assert list(info["data_info"]["field_names"]) == used
    if len(used) < len(selection.fields):
        assert info["selection_savings"]["parameters_saved"] > 0


def test_served_model_does_not_read_dropped_fields(selector_runs):
    import glob
    import os

    from models.training import SERVING_SIGNATURE
    config, results = selector_runs
    result = results["mi"]
    selection = Selection.read(result.uri("FeatureSelector.feature_selection"))
    dropped = [f for f, m in zip(selection.fields, selection.union_mask) if not m]
    assert dropped, "k=4 per path should leave some of the 20 fields unused"
    trained = tf.saved_model.load(os.path.join(result.uri("MSMTTrainer.model"), "Format-Serving"))
    files = glob.glob(os.path.join(result.uri("FileBasedExampleGen.examples"), "Split-eval", "*"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, "GZIP").take(50)]
    stripped = []
    for record in records:
        example = tf.train.Example.FromString(record)
        for field in dropped:
            del example.features.feature[field]
        stripped.append(example.SerializeToString())
    serve = trained.signatures[SERVING_SIGNATURE]
    full, without = serve(examples=tf.constant(records)), serve(examples=tf.constant(stripped))
    for task in config.dataset.task_names:
        np.testing.assert_array_equal(full[task].numpy(), without[task].numpy())
