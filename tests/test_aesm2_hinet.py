"""AESM² (expert selection, additive masking, noise, auxiliary losses, hierarchy) and HiNet
(SAN, SEI, any number of scenarios, inverse-share loss weights).

The generic properties (shapes, routing, serialisation, determinism, MirroredStrategy)
are checked for both in tests/test_models.py.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import factory
from models.layers.aesm2 import AESM2, ExpertSelectionGate
from models.layers.hinet import HiNet, ScenarioAwareAttention, SubExpertIntegration
from pipeline import specs

TINY_AESM2 = {"num_experts": 4, "expert_units": [8], "top_k_specific": 2, "top_k_shared": 1,
              "tower_units": [4], "lambda_sp": 0.01, "lambda_sh": 0.01, "noise_scale": 0.01}
TINY_HINET = {"num_sub_experts": 3, "sub_expert_units": [8], "num_shared_experts": 1,
              "num_specific_experts": 1, "expert_units": [8], "tower_units": [4], "san_dim": 4}


def _data_info(num_scenarios=3, level_sizes=(3,)):
    return factory.DataInfo(
        field_names=("f0", "f1", "f2"), vocab_sizes=(5, 7, 4), task_names=("click", "conversion"),
        scenario_names=tuple(f"s{i}" for i in range(num_scenarios)),
        scenario_prior=tuple([1.0 / num_scenarios] * num_scenarios),
        task_parents=(None, "click"), scenario_level_sizes=tuple(level_sizes))


def _batch(data, n=64, seed=0, scenario=None):
    """Scenarios differ: even scenarios click on high f0, odd ones on low f0."""
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, v, n) for f, v in zip(data.field_names, data.vocab_sizes)}
    s = rng.integers(0, data.num_scenarios, n) if scenario is None else np.full(n, scenario)
    x["scenario_id"] = s
    for level, size in enumerate(data.scenario_level_sizes):  # The last id is OOV.
        x[f"scenario_level_{level}_id"] = s % (size - 1)
    sign = np.where(s % 2 == 0, 1.0, -1.0)
    click = (rng.random(n) < 1.0 / (1.0 + np.exp(-3.0 * sign * (x["f0"] - 2)))).astype(np.float32)
    y = {"click": click[:, None], "conversion": (click * (x["f1"] > 3))[:, None]}
    return x, y


def _build(architecture, hparams, data, seed=0, learning_rate=0.01):
    keras.utils.set_random_seed(seed)
    spec = specs.parse_model_spec({"architecture": architecture, "embedding_dim": 4,
                                   "hparams": hparams}, f"<{architecture}>")
    model = factory.build_model(spec, data)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy")
    return model


def _gate_inputs(batch=32, rows=3, d=6, e=4, num_gates=3, seed=0):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, d)), tf.float32)
    s = tf.constant(rng.normal(size=(batch, rows, e)), tf.float32)
    current = tf.constant(rng.integers(0, num_gates, (batch, rows, 1)), tf.int32)
    return [x, s], current


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


# ----------------------------------------------------------------------------- AESM²


@pytest.mark.parametrize("top_k_specific,top_k_shared", [(2, 1), (1, 3), (0, 2)])
@pytest.mark.parametrize("training", [False, True])
def test_selection_picks_exactly_top_k_specific_plus_top_k_shared(top_k_specific, top_k_shared,
                                                                  training):
    gate = ExpertSelectionGate(num_gates=3, num_experts=5, top_k_specific=top_k_specific,
                               top_k_shared=top_k_shared, noise_scale=0.2)
    inputs, current = _gate_inputs()
    weights = gate(inputs, current, training=training).numpy()
    assert weights.shape == (32, 3, 1, 5)
    np.testing.assert_array_equal((weights > 0).sum(-1), top_k_specific + top_k_shared)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_masking_is_additive_even_when_all_logits_are_negative():
    gate = ExpertSelectionGate(num_gates=3, num_experts=6, top_k_specific=2, top_k_shared=1)
    inputs, current = _gate_inputs()
    gate(inputs, current)
    gate.bias.assign(gate.bias - 50.0)
    logits = gate.gate_logits(inputs).numpy()  # [B, R, m, n]
    assert np.all(logits < 0)
    weights = gate(inputs, current).numpy()[:, :, 0]
    own = np.take_along_axis(logits, current.numpy()[..., None], axis=2)[:, :, 0]  # [B, R, n]
    for w, g in zip(weights.reshape(-1, 6), own.reshape(-1, 6)):
        selected = w > 0
        assert selected.sum() == 3
        assert np.all(w[~selected] == 0.0)  # Exactly zero: -inf before the softmax.
        np.testing.assert_allclose(w[selected], _softmax(g[selected]), rtol=1e-5)
        # A multiplicative mask (the authors' code) would flip the negative logits and
        # give the unselected experts almost all of the weight.
        multiplicative = _softmax(np.where(selected, g, g * -1e9))
        assert multiplicative[~selected].sum() > 0.99


def test_noise_only_in_training_and_only_for_selection():
    gate = ExpertSelectionGate(num_gates=3, num_experts=8, top_k_specific=2, top_k_shared=2,
                               noise_scale=0.5)
    inputs, current = _gate_inputs(batch=64)
    inference = gate(inputs, current, training=False).numpy()
    np.testing.assert_array_equal(inference, gate(inputs, current, training=False).numpy())

    def selection(seed):
        keras.utils.set_random_seed(seed)
        weights = gate(inputs, current, training=True).numpy()
        return weights, weights > 0

    weights_1, selected_1 = selection(1)
    np.testing.assert_array_equal(selected_1, selection(1)[1])
    assert np.any(selected_1 != selection(2)[1])
    assert np.any(selected_1 != (inference > 0))
    # The mixture reads the noise-free scores of the selected experts.
    clean = np.take_along_axis(gate.gate_logits(inputs).numpy(), current.numpy()[..., None],
                               axis=2)[:, :, 0]
    for w, g, chosen in zip(weights_1.reshape(-1, 8), clean.reshape(-1, 8),
                            selected_1.reshape(-1, 8)):
        np.testing.assert_allclose(w[chosen], _softmax(g[chosen]), rtol=1e-5)


def test_auxiliary_losses_are_present_finite_and_fall():
    data = _data_info(num_scenarios=3, level_sizes=(3,))
    model = _build("aesm2", {**TINY_AESM2, "lambda_sp": 1.0, "lambda_sh": 1.0}, data,
                   learning_rate=0.02)
    x, y = _batch(data, 256)

    def auxiliary():
        model(x, training=False)
        return np.array([float(loss) for loss in model.losses])

    before = auxiliary()
    assert len(before) == 2 * 3  # (specific, shared) x (2 scenario levels + 1 task layer).
    assert np.all(np.isfinite(before)) and np.all(before >= 0)
    model.fit(x, y, batch_size=64, epochs=5, verbose=0, shuffle=False)
    after = auxiliary()
    assert np.all(np.isfinite(after))
    assert after.sum() < 0.8 * before.sum(), (before, after)
    assert after[0::2].sum() < before[0::2].sum()  # Specific experts sharpen.


@pytest.mark.parametrize("num_scenarios,level_sizes", [(4, ()), (4, (3,)), (7, (3, 4))])
def test_aesm2_any_number_of_scenarios_and_hierarchy_levels(num_scenarios, level_sizes):
    data = _data_info(num_scenarios, level_sizes)
    model = _build("aesm2", TINY_AESM2, data)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    assert isinstance(backbone, AESM2)
    assert len(backbone.scenario_layers) == len(level_sizes) + 1
    x, y = _batch(data, 32)
    assert factory.all_scenario_model(model)(x).shape == (32, num_scenarios, 2)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert len(model.losses) == 2 * (len(level_sizes) + 2)
    if level_sizes:  # The coarse level's id feeds its multi-scenario layer.
        moved = dict(x, scenario_level_0_id=(x["scenario_level_0_id"] + 1) % level_sizes[0])
        assert not np.allclose(model(x)["click"].numpy(), model(moved)["click"].numpy())
    unseen = dict(x, scenario_id=np.full(32, num_scenarios))  # The out-of-vocabulary id.
    assert np.all(np.isfinite(model(unseen)["click"].numpy()))


def test_aesm2_spec_refuses_too_many_selected_experts():
    spec = specs.parse_model_spec({"architecture": "aesm2", "hparams": {
        "num_experts": 3, "top_k_specific": 2, "top_k_shared": 2}}, "<aesm2>")
    with pytest.raises(specs.SpecError, match="top_k_specific"):
        factory.resolve_hparams(spec)


# ----------------------------------------------------------------------------- HiNet


@pytest.mark.parametrize("num_scenarios", [1, 2, 5])
def test_san_attends_over_the_other_scenarios_only(num_scenarios):
    san = ScenarioAwareAttention(num_scenarios, san_dim=4)
    specific = tf.random.stateless_normal((2, num_scenarios, 3), seed=(1, 2))
    attended = san(specific).numpy()
    weights = san.attention_weights().numpy()
    assert np.all(np.diag(weights) == 0.0)
    if num_scenarios == 1:
        assert np.all(attended == 0.0)
        return
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
    if num_scenarios == 2:
        np.testing.assert_array_equal(weights, [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(attended, np.einsum("im,bmd->bid", weights, specific.numpy()),
                               rtol=1e-5, atol=1e-6)


def test_sei_gate_weights_sum_to_one():
    sei = SubExpertIntegration(num_modules=3, num_sub_experts=4, units=[5])
    x = tf.random.stateless_normal((6, 7), seed=(3, 4))
    out = sei(x).numpy()
    gate = sei.gate(x).numpy()
    assert out.shape == (6, 3, 5) and gate.shape == (6, 3, 4)
    np.testing.assert_allclose(gate.sum(-1), 1.0, rtol=1e-6)
    sub = sei.sub_experts(x).numpy().reshape(6, 3, 4, 5)
    np.testing.assert_allclose(out, np.einsum("bmk,bmkh->bmh", gate, sub), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_scenarios", [2, 7])
def test_hinet_any_number_of_scenarios(num_scenarios):
    data = _data_info(num_scenarios, level_sizes=())
    model = _build("hinet", TINY_HINET, data)
    assert isinstance(model.get_layer(factory.BACKBONE_LAYER), HiNet)
    x, y = _batch(data, 32)
    assert factory.all_scenario_model(model)(x).shape == (32, num_scenarios, 2)
    history = model.fit(x, y, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_hinet_sei_experts_are_shared_through_san_but_not_listed_as_private():
    data = _data_info(3, level_sizes=())
    model = _build("hinet", TINY_HINET, data)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    x, y = _batch(data, 32, scenario=0)
    sub_experts = backbone.scenario_specific_experts.sub_experts
    with tf.GradientTape() as tape:
        out = model(x)
        loss = tf.reduce_mean(keras.losses.binary_crossentropy(y["click"], out["click"]))
    grad = tape.gradient(loss, sub_experts.kernels[0]).numpy()  # [S * K, d, units]
    k = backbone.num_sub_experts
    assert np.any(grad[k:2 * k] != 0)  # Scenario 1's SEI learns from scenario 0 via SAN.
    listed = {id(v) for s in range(3) for v, _ in backbone.scenario_parameters(s)}
    assert id(sub_experts.kernels[0]) not in listed


def test_inverse_share_loss_weights_are_inversely_proportional_to_the_prior():
    from models.training import scenario_loss_weights

    spec = specs.load_model_spec("hinet")
    assert spec.training_dict["scenario_loss_weights"] == "inverse_share"
    prior = np.array([0.5, 0.3, 0.15, 0.05])
    weights = np.array(scenario_loss_weights("inverse_share", prior.tolist()))
    assert weights.shape == (5,) and weights[-1] == 1.0  # The unseen scenario's id last.
    np.testing.assert_allclose(weights[:-1] * prior, (weights[:-1] * prior)[0], rtol=1e-9)
    np.testing.assert_allclose((weights[:-1] * prior).sum(), 1.0, rtol=1e-9)
