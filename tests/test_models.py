"""Properties every registered MSMT architecture must have.

An architecture's backbone layer may expose ``scenario_parameters(s)``: the
``(variable, index)`` pairs that only examples of scenario ``s`` may read. The
routing test checks that their gradients are exactly zero on a batch without
scenario ``s``, and not all zero on a batch of ``s``.
"""

import dataclasses
import inspect
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


def test_autograph_leaves_tf_keras_unconverted_and_converts_our_layers():
    from tensorflow.python.autograph.core import config
    from tensorflow.python.autograph.impl import conversion
    from models import autograph, layers
    assert conversion.is_allowlisted(keras.Model.train_step)
    assert conversion.is_allowlisted(keras.layers.Dense.call)
    assert not conversion.is_allowlisted(layers.ParallelMLP.call)
    rules = config.CONVERSION_RULES
    autograph.leave_tf_keras_unconverted()
    assert config.CONVERSION_RULES == rules  # Added once.


def test_trainer_adam_is_keras_adam_in_one_fused_op_per_variable():
    from models import optimizers
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
    fused, reference = optimizers.adam(0.05), keras.optimizers.Adam(0.05)
    fused_vars = [tf.Variable(v) for v in start]
    reference_vars = [tf.Variable(v) for v in start]

    @tf.function
    def fused_step(grads):
        fused.apply_gradients(zip(grads, fused_vars))

    for step in range(6):
        grads = [tf.constant(rng.normal(size=v.shape).astype(np.float32)) for v in start]
        if step == 3:  # An embedding-style sparse gradient: rows 1 and 4 only.
            grads[0] = tf.IndexedSlices(grads[0][:2], tf.constant([1, 4]), tf.constant([6, 3]))
        fused_step(grads)
        reference.apply_gradients(zip(grads, reference_vars))
        for ours, theirs in zip(fused_vars, reference_vars):
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-6)
    dense_graph = fused_step.get_concrete_function(
        [tf.TensorSpec(v.shape, tf.float32) for v in start]).graph
    ops = [op.type for op in dense_graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == 2


def test_steps_per_execution_trains_the_same_weights():
    from models import training
    x, y = _batch(64)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    spec = specs.load_dataset_spec("synthetic")
    weights, calls = [], []
    for steps_per_execution in (1, 4):
        keras.utils.set_random_seed(3)
        model = factory.build_model(_spec("mmoe"), DATA)
        training.compile_model(model, spec, {"learning_rate": 0.01,
                                             "steps_per_execution": steps_per_execution})
        batch_ends = []
        model.fit(dataset, epochs=2, steps_per_epoch=6, verbose=0, callbacks=[
            keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batch_ends.append(b))])
        weights.append([w.numpy() for w in model.weights])
        calls.append(len(batch_ends))
    assert calls == [12, 4]  # One call per 4 steps, the last of each epoch cut to 2 steps.
    assert len(weights[0]) == len(weights[1])
    for before, after in zip(*weights):
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


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


# ------------------------------------------------- own-scenario computation (routing)

ROUTED = ["cgc", "hinet", "ple", "star"]  # Backbones that run only each example's scenario.


def _mixed_batch(n=48, seed=1):
    """Every scenario, plus examples of a scenario unseen in training (id NUM_SCENARIOS)."""
    x, y = _batch(n, seed=seed)
    x["scenario_id"][:4] = NUM_SCENARIOS
    return x, y


def _no_dropout(architecture):
    return tuple((k, 0.0) for k in factory.ARCHITECTURES[architecture].hparams
                 if k == "dropout" or k.endswith("_dropout"))


def test_routed_backbones_take_all_scenarios():
    """Every backbone whose call takes ``all_scenarios`` is in ROUTED (so tested below)."""
    routed = sorted(name for name, a in factory.ARCHITECTURES.items() if isinstance(a.layer, type)
                    and "all_scenarios" in inspect.signature(a.layer.call).parameters)
    assert routed == ROUTED


@pytest.mark.parametrize("architecture", ROUTED)
def test_building_leaves_no_variable_in_graph_collections(architecture, fresh_collective_keys):
    """Weights made while a functional model is traced must not leak into graph collections.

    Every later graph in the process inherits them; TFT then refuses its preprocessing_fn
    ("contained trainable variables"), which the full suite hit after these models.
    """
    graph = tf.compat.v1.get_default_graph()
    before = len(graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES))
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        model = _build(architecture, seed=3)
    assert model.trainable_weights
    assert len(graph.get_collection(tf.compat.v1.GraphKeys.TRAINABLE_VARIABLES)) == before


@pytest.mark.parametrize("architecture", ROUTED)
@pytest.mark.parametrize("training", [False, True])
def test_own_scenario_path_equals_every_scenario_path(architecture, training):
    """Own-scenario logits and gradients equal the every-scenario computation's."""
    model = _build(architecture, seed=2, hparams=_no_dropout(architecture))
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    backbone_inputs = keras.Model(model.inputs, backbone.get_input_at(0))
    select = model.get_layer("scenario_select")
    probabilities = model.get_layer(factory.PROBABILITIES_LAYER)
    x, y = _mixed_batch()
    inputs = backbone_inputs(x)
    ids = x["scenario_id"]
    results = {}
    for all_scenarios in (False, True):
        with tf.GradientTape() as tape:
            logits = backbone(inputs, training=training, all_scenarios=all_scenarios)
            own = select(probabilities(logits), ids)
            loss = sum(tf.reduce_mean(keras.losses.binary_crossentropy(y[t], own[:, i:i + 1]))
                       for i, t in enumerate(y))
        grads = tape.gradient(loss, backbone.trainable_weights, unconnected_gradients="zero")
        results[all_scenarios] = logits.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads]
    (own_logits, own_grads), (all_logits, all_grads) = results[False], results[True]
    assert own_logits.shape == all_logits.shape == (48, NUM_SCENARIOS, 2)
    known = ids < NUM_SCENARIOS
    rows = np.take_along_axis(own_logits[known], ids[known][:, None, None], axis=1)
    expected = np.take_along_axis(all_logits[known], ids[known][:, None, None], axis=1)
    np.testing.assert_allclose(rows, expected, rtol=1e-5, atol=1e-6)
    # Unseen scenario: every known scenario's row (ScenarioSelect mixes them by the prior).
    np.testing.assert_allclose(own_logits[~known], all_logits[~known], rtol=1e-5, atol=1e-6)
    # Other scenarios' rows of a known example are not computed.
    other = np.ones_like(own_logits, bool)
    other[np.arange(48), np.minimum(ids, NUM_SCENARIOS - 1)] = False
    other[~known] = False
    assert np.all(own_logits[other] == 0.0)
    for variable, got, want in zip(backbone.trainable_weights, own_grads, all_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=variable.name)


@pytest.mark.parametrize("architecture", ROUTED)
def test_unseen_scenario_reads_every_scenario_path(architecture):
    """An unseen scenario's prediction mixes every scenario's, so each path is computed
    for it and every scenario's private parameters get a gradient from it."""
    model = _build(architecture)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    x, y = _batch(16, scenario=NUM_SCENARIOS)
    with tf.GradientTape() as tape:
        out = model(x, training=False)
        loss = sum(tf.reduce_mean(keras.losses.binary_crossentropy(y[t], out[t])) for t in y)
    grads = tape.gradient(loss, [v for s in range(NUM_SCENARIOS)
                                 for v, _ in backbone.scenario_parameters(s)],
                          unconnected_gradients="zero")
    values = iter(grads)
    for scenario in range(NUM_SCENARIOS):
        pairs = backbone.scenario_parameters(scenario)
        got = [tf.convert_to_tensor(next(values)).numpy()[index] for _, index in pairs]
        assert any(np.any(g != 0) for g in got), f"scenario {scenario} not read by unseen"


def test_ple_serving_signature_save_load_equality():
    """The export path's mechanism (a tf.Module holding the model, a serving signature,
    ``tf.saved_model.save``) on a routed backbone: same outputs after loading, for a batch
    mixing every scenario and an unseen one and for a single example."""
    model = _build("ple")
    x, y = _mixed_batch(32)
    model.fit(x, y, epochs=1, verbose=0)
    module = tf.Module()
    module.model = model
    specs_ = {k: tf.TensorSpec([None], tf.int64, name=k) for k in model.input_names}
    module.serve = tf.function(lambda inputs: module.model(inputs, training=False),
                               input_signature=[specs_])
    with tempfile.TemporaryDirectory() as directory:
        tf.saved_model.save(module, directory,
                            signatures={"serving_default": module.serve.get_concrete_function()})
        served = tf.saved_model.load(directory).signatures["serving_default"]
        for batch in (x, {k: v[:1] for k, v in x.items()}, {k: v[1:2] for k, v in x.items()}):
            expected = model(batch, training=False)
            got = served(**{k: tf.constant(v, tf.int64) for k, v in batch.items()})
            for task in expected:
                np.testing.assert_allclose(got[task].numpy(), expected[task].numpy(),
                                           rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shared_input", [True, False])
@pytest.mark.parametrize("units,output_activation", [([6, 5, 1], None), ([3], "softmax")])
def test_parallel_mlp_is_one_mlp_per_block(shared_input, units, output_activation):
    """ParallelMLP's batched (block-major) matmuls equal K separate MLPs, values and gradients."""
    from models.layers import ParallelMLP
    rng = np.random.default_rng(0)
    num_blocks = 3
    x = tf.constant(rng.normal(size=(9, 4) if shared_input else (9, num_blocks, 4)), tf.float32)
    layer = ParallelMLP(num_blocks, units, output_activation=output_activation)
    last = keras.activations.get(output_activation)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = layer(x)
        expected = []
        for k in range(num_blocks):
            h = x if shared_input else x[:, k]
            for i, (kernel, bias) in enumerate(zip(layer.kernels, layer.biases)):
                h = tf.matmul(h, kernel[k]) + bias[k]
                h = tf.nn.relu(h) if i < len(units) - 1 else last(h)
            expected.append(h)
        expected = tf.stack(expected, axis=1)
        loss_got, loss_expected = (
            tf.reduce_sum(t * tf.reshape(tf.range(1.0, 1.0 + tf.size(t, tf.float32)), t.shape))
            for t in (got, expected))
    assert got.shape == (9, num_blocks, units[-1])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    for source in [x] + layer.kernels + layer.biases:
        np.testing.assert_allclose(tape.gradient(loss_got, source).numpy(),
                                   tape.gradient(loss_expected, source).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_mix_experts_is_each_gates_weighted_sum():
    from models.layers import mix_experts
    rng = np.random.default_rng(1)
    gates = tf.nn.softmax(tf.constant(rng.normal(size=(5, 2, 3)), tf.float32))
    experts = tf.constant(rng.normal(size=(5, 3, 4)), tf.float32)
    expected = np.einsum("bge,beh->bgh", gates.numpy(), experts.numpy())
    np.testing.assert_allclose(mix_experts(gates, experts).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("max_rows", [0, 1 << 17])
def test_field_embedding_gradient_and_adam_step_do_not_depend_on_its_form(max_rows, monkeypatch):
    """The dense gradient (small tables) equals the summed IndexedSlices (large tables),
    repeated ids included, and Adam takes the same step from either."""
    from models.layers import core
    monkeypatch.setattr(core, "DENSE_GRADIENT_MAX_ROWS", max_rows)
    layer = core.FieldEmbedding([4, 3], 2, field_mask=[1.0, 0.0])
    field_ids = tf.constant([[0, 2], [3, 1], [0, 2], [9, 0]])  # Repeats; 9 is clipped to 3.
    layer(field_ids)
    layer.embeddings.assign(tf.reshape(tf.range(14, dtype=tf.float32), [7, 2]) / 10)
    upstream = tf.constant(np.random.default_rng(0).normal(size=(4, 2, 2)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(field_ids) * upstream)
    gradient = tape.gradient(loss, layer.embeddings)
    assert isinstance(gradient, tf.IndexedSlices) == (max_rows == 0)
    expected = np.zeros((7, 2), np.float32)
    for b, row in enumerate([0, 3, 0, 3]):  # Field 0's rows; field 1 is masked out.
        expected[row] += upstream[b, 0].numpy()
    np.testing.assert_allclose(tf.convert_to_tensor(gradient).numpy(), expected, atol=1e-6)
    before = layer.embeddings.numpy()
    keras.optimizers.Adam(0.1).apply_gradients([(gradient, layer.embeddings)])
    moved = np.abs(layer.embeddings.numpy() - before).sum(axis=1) > 1e-3
    np.testing.assert_array_equal(moved, [True, False, False, True, False, False, False])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_trains_under_mixed_bfloat16(architecture):
    model = _build(architecture, training=(("precision", "mixed_bfloat16"),))
    x, y = _batch()
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))
    assert all(v.dtype == tf.float32 for v in model(x).values())


def test_mixed_bfloat16_precision_computes_in_bfloat16_and_keeps_float32_outputs():
    """``training.precision`` sets the layers' dtype policy for this model only; variables
    and probabilities stay float32, training runs, and the SavedModel serves the same."""
    previous = keras.mixed_precision.global_policy().name
    model = _build("mmoe", training=(("precision", "mixed_bfloat16"),))
    assert keras.mixed_precision.global_policy().name == previous  # Restored after building.
    embedding = model.get_layer("field_embedding")
    assert embedding.compute_dtype == "bfloat16" and embedding.embeddings.dtype == tf.float32
    x, y = _batch()
    outputs = model(x)
    assert all(v.dtype == tf.float32 for v in outputs.values())
    before = model.evaluate(x, y, verbose=0)[0]
    model.fit(x, y, epochs=5, batch_size=64, verbose=0)
    assert np.isfinite(before) and model.evaluate(x, y, verbose=0)[0] < before
    with tempfile.TemporaryDirectory() as directory:
        model.save(directory, save_format="tf")
        loaded = keras.models.load_model(directory)
    assert loaded.get_layer("field_embedding").compute_dtype == "bfloat16"
    for task, expected in model(x).items():  # bfloat16 keeps 8 bits: ops fused differently
        np.testing.assert_allclose(loaded(x)[task].numpy(), expected.numpy(), atol=2e-3)
    assert _build("mmoe").get_layer("field_embedding").compute_dtype == "float32"
