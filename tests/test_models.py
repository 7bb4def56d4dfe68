"""Properties every registered MSMT architecture must have.

An architecture's backbone layer may expose ``scenario_parameters(s)``: the
``(variable, index)`` pairs that only examples of scenario ``s`` may read. The
routing test checks that their gradients are exactly zero on a batch without
scenario ``s``, and not all zero on a batch of ``s``.
"""

import dataclasses
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import factory
from pipeline import specs

NUM_SCENARIOS = 3
DATA = factory.DataInfo(
    field_names=("f0", "f1", "f2", "f3"), vocab_sizes=(7, 11, 5, 9),
    task_names=("click", "conversion"), scenario_names=("s0", "s1", "s2"),
    scenario_prior=(0.5, 0.3, 0.2), task_parents=(None, "click"), scenario_level_sizes=(3,))


def _spec(architecture: str, **overrides) -> specs.ModelSpec:
    path = os.path.join(specs.MODEL_SPEC_DIR, f"{architecture}.yaml")
    spec = specs.load_model_spec(path) if os.path.exists(path) else specs.parse_model_spec(
        {"architecture": architecture}, f"<{architecture}>")
    if "hparams" in overrides:
        overrides["hparams"] = tuple(sorted({**dict(spec.hparams), **dict(overrides["hparams"])}.items()))
    return dataclasses.replace(spec, embedding_dim=4, **overrides)


def _batch(n=64, seed=0, scenario=None):
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, v, n) for f, v in zip(DATA.field_names, DATA.vocab_sizes)}
    x["scenario_id"] = (np.full(n, scenario) if scenario is not None
                        else rng.integers(0, NUM_SCENARIOS, n))
    x["scenario_level_0_id"] = x["scenario_id"] % 2
    click = (rng.random(n) < 0.4).astype(np.float32)
    y = {"click": click[:, None], "conversion": (click * (rng.random(n) < 0.5))[:, None]}
    return x, y


def _build(architecture, seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    model = factory.build_model(_spec(architecture, **overrides), DATA)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    return model


ARCHITECTURES = sorted(factory.ARCHITECTURES)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_forward_shapes(architecture):
    model = _build(architecture)
    x, _ = _batch(16)
    out = model(x)
    assert set(out) == {"click", "conversion"}
    for p in out.values():
        assert p.shape == (16, 1) and np.all((p.numpy() >= 0) & (p.numpy() <= 1))
    all_scenarios = factory.all_scenario_model(model)(x)
    assert all_scenarios.shape == (16, NUM_SCENARIOS, 2)
    own = np.take_along_axis(all_scenarios.numpy(), x["scenario_id"][:, None, None], axis=1)[:, 0]
    np.testing.assert_allclose(own[:, 0], out["click"].numpy()[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_routing_other_scenarios_get_zero_gradient(architecture):
    model = _build(architecture)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    if not hasattr(backbone, "scenario_parameters"):
        pytest.skip(f"{architecture} has no scenario-specific parameters")
    x, y = _batch(64, scenario=0)
    with tf.GradientTape(persistent=True) as tape:
        out = model(x, training=False)
        loss = sum(tf.reduce_mean(keras.losses.binary_crossentropy(y[t], out[t])) for t in y)
    for scenario in range(NUM_SCENARIOS):
        pairs = backbone.scenario_parameters(scenario)
        assert pairs, f"{architecture}: no parameters listed for scenario {scenario}"
        grads = tape.gradient(loss, [v for v, _ in pairs], unconnected_gradients="zero")
        values = [tf.convert_to_tensor(g).numpy()[index] for g, (_, index) in zip(grads, pairs)]
        if scenario == 0:
            assert any(np.any(v != 0) for v in values), "its own scenario's parameters learn"
        else:
            for (variable, _), v in zip(pairs, values):
                assert np.all(v == 0), f"scenario {scenario}'s {variable.name} read by scenario 0"
        del grads


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_config_round_trip_and_saved_model_equality(architecture):
    model = _build(architecture)
    x, y = _batch(32)
    model.fit(x, y, epochs=1, verbose=0)
    clone = keras.Model.from_config(model.get_config())
    assert [w.shape for w in clone.weights] == [w.shape for w in model.weights]
    with tempfile.TemporaryDirectory() as directory:
        model.save(directory, save_format="tf")
        loaded = keras.models.load_model(directory)
    expected, got = model(x), loaded(x)
    for task in expected:
        np.testing.assert_allclose(got[task].numpy(), expected[task].numpy(), rtol=1e-6, atol=1e-7)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    restored = type(backbone).from_config(backbone.get_config())
    assert restored.get_config() == backbone.get_config()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_deterministic_given_a_seed(architecture):
    x, y = _batch(32)
    outputs = []
    for _ in range(2):
        model = _build(architecture, seed=3)
        model.fit(x, y, epochs=2, verbose=0, shuffle=False)
        outputs.append(model(x)["click"].numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.fixture
def fresh_collective_keys():
    """Each MirroredStrategy in one process needs its own collective keys (as TF's tests do)."""
    from tensorflow.python.distribute import mirrored_strategy
    mirrored_strategy.MirroredStrategy._collective_key_base += 100_000


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_mirrored_strategy_matches_single_device(architecture, fresh_collective_keys):
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs 2 logical CPU devices (configured in conftest)")
    x, y = _batch(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    # Dropout masks cannot match between one and two replicas: compare without it.
    no_dropout = tuple((k, 0.0) for k, (kind, _) in
                       factory.ARCHITECTURES[architecture].hparams.items()
                       if k == "dropout" or k.endswith("_dropout"))
    losses = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"),
                     tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        with strategy.scope():
            model = _build(architecture, seed=5, hparams=no_dropout)
        history = model.fit(dataset, epochs=2, verbose=0)
        losses.append(history.history["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=2e-3)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unknown_hyper_parameter_is_refused(architecture):
    spec = dataclasses.replace(_spec(architecture), hparams=(("no_such_knob", 1),))
    with pytest.raises(specs.SpecError, match=r"hparams\.no_such_knob"):
        factory.build_model(spec, DATA)


def test_unknown_architecture_is_refused():
    spec = dataclasses.replace(_spec("mmoe"), architecture="mmeo")
    with pytest.raises(specs.SpecError, match=r"architecture.*did you mean 'mmoe'"):
        factory.build_model(spec, DATA)


def test_esmm_composes_dependent_tasks():
    model = _build("mmoe", esmm=True)
    x, _ = _batch(32)
    out = model(x)
    assert np.all(out["conversion"].numpy() <= out["click"].numpy() + 1e-7)
    probabilities = factory.all_scenario_model(model)(x).numpy()
    assert np.all(probabilities[..., 1] <= probabilities[..., 0] + 1e-7)
