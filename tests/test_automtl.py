"""AutoMTL: choice blocks and candidate operations, the search, derivation, the derived model.

The generic properties (shapes, routing, save/load, determinism, MirroredStrategy)
of ``automtl`` and ``automtl_derived`` are in test_models.py.
"""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from models import automtl_search, factory
from models.layers import automtl
from pipeline import specs

DATA = factory.DataInfo(
    field_names=("f0", "f1", "f2", "f3"), vocab_sizes=(7, 11, 5, 9),
    task_names=("click", "conversion"), scenario_names=("s0", "s1", "s2"),
    scenario_prior=(0.5, 0.3, 0.2), task_parents=(None, "click"), scenario_level_sizes=(3,))
TINY = {"interaction_ops": ["skip", "cross_1", "inner_product", "attention_2"],
        "expert_ops": ["skip", "mlp_8", "conv_3", "bit_gate"], "num_experts": 3,
        "num_expert_blocks": 2, "expert_dim": 8, "tower_units": [4], "num_chosen_experts": 2,
        "warmup_epochs": 1, "search_epochs": 2, "search_steps_per_epoch": 0,
        "arch_learning_rate": 0.05}
EVAL_F0 = 6  # Validation rows carry f0 == 6, training rows f0 < 6: tells the splits apart.


def _spec(**hparams) -> specs.ModelSpec:
    return specs.parse_model_spec(
        {"architecture": "automtl", "embedding_dim": 4, "hparams": {**TINY, **hparams},
         "training": {"batch_size": 32, "learning_rate": 0.01, "seed": 0}}, "<automtl test>")


def _dataset(n, seed, validation=False, weights=False) -> tf.data.Dataset:
    """Batches in models/data.py's format: (features, labels[, sample weights])."""
    rng = np.random.default_rng(seed)
    x = {f: rng.integers(0, v, n) for f, v in zip(DATA.field_names, DATA.vocab_sizes)}
    x["f0"] = np.full(n, EVAL_F0) if validation else rng.integers(0, EVAL_F0, n)
    x["scenario_id"] = rng.integers(0, 3, n)
    x["scenario_level_0_id"] = x["scenario_id"] % 2
    x["unused_feature"] = rng.integers(0, 3, n)
    click = (rng.random(n) < 0.4).astype(np.float32)
    y = {"click": click[:, None], "conversion": (click * (rng.random(n) < 0.5))[:, None]}
    if not weights:
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    w = {t: np.full((n, 1), 1.5, np.float32) for t in y}
    return tf.data.Dataset.from_tensor_slices((x, y, w)).batch(32)


def _values(variables):
    return [v.numpy().copy() for v in variables]


def _changed(before, variables):
    return any(not np.array_equal(b, v.numpy()) for b, v in zip(before, variables))


# --------------------------------------------------------------------------- layers


@pytest.mark.parametrize("num_parallel", [None, 3])
def test_choice_block_output_is_the_softmax_alpha_mixture(num_parallel):
    candidates = ["skip", "mlp_5", "bit_gate", "conv_3"]
    block = automtl.ChoiceBlock(candidates, num_parallel=num_parallel)
    shape = (4, 6) if num_parallel is None else (4, num_parallel, 6)
    x = tf.random.stateless_normal(shape, seed=(1, 2))
    block(x)
    alpha = np.random.default_rng(0).normal(size=block.alpha.shape).astype(np.float32)
    block.alpha.assign(alpha)
    weights = block.mixture_weights().numpy()
    expected_weights = np.exp(alpha) / np.exp(alpha).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(weights, expected_weights, rtol=1e-5)
    ops = [op(x).numpy() for op in block.candidate_layers]  # Each [B, (P,) d].
    if num_parallel is None:
        expected = sum(w * o for w, o in zip(weights, ops))
    else:
        expected = sum(weights[None, :, m, None] * o for m, o in enumerate(ops))
    np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert [v.name.split("/")[-1] for v in block.trainable_variables].count("alpha:0") == 1
    assert block.chosen() == (candidates[int(np.argmax(alpha))] if num_parallel is None
                              else [candidates[i] for i in np.argmax(alpha, axis=-1)])


@pytest.mark.parametrize("op", automtl.INTERACTION_OPS)
def test_interaction_operation_shapes(op):
    layer = automtl.make_operation(op)
    out = layer(tf.random.stateless_normal((2, 3, 4), seed=(0, 1)))
    assert out.shape == (2, 12)  # [batch, num_fields * embedding_dim]: the block's width.


@pytest.mark.parametrize("op", automtl.EXPERT_OPS)
def test_expert_operation_shapes_and_parallel_copies_are_independent(op):
    x = tf.random.stateless_normal((2, 3, 8), seed=(0, 1))
    parallel = automtl.make_operation(op, num_parallel=3)
    out = parallel(x)
    assert out.shape == (2, 3, 8)
    for p in range(3):  # Copy p is an ordinary expert operation with weights[p], on slice p.
        single = automtl.make_operation(op)
        assert single(x[:, p]).shape == (2, 8)
        single.set_weights([w[p] for w in parallel.get_weights()])
        np.testing.assert_allclose(single(x[:, p]).numpy(), out[:, p].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_operation_names_are_checked():
    assert automtl.check_operation("cross_3", "interaction") is None
    assert automtl.check_operation("conv_7", "expert") is None
    assert "unknown expert operation" in automtl.check_operation("attention_2", "expert")
    assert "unknown interaction operation" in automtl.check_operation("mlp", "interaction")
    with pytest.raises(ValueError, match="no parallel form"):
        automtl.make_operation("cross_2", num_parallel=2)


def test_jensen_shannon_loss_is_the_negative_divergence():
    same = tf.constant([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(automtl.jensen_shannon_loss(same).numpy(), 0.0, atol=1e-6)
    disjoint = tf.constant([[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(automtl.jensen_shannon_loss(disjoint).numpy(), -np.log(2.0),
                               rtol=1e-5)


# --------------------------------------------------------------------------- the search


def _searcher(**hparams):
    spec = _spec(**hparams)
    values = factory.resolve_hparams(spec)
    keras.utils.set_random_seed(0)
    model = factory.build_model(spec, DATA)
    return automtl_search.SupernetSearch(model, DATA, 0.01, values["arch_learning_rate"])


def test_each_step_updates_only_its_parameter_group():
    searcher = _searcher()
    train, val = _dataset(64, 0, weights=True), _dataset(32, 1, validation=True)
    searcher.trace(train, val)
    train_batch = searcher.split(next(iter(train)))
    val_batch = searcher.split(next(iter(val)))
    groups = {"weights": searcher.weights, "alpha": searcher.alpha, "beta": searcher.beta}
    expected = {"warmup_step": {"weights"}, "train_step": {"weights", "beta"},
                "alpha_step": {"alpha"}}
    for step, batch in (("warmup_step", train_batch), ("train_step", train_batch),
                        ("alpha_step", val_batch)):
        before = {name: _values(variables) for name, variables in groups.items()}
        loss = getattr(searcher, step)(*batch)
        assert np.isfinite(loss)
        changed = {name for name, variables in groups.items()
                   if _changed(before[name], variables)}
        assert changed == expected[step], step
    assert searcher._train.experimental_get_tracing_count() == 1  # Warm-up shares the trace.


def test_run_uses_validation_batches_for_alpha_only_and_decays_the_jsd_weight():
    searcher = _searcher()
    seen = {"warmup_step": [], "train_step": [], "alpha_step": []}
    for name in seen:
        step = getattr(searcher, name)

        def spy(features, labels, weights=None, _step=step, _name=name):
            seen[_name].append(set(features["f0"].numpy().tolist()))
            return _step(features, labels, weights)

        setattr(searcher, name, spy)
    # 96 training rows = 3 batches per epoch (search_steps_per_epoch 0: one pass), counted
    # as for the Trainer's TFRecord datasets, whose cardinality is unknown.
    train = _dataset(96, 0, weights=True).filter(lambda *batch: True)
    assert int(train.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    trajectory = searcher.run(train, _dataset(40, 1, validation=True),
                              warmup_epochs=1, search_epochs=2, jsd_weight=1.0)
    assert [len(seen[n]) for n in ("warmup_step", "train_step", "alpha_step")] == [3, 6, 6]
    assert all(ids == {EVAL_F0} for ids in seen["alpha_step"])
    assert all(EVAL_F0 not in ids for ids in seen["warmup_step"] + seen["train_step"])
    assert [e["phase"] for e in trajectory] == ["initial", "warmup", "search", "search"]
    assert [e["epoch"] for e in trajectory] == [0, 1, 2, 3]
    # Warm-up leaves alpha and beta exactly as initialised; the search moves both.
    assert trajectory[1]["alpha"] == trajectory[0]["alpha"]
    assert trajectory[1]["beta"] == trajectory[0]["beta"]
    assert trajectory[3]["alpha"] != trajectory[1]["alpha"]
    assert trajectory[3]["beta"] != trajectory[1]["beta"]
    # w_JSD: 1 through the warm-up, then linear over the 6 search steps down to 0.
    weights = [e["jsd_weight"] for e in trajectory]
    assert weights[:2] == [1.0, 1.0] and weights[-1] == 0.0
    np.testing.assert_allclose(weights[2], 1.0 - 2 / 5, rtol=1e-6)  # After step 3 of 6.
    assert float(searcher.backbone.jsd_weight_variable.numpy()) == 0.0
    assert set(trajectory[0]["alpha"]) == {"interaction"} | {
        f"expert_{i}/block_{j}" for i in range(3) for j in range(2)}
    assert set(trajectory[0]["beta"]) == {f"s{s}/{t}" for s in range(3)
                                          for t in ("click", "conversion")}


def test_derive_picks_argmax_operations_and_top_c_experts():
    searcher = _searcher(num_experts=4)
    backbone = searcher.backbone
    backbone.interaction.alpha.assign([0.0, 0.0, 3.0, 0.0])  # inner_product
    ops = backbone.expert_ops  # skip, mlp_8, conv_3, bit_gate
    picks = [[1, 2], [3, 3], [0, 1], [2, 0]]  # Per expert, its blocks' ops.
    for j, block in enumerate(backbone.experts.blocks):
        alpha = np.zeros((4, len(ops)), np.float32)
        for i in range(4):
            alpha[i, picks[i][j]] = 2.0
        block.alpha.assign(alpha)
    beta = np.zeros((6, 4), np.float32)
    tops = [(0, 1), (1, 0), (3, 1), (0, 3), (1, 3), (3, 0)]  # Expert 2 is nobody's pick.
    for k, (a, b) in enumerate(tops):
        beta[k, a], beta[k, b] = 2.0, 1.0
    backbone.beta.assign(beta)
    derivation = automtl_search.derive(backbone, num_chosen_experts=2)
    assert derivation["interaction_op"] == "inner_product"
    assert derivation["supernet_experts"] == [0, 1, 3]
    assert derivation["expert_ops"] == [[ops[p] for p in picks[i]] for i in (0, 1, 3)]
    assert derivation["supernet_selected_experts"] == [sorted(t) for t in tops]
    renumber = {0: 0, 1: 1, 3: 2}
    assert derivation["selected_experts"] == [sorted(renumber[i] for i in t) for t in tops]
    top_1 = automtl_search.derive(backbone, num_chosen_experts=1)
    assert top_1["supernet_selected_experts"] == [[a] for a, _ in tops]
    with pytest.raises(ValueError, match="num_chosen_experts"):
        automtl_search.derive(backbone, num_chosen_experts=5)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp("automtl_run"))
    spec = _spec(search_steps_per_epoch=2)
    derived = factory.prepare_spec(spec, DATA, _dataset(96, 0, weights=True),
                                   _dataset(64, 1, validation=True), log_dir)
    with open(os.path.join(log_dir, automtl_search.DERIVED_FILE)) as f:
        report = json.load(f)
    return spec, derived, report, log_dir


def test_prepare_returns_the_derived_spec_and_writes_the_json(searched):
    spec, derived, report, _ = searched
    assert derived.architecture == "automtl_derived" and derived.name == spec.name
    assert derived.training == spec.training and derived.embedding_dim == spec.embedding_dim
    hparams = derived.hparams_dict
    assert set(hparams) == set(automtl_search.DERIVED_HPARAMS)
    assert json.loads(json.dumps(hparams)) == report["hparams"]
    assert hparams["interaction_op"] in TINY["interaction_ops"]
    assert report["interaction"]["op"] == hparams["interaction_op"]
    weights = report["interaction"]["weights"]
    assert max(weights, key=weights.get) == hparams["interaction_op"]
    assert len(hparams["selected_experts"]) == 6  # 3 scenarios x 2 tasks.
    assert all(len(head) == 2 for head in hparams["selected_experts"])
    kept = [e["supernet_index"] for e in report["experts"]]
    for k, head in enumerate(report["heads"].values()):
        distribution = np.array(head["expert_distribution"])
        assert set(head["supernet_experts"]) == set(np.argsort(-distribution)[:2].tolist())
        assert [kept[i] for i in head["experts"]] == head["supernet_experts"]
    assert len(report["trajectory"]) == 1 + 1 + 2 and report["trajectory"][-1]["jsd_weight"] == 0
    assert report["search"]["search_steps_per_epoch"] == 2 and report["search"]["seconds"] > 0
    # A JSON round trip of the spec (how the Trainer records it) gives the same model.
    restored = specs.ModelSpec.from_json(derived.to_json())
    assert json.dumps(factory.resolve_hparams(restored)) == \
        json.dumps(factory.resolve_hparams(derived))


def test_the_derived_architecture_is_logged_to_tensorboard(searched):
    log_dir = searched[3]
    tags = set()
    for path in glob.glob(os.path.join(log_dir, automtl_search.SUMMARY_DIR, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value)
    assert {"automtl/derived_architecture", "automtl/jsd_weight", "automtl/val_loss"} <= tags


def test_the_derived_spec_builds_a_model_that_trains(searched):
    _, derived, report, _ = searched
    keras.utils.set_random_seed(0)
    model = factory.build_model(derived, DATA)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    assert isinstance(backbone, automtl.AutoMTLDerived)
    assert backbone.expert_ops == [e["ops"] for e in report["experts"]]
    assert not hasattr(backbone, "beta")  # No search parameters left.
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    history = model.fit(_dataset(96, 0, weights=True), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_derived_heads_mix_only_their_selected_experts():
    spec = specs.parse_model_spec(
        {"architecture": "automtl_derived", "embedding_dim": 4,
         "hparams": {"interaction_op": "skip", "expert_ops": [["mlp_8"], ["conv_3", "bit_gate"]],
                     "selected_experts": [[0], [0], [1], [1], [1], [1]], "expert_dim": 8}},
        "<derived>")
    keras.utils.set_random_seed(0)
    model = factory.build_model(spec, DATA)
    backbone = model.get_layer(factory.BACKBONE_LAYER)
    features, labels = next(iter(_dataset(32, 0)))
    features = {k: features[k] for k in factory.model_input_names(DATA)}
    scenario_0 = {k: v for k, v in features.items()}
    scenario_0["scenario_id"] = tf.zeros_like(features["scenario_id"])
    with tf.GradientTape() as tape:
        out = model(scenario_0)
        loss = sum(tf.reduce_mean(keras.losses.binary_crossentropy(labels[t], out[t]))
                   for t in labels)
    expert_0, expert_1 = backbone.experts
    grads = tape.gradient(loss, expert_0.trainable_variables + expert_1.trainable_variables,
                          unconnected_gradients="zero")
    n = len(expert_0.trainable_variables)
    assert any(np.any(g.numpy() != 0) for g in grads[:n])
    assert all(np.all(g.numpy() == 0) for g in grads[n:])  # Scenario 0 selects expert 0 only.


@pytest.mark.parametrize("architecture, hparams, message", [
    ("automtl", {"expert_ops": ["skip", "attention_2"]}, "unknown expert operation"),
    ("automtl", {"interaction_ops": ["skip", "skip"]}, "lists an operation twice"),
    ("automtl", {"num_chosen_experts": 4, "num_experts": 3}, "num_chosen_experts"),
    ("automtl", {"warmup_epochs": -1}, "warmup_epochs"),
    ("automtl_derived", {"interaction_op": "conv_3"}, "unknown interaction operation"),
    ("automtl_derived", {"expert_ops": [["mlp_8"]], "selected_experts": [[0], [1]]},
     r"selected_experts\[1\]"),
    ("automtl_derived", {"selected_experts": [[0], [0, 1]]}, "same number"),
])
def test_bad_hyper_parameters_are_refused(architecture, hparams, message):
    spec = specs.parse_model_spec({"architecture": architecture, "hparams": hparams}, "<bad>")
    with pytest.raises(specs.SpecError, match=message):
        factory.resolve_hparams(spec)


def test_shipped_spec_resolves():
    spec = specs.load_model_spec("automtl")
    hparams = factory.resolve_hparams(spec)
    assert spec.architecture == "automtl"
    assert hparams["num_chosen_experts"] <= hparams["num_experts"]
    assert set(hparams["interaction_ops"]) <= set(automtl.INTERACTION_OPS)
    assert set(hparams["expert_ops"]) <= set(automtl.EXPERT_OPS)
