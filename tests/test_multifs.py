"""MultiFS hierarchical gating search: gates, gradients, schedule, masks and the search itself."""

import math

import numpy as np
import pytest
import tensorflow as tf

from components.feature_selector import multifs
from components.feature_selector.multifs import (HierarchicalValueGate, choose_epoch,
                                                 resolve_params, search, straight_through_step,
                                                 temperature_schedule)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def built_gate(vocab_sizes=(4, 3), num_scenarios=2, **kwargs):
    gate = HierarchicalValueGate(vocab_sizes, num_scenarios, **kwargs)
    gate(tf.zeros([1, len(vocab_sizes)], tf.int64), tf.zeros([1], tf.int64))
    return gate


def test_straight_through_step_is_a_step_with_clipped_identity_gradient():
    x = tf.constant([-1.0, 0.0, 0.5, 2.0])
    upstream = tf.constant([5.0, 0.2, -0.3, -7.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = straight_through_step(x)
        loss = tf.reduce_sum(y * upstream)
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), [1.0, 0.2, -0.3, -1.0])


def test_continuous_gates_follow_eq6_and_scenario_gate_follows_eq5():
    scaling = 3.0
    gate = built_gate(scaling=scaling)
    # At initialisation (g_c = 0.5, tau = 1) every gate equals `scaling`.
    shared, scenarios = (g.numpy() for g in gate.continuous_gates())
    np.testing.assert_allclose(shared, scaling, rtol=1e-6)
    np.testing.assert_allclose(scenarios, scaling, rtol=1e-6)
    assert gate.threshold.numpy() == pytest.approx(0.95 * scaling)

    tau = 7.0
    w_shared = np.array([0.5, 0.01, -0.2, 0.3, 0.0, -0.5, 0.2], np.float32)
    w_scen = np.array([[0.1, -0.3, 0.4, -0.1, 0.2, 0.6, -0.4],
                       [-0.2, 0.3, 0.05, 0.5, -0.6, 0.1, 0.0]], np.float32)
    gate.temperature.assign(tau)
    gate.shared_logits.assign(w_shared)
    gate.scenario_logits.assign(w_scen)
    g_sh = scaling * sigmoid(tau * w_shared) / sigmoid(0.5)
    g_k = scaling * sigmoid(tau * w_scen) / sigmoid(0.5)
    shared, scenarios = (g.numpy() for g in gate.continuous_gates())
    np.testing.assert_allclose(shared, g_sh, rtol=1e-5)
    np.testing.assert_allclose(scenarios, g_k, rtol=1e-5)

    field_ids = np.array([[0, 0], [1, 2], [2, 1], [3, 0]])  # field 1's rows start at 4
    scenario_id = np.array([0, 1, 1, 0])
    gated, shared_path = (g.numpy() for g in gate(tf.constant(field_ids), tf.constant(scenario_id)))
    rows = field_ids + np.array([0, 4])
    q = (g_sh[rows] > 0.95 * scaling).astype(np.float32)
    expected = q * g_sh[rows] + (1 - q) * g_k[scenario_id[:, None], rows]
    np.testing.assert_allclose(gated, expected, rtol=1e-5)
    np.testing.assert_allclose(shared_path, g_sh[rows], rtol=1e-5)
    assert 0 < q.sum() < q.size  # both branches of eq. (5) are exercised


def test_gate_passes_gradients_to_masks_and_threshold():
    gate = built_gate(vocab_sizes=(5, 5), num_scenarios=2)
    field_ids = np.array([[0, 1], [2, 3], [4, 0], [0, 1]])
    scenario_id = np.array([0, 1, 0, 1])
    rows = field_ids + [0, 5]
    coefficients = np.random.default_rng(0).normal(size=(4, 2)).astype(np.float32) * 10

    def gradients():
        with tf.GradientTape() as tape:
            gated, _ = gate(tf.constant(field_ids), tf.constant(scenario_id))
            loss = tf.reduce_sum(gated * coefficients)
        grads = tape.gradient(loss, gate.trainable_weights)
        return [np.zeros(v.shape) if g is None else tf.convert_to_tensor(g).numpy()
                for v, g in zip(gate.trainable_weights, grads)]

    # Scenario gates below the shared ones; every value passes the shared hard gate
    # (g^sh = 1 > epsilon = 0.95), so G^k = g^sh and dG/dq = g^sh - g^k.
    gate.scenario_logits.assign(np.full([2, 10], 0.1, np.float32))
    g_sh, g_k = 1.0, sigmoid(0.1) / sigmoid(0.5)
    d_shared, d_scenario, d_threshold = gradients()
    through_q = np.clip(coefficients * (g_sh - g_k), -1.0, 1.0)  # straight-through, clipped
    dg_dw = sigmoid(0.5) * (1 - sigmoid(0.5)) / sigmoid(0.5)  # d g^sh / d g_c^sh at tau = 1
    expected = np.zeros(10)
    np.add.at(expected, rows.ravel(), ((coefficients + through_q) * dg_dw).ravel())
    np.testing.assert_allclose(d_shared, expected, rtol=1e-5)
    assert np.all(d_shared[np.unique(rows)] != 0)
    assert d_threshold == pytest.approx(-through_q.sum(), rel=1e-5) and d_threshold != 0
    assert np.abs(through_q).max() == 1.0  # the clipping was exercised
    np.testing.assert_array_equal(d_scenario, 0.0)  # (1 - q) = 0: no gradient yet

    # Shared values pushed below the threshold hand over to the scenario gates.
    gate.shared_logits.assign(np.full([10], -0.5, np.float32))
    d_shared, d_scenario, d_threshold = gradients()
    touched = {(s, r) for s, row in zip(scenario_id, rows) for r in row}
    assert np.count_nonzero(d_scenario) == len(touched)
    assert d_threshold == 0  # relu(g^sh - epsilon) is flat below the threshold (paper, sec. 2.2)


def test_penalties_are_sparsity_and_pairwise_exclusivity_on_sigmoid_of_the_logits():
    gate = built_gate(vocab_sizes=(3,), num_scenarios=3, sparsity_weight=0.5,
                      exclusivity_weight=2.0)
    w_shared = np.array([0.3, -1.0, 2.0], np.float32)
    w_scen = np.array([[0.1, 0.2, -0.3], [1.0, -2.0, 0.0], [0.5, 0.5, -0.5]], np.float32)
    gate.shared_logits.assign(w_shared)
    gate.scenario_logits.assign(w_scen)
    s_sh, s_k = sigmoid(w_shared), sigmoid(w_scen)
    sparsity = s_sh.sum() + s_k.sum()
    exclusivity = sum((s_k[p] * s_k[r]).sum() for p in range(3) for r in range(p + 1, 3))
    assert gate.penalty().numpy() == pytest.approx(0.5 * sparsity + 2.0 * exclusivity, rel=1e-5)
    gate(tf.constant([[1]]), tf.constant([2]))
    assert len(gate.losses) == 1
    assert gate.losses[0].numpy() == pytest.approx(0.5 * sparsity + 2.0 * exclusivity, rel=1e-5)


def test_gate_config_round_trips():
    gate = built_gate(scaling=3.0, threshold_init=0.9, sparsity_weight=1e-3,
                      exclusivity_weight=1e-4)
    clone = HierarchicalValueGate.from_config(gate.get_config())
    assert clone.get_config() == gate.get_config()


def test_temperature_schedule_reaches_the_final_temperature():
    np.testing.assert_allclose(temperature_schedule(3, 100.0), [1.0, 10.0, 100.0])
    schedule = temperature_schedule(5, 100.0)
    assert schedule[0] == 1.0 and schedule[-1] == pytest.approx(100.0)
    np.testing.assert_allclose(np.diff(np.log(schedule)), math.log(100.0) / 4)  # geometric
    assert temperature_schedule(1, 50.0) == [50.0]


@pytest.mark.parametrize("params, key", [
    ({"search_epoch": 3}, "search_epoch"),
    ({"search_epochs": 0}, "search_epochs"),
    ({"search_epochs": 2.5}, "search_epochs"),
    ({"final_temperature": 0.5}, "final_temperature"),
    ({"scaling": -1}, "scaling"),
    ({"sparsity_weight": float("nan")}, "sparsity_weight"),
    ({"learning_rate": 0}, "learning_rate"),
    ({"hidden_units": []}, "hidden_units"),
    ({"min_value_coverage": 1.5}, "min_value_coverage"),
    ({"max_steps_per_epoch": 0}, "max_steps_per_epoch"),
    ({"seed": "0"}, "seed"),
    ({"heldout_fraction": 1.0}, "heldout_fraction"),
    ({"heldout_fraction": -0.1}, "heldout_fraction"),
    ({"heldout_fraction": "10%"}, "heldout_fraction"),
    ({"heldout_tolerance": -1}, "heldout_tolerance"),
    ({"heldout_tolerance": None}, "heldout_tolerance"),
    ({"shadow_fields": -1}, "shadow_fields"),
    ({"shadow_fields": 1.5}, "shadow_fields"),
    ({"shadow_rounds": 0}, "shadow_rounds"),
])
def test_bad_params_raise_naming_the_key(params, key):
    with pytest.raises(ValueError, match=key):
        resolve_params(params)


def test_defaults_resolve_and_are_recorded():
    params = resolve_params({"search_epochs": 2})
    assert params == {**multifs.DEFAULT_PARAMS, "search_epochs": 2}


# A planted dataset: field 0's values drive both labels in scenario 0 only, field 1's in
# scenario 1 only, field 2 is noise. Every field has 6 ids, of which only 0..4 occur:
# id 5 (the OOV row) is never seen.
VOCAB = [6, 6, 6]
EFFECTS = np.array([2.0, -2.0, 2.0, -2.0, 2.0])


def planted_data(rows=6000, seed=0):
    rng = np.random.default_rng(seed)
    field_ids = rng.integers(0, 5, size=(rows, 3))
    scenario_id = rng.integers(0, 2, size=rows)
    driver = np.where(scenario_id == 0, field_ids[:, 0], field_ids[:, 1])
    logit = EFFECTS[driver] - 0.5
    labels = np.stack([rng.random(rows) < sigmoid(logit),
                       rng.random(rows) < sigmoid(logit - 1.0)], 1).astype(np.float32)
    return field_ids, scenario_id, labels


def batches_of(field_ids, scenario_id, labels, batch_size=500):
    def batches_fn():
        for i in range(0, len(field_ids), batch_size):
            rows = slice(i, i + batch_size)
            yield (tf.constant(field_ids[rows]), tf.constant(scenario_id[rows]),
                   tf.constant(labels[rows]))
    return batches_fn


# Strong sparsity pressure for a small, strongly planted dataset: frequent noise values
# only fall when the L1 pull beats their batch-to-batch gradient noise.
PLANTED_PARAMS = {"search_epochs": 4, "sparsity_weight": 1e-2, "seed": 3}


@pytest.fixture(scope="module")
def planted_result():
    return search(batches_of(*planted_data()), VOCAB, num_scenarios=2, num_tasks=2,
                  params=PLANTED_PARAMS)


def test_search_keeps_informative_values_per_scenario_and_drops_noise(planted_result):
    result = planted_result
    assert result.scores.shape == result.mask.shape == (2, 2, 3)
    assert np.all(result.mask[:, 0, :] == result.mask[:, 1, :])  # masks are per scenario
    assert np.all(result.mask[0, :, 0] == 1) and np.all(result.mask[1, :, 1] == 1)
    assert np.all(result.mask[:, :, 2] == 0)  # the noise field is dropped everywhere
    # Value level: the informative values are kept where they matter, most noise values go.
    assert np.all(result.value_masks[0][0, :5] == 1) and np.all(result.value_masks[1][1, :5] == 1)
    assert result.value_masks[2][:, :5].sum() <= 4
    assert result.scores[0, 0, 0] > result.scores[0, 0, 2]
    assert result.scores[1, 0, 1] > result.scores[1, 0, 2]
    assert result.params == {**multifs.DEFAULT_PARAMS, **PLANTED_PARAMS}


def test_value_masks_line_up_with_vocabulary_rows(planted_result):
    masks = planted_result.value_masks
    assert [m.shape for m in masks] == [(2, v) for v in VOCAB]
    assert all(set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    # Row i of field f is value id i: the never-seen OOV id 5 is dropped in every field,
    # while ids 0..4 of the driving field are kept.
    assert all(np.all(m[:, 5] == 0) for m in masks)


def test_search_diagnostics_record_the_schedule(planted_result):
    d = planted_result.diagnostics
    np.testing.assert_allclose(d["temperature"], temperature_schedule(4, 100.0))
    assert d["final_temperature"] == pytest.approx(100.0)
    assert len(d["threshold"]) == len(d["kept_value_fraction"]) == 4
    assert all(len(k) == 2 for k in d["kept_traffic_fraction"])
    assert d["steps"] == [12] * 4
    assert np.array(d["value_coverage"]).shape == (2, 3)


def test_search_is_deterministic_given_the_seed(planted_result):
    again = search(batches_of(*planted_data()), VOCAB, num_scenarios=2, num_tasks=2,
                   params=PLANTED_PARAMS)
    for first, second in zip(planted_result.value_masks, again.value_masks):
        np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(planted_result.mask, again.mask)
    np.testing.assert_allclose(planted_result.scores, again.scores, rtol=1e-6)
    assert planted_result.diagnostics["threshold"] == again.diagnostics["threshold"]


def test_unseen_scenario_rows_are_skipped_and_a_scenario_without_rows_keeps_everything():
    field_ids, scenario_id, labels = planted_data(rows=1000)
    scenario_id = np.where(np.arange(1000) % 10 == 0, 3, scenario_id)  # id 3 = unseen (S = 3)
    dataset = tf.data.Dataset.from_tensor_slices((field_ids, scenario_id, labels)).batch(500)
    result = search(lambda: dataset, VOCAB, num_scenarios=3, num_tasks=2,  # a tf.data pass
                    params={"search_epochs": 1, "max_steps_per_epoch": 1})
    assert result.diagnostics["steps"] == [1]
    assert result.diagnostics["scenario_rows"] == [
        float(np.sum(scenario_id[:500] == s)) for s in range(3)]
    assert np.all(np.isnan(result.scores[2])) and np.all(result.mask[2] == 1)
    assert all(np.all(m[2] == 1) for m in result.value_masks)
    assert not np.any(np.isnan(result.scores[:2]))


def test_bad_batches_raise_clear_errors():
    field_ids, scenario_id, labels = planted_data(rows=100)
    with pytest.raises(ValueError, match=r"field_ids must be \[batch, 4\]"):
        search(batches_of(field_ids, scenario_id, labels), VOCAB + [3], 2, 2,
               {"search_epochs": 1})
    with pytest.raises(ValueError, match="no rows of a known scenario"):
        search(batches_of(field_ids, np.full(100, 2), labels), VOCAB, 2, 2, {"search_epochs": 1})


def test_choose_epoch_takes_the_sparsest_epoch_within_one_standard_error_of_the_best():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 1.5, size=2000)  # per-example losses of the best epoch
    noise = rng.normal(0.0, 0.1, size=(5, 2000))
    noise -= noise.mean(1, keepdims=True)  # so each epoch's mean shift is exactly `shift`
    # Epoch 0: untrained; 1: best; 2 and 4: a hair worse (inside one paired standard
    # error, about 0.0022 here); 3: clearly worse (a relevant field pruned).
    shift = np.array([0.3, 0.0, 0.001, 0.2, 0.0005])
    losses = base + shift[:, None] + noise
    losses[1] = base
    kept = [[20, 9], [16, 9], [12, 9], [8, 9], [12, 9]]  # kept_fields[epoch][scenario]
    d = losses[2] - losses[1]
    assert 0 < d.mean() < d.std(ddof=1) / math.sqrt(2000)  # the construction holds
    # Scenario 0: epochs 2 and 4 tie on 12 fields; the lower loss (4) wins; 3 is sparser
    # but outside the tolerance.
    assert choose_epoch(losses, kept, 0, tolerance=1.0) == 4
    assert choose_epoch(losses, kept, 0, tolerance=0.0) == 1  # the best epoch itself
    assert choose_epoch(losses, kept, 0, tolerance=1e6) == 3  # everything is "within"
    # Scenario 1 keeps 9 fields at every epoch: among the ties the lowest loss wins.
    assert choose_epoch(losses, kept, 1, tolerance=1e6) == 1
    # Same loss and fields: the later epoch.
    assert choose_epoch(np.stack([base, base]), [[5], [5]], 0, tolerance=1.0) == 1


def test_row_holdout_holds_out_the_same_rows_in_any_order():
    rng = np.random.default_rng(1)
    field_ids = rng.integers(0, 50, size=(20000, 3))
    scenario_id = rng.integers(0, 2, size=20000)
    holdout = multifs._RowHoldout(0.2, num_fields=3, seed=0)
    held = holdout.held_out(field_ids, scenario_id)
    assert held.mean() == pytest.approx(0.2, abs=0.02)
    order = rng.permutation(20000)
    np.testing.assert_array_equal(holdout.held_out(field_ids[order], scenario_id[order]),
                                  held[order])
    # The decision is a function of the row: duplicated rows fall on the same side.
    twice = np.concatenate([field_ids[:100], field_ids[:100]])
    decided = holdout.held_out(twice, np.concatenate([scenario_id[:100]] * 2))
    np.testing.assert_array_equal(decided[:100], decided[100:])
    other_seed = multifs._RowHoldout(0.2, num_fields=3, seed=1).held_out(field_ids, scenario_id)
    assert 0.1 < np.mean(other_seed != held) < 0.5
    assert not multifs._RowHoldout(0.0, 3, 0).held_out(field_ids, scenario_id).any()


HELDOUT_PARAMS = {**PLANTED_PARAMS, "heldout_fraction": 0.2}


def test_heldout_rule_keeps_the_planted_fields_and_scores_unsearched_rows():
    field_ids, scenario_id, labels = planted_data()
    result = search(batches_of(field_ids, scenario_id, labels), VOCAB, num_scenarios=2,
                    num_tasks=2, params=HELDOUT_PARAMS)
    d = result.diagnostics
    assert np.all(result.mask[0, :, 0] == 1) and np.all(result.mask[1, :, 1] == 1)
    assert np.all(result.mask[:, :, 2] == 0)  # the noise field is dropped everywhere
    # The held-out rows are the rows the hash holds out (about 20% of each scenario);
    # every batch still has searched rows, so every epoch takes its 12 steps.
    held = multifs._RowHoldout(0.2, 3, HELDOUT_PARAMS["seed"]).held_out(field_ids, scenario_id)
    assert d["heldout_rows"] == [int(np.sum(held & (scenario_id == s))) for s in range(2)]
    assert 0.15 < held.mean() < 0.25
    assert d["steps"] == [12] * 4
    assert np.array(d["heldout_loss"]).shape == (4, 2)
    # The result is the chosen epoch's masks, per scenario.
    for s, epoch in enumerate(d["chosen_epoch"]):
        np.testing.assert_array_equal(result.mask[s, 0], d["field_mask"][epoch][s])
    assert result.params["heldout_fraction"] == 0.2
    again = search(batches_of(field_ids, scenario_id, labels), VOCAB, 2, 2, HELDOUT_PARAMS)
    assert again.diagnostics["chosen_epoch"] == d["chosen_epoch"]
    np.testing.assert_array_equal(again.mask, result.mask)
    np.testing.assert_allclose(again.diagnostics["heldout_loss"], d["heldout_loss"], rtol=1e-6)


def test_heldout_rule_does_not_take_an_over_pruned_last_epoch():
    # A pull strong enough to prune every field by the last epoch (tau fixed at 1), with
    # the paper's value-coverage cut (no shadow fields).
    params = {"search_epochs": 10, "sparsity_weight": 2e-2, "final_temperature": 1.0,
              "seed": 3, "heldout_fraction": 0.2, "shadow_fields": 0}
    result = search(batches_of(*planted_data()), VOCAB, 2, 2, params)
    d = result.diagnostics
    assert np.all(np.array(d["field_mask"][-1]) == 0)  # the paper's cut keeps nothing
    assert all(epoch < 9 for epoch in d["chosen_epoch"])
    assert np.all(result.mask[0, :, 0] == 1) and np.all(result.mask[1, :, 1] == 1)
    losses = np.array(d["heldout_loss"])
    for s, epoch in enumerate(d["chosen_epoch"]):
        assert losses[epoch, s] < losses[-1, s] - 0.1  # the pruned epochs lost on held-out rows


def test_shadow_fields_copy_each_fields_traffic_per_scenario_and_are_fixed_per_row():
    rng = np.random.default_rng(0)
    vocab = [4, 50, 5000]
    rows = 40000
    scenario_id = rng.integers(0, 2, rows)
    # Field 0's distribution differs by scenario; field 1 is Zipf-like; field 2 is id-like,
    # so that rows are nearly all distinct (shadows are fixed per row content, so rows
    # that repeat draw the same shadow values).
    field_ids = np.stack([np.where(scenario_id == 0, rng.choice(4, rows, p=[.7, .1, .1, .1]),
                                   rng.choice(4, rows, p=[.1, .1, .1, .7])),
                          np.minimum(rng.zipf(1.5, rows) - 1, 49),
                          rng.integers(0, 5000, rows)], 1)
    shadows = multifs._ShadowFields(vocab, num_scenarios=2, per_field=2, seed=0)
    assert shadows.search_vocab_sizes == vocab * 3
    shadows.fit([(field_ids[:20000], scenario_id[:20000]), (field_ids[20000:], scenario_id[20000:])])
    extended = shadows.extend(field_ids, scenario_id)
    assert extended.shape == (rows, 9)
    np.testing.assert_array_equal(extended[:, :3], field_ids)
    for j in range(2):
        for f, v in enumerate(vocab[:2]):
            shadow = extended[:, 3 * (1 + j) + f]
            assert shadow.min() >= 0 and shadow.max() < v
            for s in range(2):
                own = scenario_id == s
                real = np.bincount(field_ids[own, f], minlength=v) / own.sum()
                copy = np.bincount(shadow[own], minlength=v) / own.sum()
                assert np.abs(real - copy).max() < 0.02  # the same traffic per value
            # ... but not the same values row by row.
            assert np.mean(shadow == field_ids[:, f]) < 0.7
    # A function of the row's content: the same shadows in any order, for duplicates too.
    order = rng.permutation(rows)
    np.testing.assert_array_equal(shadows.extend(field_ids[order], scenario_id[order]),
                                  extended[order])
    # Two shadows of one field are different draws.
    assert np.mean(extended[:, 4] == extended[:, 7]) < 0.2


def test_field_decision_keeps_a_field_only_above_all_its_shadows_logits():
    # 2 fields of 2 values each, 2 shadows per field; one scenario with traffic, one without.
    search_vocab = [2, 2] * 3
    counts = np.array([[10, 30] * 6, [0, 0] * 6], float)
    logits = np.array([[0.9, 0.9, 0.5, 0.5,   0.2, 0.4, 0.5, 0.5,   0.3, 0.3, 0.6, 0.4],
                       [1.0] * 12])
    soft = np.ones_like(logits)  # saturated gates: they cannot tell the fields apart
    hard = (logits > 0.45).astype(float)
    d = multifs._field_decision(counts, hard, soft, logits, search_vocab, num_fields=2,
                                min_value_coverage=0.5)
    np.testing.assert_allclose(d["logit_scores"][0], [0.9, 0.5])
    np.testing.assert_allclose(d["shadow_logit_scores"][0], [[0.35, 0.5], [0.3, 0.45]])
    np.testing.assert_allclose(d["scores"][0], [1.0, 1.0])
    np.testing.assert_allclose(d["coverage"][0], [1.0, 1.0])
    assert d["kept"][0].tolist() == [True, False]  # field 1 only ties its first shadow
    assert np.all(np.isnan(d["logit_scores"][1])) and not d["kept"][1].any()
    # Without shadows, the value-coverage cut decides.
    d = multifs._field_decision(counts[:, :4], hard[:, :4], soft[:, :4], logits[:, :4],
                                search_vocab[:2], 2, 0.5)
    assert d["shadow_logit_scores"].shape == (2, 0, 2) and d["kept"][0].tolist() == [True, True]


def few_valued_noise_data(rows=6000, seed=0):
    """Field 0 (6 values) drives the labels in both scenarios; field 1 (3 values, every
    value frequent) is noise."""
    rng = np.random.default_rng(seed)
    field_ids = np.stack([rng.integers(0, 6, rows), rng.integers(0, 3, rows)], 1)
    scenario_id = rng.integers(0, 2, rows)
    logit = np.array([2.0, -2.0, 1.5, -1.5, 1.0, -1.0])[field_ids[:, 0]] - 0.5
    labels = np.stack([rng.random(rows) < sigmoid(logit),
                       rng.random(rows) < sigmoid(logit - 1.0)], 1).astype(np.float32)
    return field_ids, scenario_id, labels


def test_shadow_fields_drop_a_few_valued_noise_field_the_coverage_cut_keeps():
    # The failure the shadows fix: a frequent value's gate is not pulled shut, so the
    # value-coverage cut keeps every field whose few values are all frequent.
    data = few_valued_noise_data()
    params = {"search_epochs": 5, "seed": 0}
    by_coverage = search(batches_of(*data), [6, 3], 2, 2, {**params, "shadow_fields": 0})
    assert np.all(by_coverage.mask == 1)
    result = search(batches_of(*data), [6, 3], 2, 2,
                    {**params, "shadow_fields": 5, "shadow_rounds": 2})
    assert np.all(result.mask[:, :, 0] == 1) and np.all(result.mask[:, :, 1] == 0)
    d = result.diagnostics
    fields, shadows = d["round_logit_scores"], d["round_shadow_logit_scores"]
    assert fields.shape == (2, 2, 2) and shadows.shape == (2, 2, 5, 2)  # [R, S, (K,) F]
    assert len(d["round_seconds"]) == 2
    assert np.all(fields[:, :, 0].mean(0) > shadows[:, :, :, 0].max(2).mean(0))
    # Every value gate is open: the coverage, and the gates, tie the fields.
    np.testing.assert_allclose(d["value_coverage"], 1.0)
    # The value masks and scores are the search's without shadows (same seed), over the
    # fields' vocabularies only; the per-epoch history is that search's too.
    assert [m.shape for m in result.value_masks] == [(2, 6), (2, 3)]
    for with_shadows, without in zip(result.value_masks, by_coverage.value_masks):
        np.testing.assert_array_equal(with_shadows, without)
    np.testing.assert_allclose(result.scores, by_coverage.scores, rtol=1e-6)
    assert d["field_mask"] == by_coverage.diagnostics["field_mask"]


def test_shadow_decision_averages_fields_and_their_best_shadows_over_rounds():
    # [R=3, S=2, F=2] field logit scores; [R, S, K=2, F] shadows.
    fields = np.array([[[0.6, 0.2], [0.5, np.nan]],
                       [[0.3, 0.2], [0.5, np.nan]],   # round 1: field 0 loses in scenario 0
                       [[0.6, 0.2], [0.5, np.nan]]])
    shadows = np.zeros([3, 2, 2, 2])
    shadows[:, :, 0, :] = 0.4
    shadows[:, :, 1, :] = 0.1
    shadows[2, 1, 1, 0] = 0.9  # one round's best shadow beats field 0 in scenario 1 by far
    kept = multifs.shadow_decision(fields, shadows)
    # Scenario 0: field 0 averages 0.5 > 0.4 (kept although it lost round 1); field 1 never
    # beats 0.4. Scenario 1: field 0 averages 0.5 against (0.4 + 0.4 + 0.9) / 3; field 1
    # has no traffic (NaN).
    assert kept.tolist() == [[True, False], [False, False]]
    # One round is "beats every one of its shadows".
    np.testing.assert_array_equal(multifs.shadow_decision(fields[1:2], shadows[1:2]),
                                  [[False, False], [True, False]])


def test_shadow_rounds_of_different_selector_seeds_share_no_seed():
    seeds = [multifs.round_seed(seed, r) for seed in range(8) for r in range(5)]
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2 ** 31 for s in seeds)
    assert multifs.round_seed(3, 2) == multifs.round_seed(3, 2)
