"""Behaviour of the baseline backbones: Shared-Bottom, CGC, PLE and STAR.

The properties every architecture shares (shapes, routing, saving, determinism,
MirroredStrategy) are in ``test_models.py``; these check what makes each model itself.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import factory
from models.layers import (CGC, PLE, STAR, ExtractionLayer, PartitionedNormalization,
                           ScenarioAuxiliaryNetwork, SharedBottom, StarTopologyDense)
from pipeline import specs

S, T, F, D = 3, 2, 4, 3


def _inputs(n=8, seed=0, scenario=None):
    rng = np.random.default_rng(seed)
    ids = np.full(n, scenario) if scenario is not None else rng.integers(0, S, n)
    return {"embedded": tf.constant(rng.normal(size=(n, F, D)), tf.float32),
            "scenario_id": tf.constant(ids, tf.int64),
            "scenario_levels": tf.zeros((n, 0), tf.int64)}


def _randomise(layer, seed=1):
    """Random values in every trainable weight, so ones/zeros initialisers hide nothing."""
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        w.assign(rng.normal(scale=0.5, size=w.shape).astype(np.float32))


def _set_slice(variable, index, value):
    array = variable.numpy()
    array[index] = value
    variable.assign(array)


# Shared-Bottom ----------------------------------------------------------------------

def test_shared_bottom_scenarios_differ_only_through_towers():
    layer = SharedBottom(S, T, bottom_units=[5], tower_units=[4])
    inputs = _inputs()
    logits = layer(inputs).numpy()
    assert logits.shape == (8, S, T)
    assert not np.allclose(logits[:, 0], logits[:, 1])
    # Give scenario 1 the towers of scenario 0: its logits become scenario 0's.
    for v in layer.towers.kernels + layer.towers.biases:
        _set_slice(v, slice(T, 2 * T), v.numpy()[:T])
    logits = layer(inputs).numpy()
    np.testing.assert_array_equal(logits[:, 1], logits[:, 0])
    assert not np.allclose(logits[:, 2], logits[:, 0])
    # One bottom for every head: it has no per-head dimension.
    assert all(w.shape.rank == (2 if "kernel" in w.name else 1)
               for w in layer.bottom.trainable_weights)


# CGC / PLE --------------------------------------------------------------------------

def test_ple_levels_experts_and_intermediate_shared_gate():
    layer = PLE(S, T, num_levels=2, num_specific_experts=2, num_shared_experts=3,
                expert_units=[5], tower_units=[4])
    logits = layer(_inputs())
    assert logits.shape == (8, S, T)
    first, last = layer.extraction_layers
    assert len(layer.extraction_layers) == 2
    assert first.shared_gate and not last.shared_gate and last.shared_gates is None
    for level in (first, last):
        assert level.specific_experts.num_blocks == S * T * 2
        assert level.shared_experts.num_blocks == 3
        assert level.task_gates.num_blocks == S * T and level.task_gates.units == [2 + 3]
    # Scenario s's shared gate spans its T heads' specific experts plus the shared ones.
    assert first.shared_gates.num_blocks == S and first.shared_gates.units == [T * 2 + 3]
    # The second level reads the first level's outputs (width 5), one per head / scenario.
    assert last.specific_experts.kernels[0].shape == (S * T * 2, 5, 5)
    assert last.shared_experts.kernels[0].shape == (3, 5, 5)


def test_extraction_layer_with_one_scenario_is_the_papers():
    """One scenario: the shared gate mixes all experts of the level (PLE, Sec. 4.2)."""
    layer = ExtractionLayer(1, T, num_specific_experts=2, num_shared_experts=3,
                            expert_units=[5], shared_gate=True)
    x = tf.random.stateless_normal((4, 6), seed=(1, 2))
    out = layer({"task": x, "shared": x})
    assert out["task"].shape == (4, T, 5) and out["shared"].shape == (4, 1, 5)
    assert layer.shared_gates.units == [T * 2 + 3]


def test_cgc_gates_sum_to_one_and_cover_own_and_shared_experts_only():
    layer = CGC(S, T, num_specific_experts=2, num_shared_experts=3, expert_units=[5],
                tower_units=[4])
    inputs = _inputs()
    layer(inputs)
    extraction, = layer.extraction_layers
    x = tf.reshape(inputs["embedded"], [8, F * D])
    level_inputs = {"task": x, "shared": x}
    w = extraction.gate_weights(level_inputs).numpy()
    assert w.shape == (8, S * T, 2 + 3)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    # Head k's output is w_k . [its own 2 experts, the 3 shared experts] (CGC eqs. 2-4).
    specific = extraction.specific_experts(x).numpy().reshape(8, S * T, 2, 5)
    shared = extraction.shared_experts(x).numpy()
    expected = (np.einsum("bkm,bkmh->bkh", w[..., :2], specific)
                + np.einsum("bkm,bmh->bkh", w[..., 2:], shared))
    got = extraction(level_inputs)["task"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # Another head's experts do not enter head 0's output.
    before = got[:, 0]
    for v in extraction.specific_experts.kernels:
        _set_slice(v, slice(2, None), 0.0)
    after = extraction(level_inputs)["task"].numpy()
    np.testing.assert_array_equal(after[:, 0], before)
    assert not np.allclose(after[:, 1], got[:, 1])


def test_ple_scenario_logits_ignore_other_scenarios_experts():
    """The per-scenario shared gate keeps another scenario's experts out of the shared path."""
    layer = PLE(S, T, num_levels=3, num_specific_experts=1, num_shared_experts=2,
                expert_units=[4], tower_units=[3])
    inputs = _inputs()
    before = layer(inputs).numpy()
    for extraction in layer.extraction_layers:
        for v, index in extraction.scenario_parameters(1):
            _set_slice(v, index, 0.3)
    after = layer(inputs).numpy()
    np.testing.assert_array_equal(after[:, [0, 2]], before[:, [0, 2]])
    assert not np.allclose(after[:, 1], before[:, 1])


def test_cgc_config_has_no_num_levels():
    layer = CGC(S, T, expert_units=[4], tower_units=[3])
    config = layer.get_config()
    assert "num_levels" not in config
    assert CGC.from_config(config).get_config() == config
    assert len(CGC.from_config(config).extraction_layers) == 1


# STAR -------------------------------------------------------------------------------

def test_star_dense_effective_weights_are_shared_times_specific():
    layer = StarTopologyDense(S, 4, activation="relu")
    x = tf.random.stateless_normal((6, S, 5), seed=(3, 4))
    layer(x)
    _randomise(layer)
    W, b = layer.kernel.numpy(), layer.bias.numpy()
    W_p, b_p = layer.kernel_p.numpy(), layer.bias_p.numpy()
    got = layer(x).numpy()
    for p in range(S):
        expected = np.maximum(x.numpy()[:, p] @ (W * W_p[p]) + b + b_p[p], 0.0)
        np.testing.assert_allclose(got[:, p], expected, rtol=1e-5, atol=1e-6)
    kernel, bias = layer.effective_weights()
    np.testing.assert_allclose(kernel.numpy()[2], W * W_p[2], rtol=1e-6)
    # A [batch, d_in] input is read by every scenario.
    flat = x[:, 0]
    np.testing.assert_allclose(layer(flat).numpy()[:, 1],
                               np.maximum(flat.numpy() @ (W * W_p[1]) + b + b_p[1], 0.0),
                               rtol=1e-5, atol=1e-6)


def test_star_dense_starts_as_the_shared_layer():
    layer = StarTopologyDense(S, 4)
    x = tf.random.stateless_normal((6, 5), seed=(5, 6))
    out = layer(x).numpy()
    np.testing.assert_allclose(out[:, 0], x.numpy() @ layer.kernel.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[:, 0], out[:, 2])


def test_partitioned_normalization_trains_on_own_scenario_moments():
    norm = PartitionedNormalization(S, momentum=0.9, epsilon=1e-3)
    rng = np.random.default_rng(0)
    z = rng.normal(loc=2.0, size=(10, 4)).astype(np.float32)
    ids = np.array([0] * 6 + [1] * 3 + [S])  # One example of an unseen scenario.
    norm(z, ids)  # Build.
    _randomise(norm)
    gamma, beta = norm.gamma.numpy(), norm.beta.numpy()
    gamma_p, beta_p = norm.gamma_p.numpy(), norm.beta_p.numpy()
    out = norm(z, ids, training=True).numpy()
    assert out.shape == (10, S, 4) and np.all(np.isfinite(out))
    for p, rows in ((0, slice(0, 6)), (1, slice(6, 9))):
        mean, var = z[rows].mean(0), z[rows].var(0)
        expected = (gamma * gamma_p[p]) * (z[rows] - mean) / np.sqrt(var + 1e-3) + beta + beta_p[p]
        np.testing.assert_allclose(out[rows, p], expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(norm.moving_mean.numpy()[p], 0.1 * mean, rtol=1e-5)
        np.testing.assert_allclose(norm.moving_variance.numpy()[p], 0.9 + 0.1 * var, rtol=1e-5)
    # Scenario 2 had no examples: its statistics did not move, and it used them.
    np.testing.assert_array_equal(norm.moving_mean.numpy()[2], 0.0)
    np.testing.assert_array_equal(norm.moving_variance.numpy()[2], 1.0)
    np.testing.assert_allclose(out[:, 2], (gamma * gamma_p[2]) * z / np.sqrt(1 + 1e-3)
                               + beta + beta_p[2], rtol=1e-4, atol=1e-5)


def test_partitioned_normalization_uses_each_scenarios_moving_statistics_at_inference():
    norm = PartitionedNormalization(S)
    rng = np.random.default_rng(1)
    z0 = rng.normal(loc=-1.0, size=(16, 4)).astype(np.float32)
    z1 = rng.normal(loc=3.0, scale=2.0, size=(16, 4)).astype(np.float32)
    for _ in range(3):
        norm(z0, np.zeros(16), training=True)
        norm(z1, np.ones(16), training=True)
    mean, variance = norm.moving_mean.numpy(), norm.moving_variance.numpy()
    assert np.all(mean[1] > mean[0])  # Each scenario's own statistics.
    np.testing.assert_array_equal(mean[2], 0.0)
    np.testing.assert_array_equal(variance[2], 1.0)
    out = norm(z1, np.ones(16), training=False).numpy()
    for p in range(S):
        np.testing.assert_allclose(out[:, p], (z1 - mean[p]) / np.sqrt(variance[p] + 1e-3),
                                   rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(norm.moving_mean.numpy(), mean)  # Inference updates nothing.


def test_star_adds_the_auxiliary_networks_logits():
    layer = STAR(S, T, embedding_dim=D, units=[5], aux_units=[4])
    inputs = _inputs()
    layer(inputs)
    _randomise(layer)
    x = tf.reshape(inputs["embedded"], [8, F * D])
    h = layer.partitioned_norm(x, inputs["scenario_id"])
    for dense in layer.star_layers:
        h = dense(h)
    aux = layer.auxiliary(x)
    np.testing.assert_allclose(layer(inputs).numpy(), (h + aux).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(aux.numpy(), 0.0)


@pytest.mark.parametrize("training", [False, True])
def test_star_is_partitioned_norm_then_star_fcn_plus_auxiliary(training):
    """STAR folds PN into its first layer's weights; the logits (and their gradients) are
    those of PN(x) fed through the star-topology FCN, plus the auxiliary logits."""
    star = STAR(S, T, embedding_dim=D, units=[5])
    inputs = _inputs(16)
    star(inputs)
    _randomise(star)
    norm_state = [v.numpy() for v in star.partitioned_norm.non_trainable_weights]
    x = tf.reshape(inputs["embedded"], [16, F * D])
    with tf.GradientTape(persistent=True) as tape:
        got = star(inputs, training=training)
        for v, value in zip(star.partitioned_norm.non_trainable_weights, norm_state):
            v.assign(value)  # The reference's PN sees the same moving statistics.
        z = star.partitioned_norm(x, inputs["scenario_id"], training=training)  # [B, S, d]
        hidden = star.star_layers[0](z)
        expected = star.star_layers[1](hidden) + star.auxiliary(x)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    for weight in star.trainable_weights:
        np.testing.assert_allclose(tape.gradient(got, weight).numpy(),
                                   tape.gradient(expected, weight).numpy(), rtol=1e-4, atol=1e-5)


def test_star_auxiliary_network_without_features_reads_the_scenario_only():
    aux = ScenarioAuxiliaryNetwork(S, T, embedding_dim=3, units=[4, 3], use_features=False)
    x = tf.random.stateless_normal((5, 7), seed=(7, 8))
    aux(x)
    _randomise(aux)
    out = aux(x).numpy()
    assert out.shape == (5, S, T)
    np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), rtol=1e-6)
    assert not np.allclose(out[0, 0], out[0, 1])
    with_features = ScenarioAuxiliaryNetwork(S, T, embedding_dim=3, units=[4])
    with_features(x)
    _randomise(with_features)  # Not the unseeded initialisers: 4 ReLUs can all start dead.
    out = with_features(x).numpy()
    assert not np.allclose(out[0], out[1])


def test_star_unseen_scenario_trains_and_predicts():
    layer = STAR(S, T, embedding_dim=D, units=[5], aux_units=[4])
    inputs = _inputs(scenario=S)
    layer(inputs)
    before = layer.partitioned_norm.moving_mean.numpy()
    logits = layer(inputs, training=True).numpy()
    assert logits.shape == (8, S, T) and np.all(np.isfinite(logits))
    np.testing.assert_array_equal(layer.partitioned_norm.moving_mean.numpy(), before)


# Every baseline ---------------------------------------------------------------------

DATA = factory.DataInfo(
    field_names=("f0", "f1", "f2"), vocab_sizes=(5, 7, 4), task_names=("click", "conversion"),
    scenario_names=("a", "b", "c"), scenario_prior=(0.5, 0.3, 0.2), task_parents=(None, "click"))
TINY = {"shared_bottom": {"bottom_units": [6], "tower_units": [3]},
        "cgc": {"expert_units": [6], "tower_units": [3]},
        "ple": {"expert_units": [6], "tower_units": [3]},
        "star": {"units": [6], "aux_units": [3]}}


@pytest.mark.parametrize("architecture", sorted(TINY))
def test_registered_with_esmm(architecture):
    spec = specs.load_model_spec(architecture)
    assert spec.architecture == architecture
    spec = dataclasses.replace(spec, embedding_dim=3, esmm=True,
                               hparams=tuple(sorted(TINY[architecture].items())))
    keras.utils.set_random_seed(0)
    model = factory.build_model(spec, DATA)
    rng = np.random.default_rng(0)
    x = {f: rng.integers(0, v, 16) for f, v in zip(DATA.field_names, DATA.vocab_sizes)}
    x["scenario_id"] = rng.integers(0, 4, 16)  # Id 3: unseen scenario.
    out = model(x)
    assert np.all(out["conversion"].numpy() <= out["click"].numpy() + 1e-7)
    y = {"click": np.ones((16, 1), np.float32), "conversion": np.zeros((16, 1), np.float32)}
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.parametrize("layer", [
    ExtractionLayer(S, T, 1, 2, [3], dropout=0.1, shared_gate=True),
    PartitionedNormalization(S, momentum=0.9, epsilon=1e-2),
    StarTopologyDense(S, 3, activation="relu"),
    ScenarioAuxiliaryNetwork(S, T, 4, [3, 2], use_features=False),
], ids=lambda layer: type(layer).__name__)
def test_sub_layer_config_round_trip(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
