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
    ({"field_rule": "shadows"}, "field_rule"),
    ({"permutation_folds": 1}, "permutation_folds"),
    ({"permutation_repeats": 0}, "permutation_repeats"),
    ({"permutation_z": -1.0}, "permutation_z"),
    ({"permutation_z": float("nan")}, "permutation_z"),
    ({"permutation_events_per_field": -1}, "permutation_events_per_field"),
    ({"permutation_max_rows": 100.5}, "permutation_max_rows"),
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
    holdout = multifs._RowHoldout(0.0, 0.2, num_fields=3, seed=0)
    held = holdout.held_out(field_ids, scenario_id)
    assert held.mean() == pytest.approx(0.2, abs=0.02)
    order = rng.permutation(20000)
    np.testing.assert_array_equal(holdout.held_out(field_ids[order], scenario_id[order]),
                                  held[order])
    # The decision is a function of the row: duplicated rows fall on the same side.
    twice = np.concatenate([field_ids[:100], field_ids[:100]])
    decided = holdout.held_out(twice, np.concatenate([scenario_id[:100]] * 2))
    np.testing.assert_array_equal(decided[:100], decided[100:])
    other_seed = multifs._RowHoldout(0.0, 0.2, num_fields=3, seed=1).held_out(field_ids,
                                                                             scenario_id)
    assert 0.1 < np.mean(other_seed != held) < 0.5
    assert not multifs._RowHoldout(0.0, 0.0, 3, 0).held_out(field_ids, scenario_id).any()
    # Folds: the intervals of one seed hold out disjoint rows, every row in exactly one.
    folds = np.stack([multifs._RowHoldout(k / 3, (k + 1) / 3, 3, 0).held_out(field_ids,
                                                                           scenario_id)
                      for k in range(3)])
    np.testing.assert_array_equal(folds.sum(0), 1)
    assert np.all(np.abs(folds.mean(1) - 1 / 3) < 0.02)


HELDOUT_PARAMS = {**PLANTED_PARAMS, "heldout_fraction": 0.2, "field_rule": "value_coverage"}


def test_heldout_rule_keeps_the_planted_fields_and_scores_unsearched_rows():
    field_ids, scenario_id, labels = planted_data()
    result = search(batches_of(field_ids, scenario_id, labels), VOCAB, num_scenarios=2,
                    num_tasks=2, params=HELDOUT_PARAMS)
    d = result.diagnostics
    assert np.all(result.mask[0, :, 0] == 1) and np.all(result.mask[1, :, 1] == 1)
    assert np.all(result.mask[:, :, 2] == 0)  # the noise field is dropped everywhere
    # The held-out rows are the rows the hash holds out (about 20% of each scenario);
    # every batch still has searched rows, so every epoch takes its 12 steps.
    held = multifs._RowHoldout(0.0, 0.2, 3, HELDOUT_PARAMS["seed"]).held_out(field_ids,
                                                                            scenario_id)
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
    # the paper's value-coverage cut.
    params = {"search_epochs": 10, "sparsity_weight": 2e-2, "final_temperature": 1.0,
              "seed": 3, "heldout_fraction": 0.2, "field_rule": "value_coverage"}
    result = search(batches_of(*planted_data()), VOCAB, 2, 2, params)
    d = result.diagnostics
    assert np.all(np.array(d["field_mask"][-1]) == 0)  # the paper's cut keeps nothing
    assert all(epoch < 9 for epoch in d["chosen_epoch"])
    assert np.all(result.mask[0, :, 0] == 1) and np.all(result.mask[1, :, 1] == 1)
    losses = np.array(d["heldout_loss"])
    for s, epoch in enumerate(d["chosen_epoch"]):
        assert losses[epoch, s] < losses[-1, s] - 0.1  # the pruned epochs lost on held-out rows


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


def test_permutation_rule_drops_a_few_valued_noise_field_the_coverage_cut_keeps():
    # A frequent value's gate is not pulled shut, so the value-coverage cut keeps every
    # field whose few values are all frequent; permuting such a noise field costs nothing.
    data = few_valued_noise_data()
    params = {"search_epochs": 5, "seed": 0}
    by_coverage = search(batches_of(*data), [6, 3], 2, 2,
                         {**params, "field_rule": "value_coverage"})
    assert np.all(by_coverage.mask == 1)
    result = search(batches_of(*data), [6, 3], 2, 2, params)
    assert result.params["field_rule"] == "permutation"
    assert np.all(result.mask[:, :, 0] == 1) and np.all(result.mask[:, :, 1] == 0)
    d = result.diagnostics
    z = np.array(d["permutation_z"])
    assert z.shape == (2, 2, 2) and np.all(z[:, :, 0] > 5) and np.all(z[:, :, 1] < 1.0)
    # Every row is held out by exactly one fold: both folds together score all 6000 rows.
    assert sum(d["permutation_rows"]) == 6000 and len(d["fold_seconds"]) == 2
    assert not np.any(d["permutation_pooled"])
    # The scores are the held-out loss increases behind the decision.
    np.testing.assert_allclose(result.scores, d["permutation_loss_increase"])
    assert np.all(result.scores[:, :, 0] > 0.05)
    # The value masks, the gate scores and the history are the value search's under
    # either rule.
    for permutation, coverage in zip(result.value_masks, by_coverage.value_masks):
        np.testing.assert_array_equal(permutation, coverage)
    np.testing.assert_allclose(d["gate_scores"], by_coverage.diagnostics["gate_scores"],
                               rtol=1e-6)
    assert d["field_mask"] == by_coverage.diagnostics["field_mask"]
    np.testing.assert_allclose(by_coverage.scores[:, 0], d["gate_scores"], rtol=1e-6)


def path_specific_data(rows=8000, seed=0):
    """Field 0 drives task 0 in both scenarios, field 1 task 1 in both, field 2 both tasks
    in scenario 1 only; field 3 is noise. Five values each."""
    rng = np.random.default_rng(seed)
    field_ids = rng.integers(0, 5, size=(rows, 4))
    scenario_id = rng.integers(0, 2, rows)
    effect = np.array([1.5, -1.5, 1.0, -1.0, 0.0])
    third = np.where(scenario_id == 1, effect[field_ids[:, 2]], 0.0)
    logits = np.stack([effect[field_ids[:, 0]] + third, effect[field_ids[:, 1]] + third], 1)
    labels = (rng.random((rows, 2)) < sigmoid(logits - 0.5)).astype(np.float32)
    return field_ids, scenario_id, labels


# Strong planted effects: a strict threshold keeps this about routing, not about the
# chance (16% per test at the default z = 1) that a noise field passes.
PATH_PARAMS = {"search_epochs": 3, "seed": 1, "permutation_z": 3.0}


def test_permutation_rule_keeps_each_field_on_the_paths_it_drives_only():
    result = search(batches_of(*path_specific_data()), [5] * 4, num_scenarios=2, num_tasks=2,
                    params=PATH_PARAMS)
    expected = np.array([[[1, 0, 0, 0], [0, 1, 0, 0]],    # scenario 0: task 0, task 1
                         [[1, 0, 1, 0], [0, 1, 1, 0]]])   # scenario 1
    np.testing.assert_array_equal(result.mask, expected)
    # The gates alone cannot say this: the value-coverage rule is one decision per scenario.
    by_coverage = search(batches_of(*path_specific_data()), [5] * 4, 2, 2,
                         {**PATH_PARAMS, "field_rule": "value_coverage"})
    assert np.all(by_coverage.mask[:, 0] == by_coverage.mask[:, 1])
    # Deterministic given the seed, and the held-out rows are capped.
    again = search(batches_of(*path_specific_data()), [5] * 4, 2, 2, PATH_PARAMS)
    np.testing.assert_array_equal(again.mask, result.mask)
    np.testing.assert_allclose(again.scores, result.scores, rtol=1e-6)
    capped = search(batches_of(*path_specific_data()), [5] * 4, 2, 2,
                    {**PATH_PARAMS, "permutation_max_rows": 3000})
    assert sum(capped.diagnostics["permutation_rows"]) == 3000


def test_permutation_decision_tests_each_path_and_pools_paths_with_few_events():
    # [S=3, T=1, F=2] sums over rows of the per-row loss increase and of its square.
    rows = np.array([400.0, 400.0, 500.0])
    positives = np.array([[200.0], [380.0], [10.0]])  # rarer label: 200, 20, 10 examples
    mean = np.array([[[0.02, 0.001]], [[0.0, 0.05]], [[0.5, -0.1]]])
    variance = np.array([[[0.01, 0.01]], [[0.01, 0.01]], [[1.0, 1.0]]])
    n = rows[:, None, None]
    sums, squares = mean * n, (variance * (n - 1) / n + mean ** 2) * n
    d = multifs.permutation_decision(sums, squares, rows, positives, z=1.645,
                                     events_per_field=10)
    np.testing.assert_allclose(d["z"], mean / np.sqrt(variance / n))
    np.testing.assert_allclose(d["loss_increase"], mean)
    # Scenario 0 (z = 4 and 0.2) and scenario 1 (20 events, just enough for 2 fields: z = 0
    # and 10) decide alone. Scenario 2 has many rows but 10 events < 10 per field: it takes
    # the decision on all 1300 rows (field 0: mean 0.2 over a large variance).
    total, total_squares = sums.sum(0), squares.sum(0)
    pooled_mean = total / 1300
    pooled_z = pooled_mean / np.sqrt((total_squares - 1300 * pooled_mean ** 2) / 1299 / 1300)
    assert d["pooled"].tolist() == [[False], [False], [True]]
    assert d["kept"][:2].tolist() == [[[True, False]], [[False, True]]]
    np.testing.assert_array_equal(d["kept"][2], pooled_z > 1.645)
    assert d["kept"][2].tolist() == [[True, False]]
    np.testing.assert_allclose(d["scores"][2], pooled_mean)
    np.testing.assert_allclose(d["scores"][:2], mean[:2])
    # Too few events in all: every field is kept. A scenario without rows has NaN figures.
    few = multifs.permutation_decision(sums, squares, rows, np.array([[1.0], [2.0], [3.0]]),
                                       1.645, events_per_field=10)
    assert np.all(few["kept"]) and np.all(few["pooled"])
    empty = multifs.permutation_decision(np.zeros([2, 1, 2]), np.zeros([2, 1, 2]),
                                         np.array([400.0, 0.0]), np.array([[200.0], [0.0]]),
                                         1.645, events_per_field=10)
    assert np.all(np.isnan(empty["z"][1])) and empty["pooled"].tolist() == [[False], [True]]
    assert not empty["kept"].any()  # no increase at all: nothing is kept
