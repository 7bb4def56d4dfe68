"""MultiSFS: single-shot saliency, the field-wise task-relation GNN, eq. (24), top-k."""

import numpy as np
import pytest
import tensorflow as tf

from components.feature_selector import multisfs, saliency
from conftest import planted_field_batches

VOCAB = [4, 4, 6, 30, 3]


def planted_batches(rows=3000, num_scenarios=2, batch=1000, seed=0, unknown_rows=0):
    """Field 0 drives task 0, field 1 drives task 1 (both scenarios); fields 2-4 are noise."""
    return planted_field_batches(VOCAB, rows, num_scenarios, batch, seed, unknown_rows,
                                 effects=(-2.0, -0.7, 0.7, 2.0))


FAST = {"num_inits": 2, "gnn_epochs": 3, "num_batches": 3}


def test_saliency_matches_finite_differences():
    batches = saliency.read_batches(planted_batches(rows=200, batch=100), 2, len(VOCAB), 2, "t")
    probe = saliency.SaliencyProbe(VOCAB, 2, 2, embedding_dim=4, hidden_units=8)
    probe.initialise(7)
    probe.calibrate(batches)
    scores = saliency.probe_saliency(probe, batches)
    eps = 1e-2
    finite_difference = np.zeros_like(scores)
    for index in np.ndindex(*scores.shape):
        bump = np.zeros(scores.shape, np.float32)
        bump[index] = eps
        probe.mask.assign(1.0 + bump)
        up = probe.pair_losses(batches)[index[:2]]
        probe.mask.assign(1.0 - bump)
        down = probe.pair_losses(batches)[index[:2]]
        finite_difference[index] = (up - down) / (2 * eps)
    probe.mask.assign(np.ones(scores.shape, np.float32))
    assert scores.max() > 1e-4
    np.testing.assert_allclose(scores, np.abs(finite_difference), rtol=0.05,
                               atol=0.01 * scores.max())


def test_saliency_averages_independent_inits():
    # One probe is re-initialised per init (one traced gradient); each init must equal a
    # fresh probe drawn from the same seed.
    batches = saliency.read_batches(planted_batches(rows=600, batch=300), 2, len(VOCAB), 2, "t")
    fresh = []
    for init in range(3):
        probe = saliency.SaliencyProbe(VOCAB, 2, 2, embedding_dim=4, hidden_units=8)
        probe.initialise(5 * 1000 + init)
        probe.calibrate(batches)
        fresh.append(saliency.probe_saliency(probe, batches))
    averaged = saliency.field_saliency(iter(batches), VOCAB, 2, 2, 4, 8, seed=5, num_inits=3)
    np.testing.assert_allclose(averaged, np.mean(fresh, axis=0), rtol=1e-5)
    assert not np.allclose(fresh[0], fresh[1])


def test_calibrated_probe_predicts_each_cells_label_rate():
    batches = saliency.read_batches(planted_batches(rows=400, batch=400), 2, len(VOCAB), 2, "t")
    probe = saliency.SaliencyProbe(VOCAB, 2, 2)
    probe.calibrate(batches)
    ids, scenario_id, labels = batches[0]
    for s in range(2):
        rate = labels[scenario_id == s].mean(0)
        np.testing.assert_allclose(tf.sigmoid(probe.base_logit[s]).numpy(), rate, rtol=1e-4)


def test_saliency_is_nan_for_an_unseen_scenario_and_skips_unknown_rows():
    scores = saliency.field_saliency(planted_batches(rows=300, batch=100)(), VOCAB,
                                     num_scenarios=3, num_tasks=2)
    assert np.all(np.isnan(scores[2])) and np.all(np.isfinite(scores[:2]))
    # Rows of the unseen-scenario id (here 2 of 2 scenarios) are skipped, not scored.
    with_unknown = planted_batches(rows=300, batch=100, unknown_rows=50)
    known_only = [(ids[s < 2], s[s < 2], y[s < 2]) for ids, s, y in
                  (tuple(np.asarray(a) for a in b) for b in with_unknown())]
    np.testing.assert_array_equal(
        saliency.field_saliency(with_unknown(), VOCAB, 2, 2, seed=5),
        saliency.field_saliency(iter(known_only), VOCAB, 2, 2, seed=5))


def test_fieldwise_sage_passes_messages_only_along_edges_and_within_a_field():
    layer = multisfs.FieldwiseSAGE(num_fields=3, dim=4, seed=1)
    rng = np.random.default_rng(0)
    e = tf.constant(rng.normal(size=(5, 3, 4)), tf.float32)
    z = tf.constant(rng.normal(size=(2, 3, 4)), tf.float32)
    adjacency = tf.constant([[1, 0], [1, 1], [0, 0], [0, 1], [0, 0]], tf.float32)
    e1, z1 = layer((e, z, adjacency))
    # A data node without edges gets only its own state: U_n [0, e_n] (eq. 18).
    own = tf.einsum("bnk,nkd->bnd", tf.concat([tf.zeros_like(e), e], -1), layer.u)
    np.testing.assert_allclose(e1.numpy()[[2, 4]], own.numpy()[[2, 4]], rtol=1e-5, atol=1e-6)
    # Changing field 1 of one data node changes field 1 only, and only its neighbours.
    e_changed = e.numpy().copy()
    e_changed[0, 1] += 5.0
    e2, z2 = layer((tf.constant(e_changed), z, adjacency))
    changed_e = np.abs(e2.numpy() - e1.numpy()).max(-1) > 1e-6  # [B, N]
    changed_z = np.abs(z2.numpy() - z1.numpy()).max(-1) > 1e-6  # [P, N]
    assert changed_e.tolist() == [[False, True, False]] + [[False] * 3] * 4
    assert changed_z.tolist() == [[False, True, False], [False, False, False]]
    # Separate weights per direction: W^t (task -> data) and W^d (data -> task).
    assert layer.w_task.shape == layer.w_data.shape == (3, 4, 4)
    assert layer.u.shape == (3, 8, 4)
    assert multisfs.FieldwiseSAGE.from_config(layer.get_config()).get_config() == layer.get_config()


def test_split_labels_holds_out_a_test_label_per_row_and_keeps_aux_edges():
    rng = np.random.default_rng(0)
    scenario_id = np.array([0, 1, 1, 0])
    labels = np.array([[1, 1], [1, 0], [0, 1], [1, 1]], np.float32)
    adjacency, targets, weights = multisfs.split_labels(scenario_id, labels, 2, 0.5, rng)
    own = np.zeros((4, 4), bool)
    for row, s in enumerate(scenario_id):
        own[row, 2 * s:2 * s + 2] = True
    assert np.all(weights[~own] == 0) and np.all(adjacency[~own] == 0)  # Own scenario only.
    assert np.all(weights.sum(1) >= 1)  # At least one test label per row.
    assert np.all(adjacency * weights == 0)  # Test labels are never edges.
    np.testing.assert_array_equal(targets[own].reshape(4, 2), labels)
    # Every positive auxiliary label is an edge.
    np.testing.assert_array_equal(adjacency[own], ((targets * (1 - weights))[own] > 0.5))


def test_cosine_relations_on_a_hand_made_example():
    z = np.zeros((3, 2, 2))  # [P, N, D]
    z[:, 0] = [[1, 0], [0, 3], [-2, 0]]
    z[:, 1] = [[1, 1], [2, 2], [1, 0]]
    r = multisfs.cosine_relations(z)
    np.testing.assert_allclose(r[0], [[1, 0, -1], [0, 1, 0], [-1, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(r[1], [[1, 1, 0.5 ** 0.5], [1, 1, 0.5 ** 0.5],
                                      [0.5 ** 0.5, 0.5 ** 0.5, 1]], atol=1e-12)


def test_learned_relations_are_symmetric_with_ones_on_the_diagonal():
    batches = saliency.read_batches(planted_batches(rows=600, batch=300), 2, len(VOCAB), 2, "t")
    learned = multisfs.learn_relations(batches, VOCAB, 2, 2, epochs=4, seed=1)
    r = learned["relations"]
    assert r.shape == (len(VOCAB), 4, 4)
    np.testing.assert_array_equal(r, np.transpose(r, (0, 2, 1)))
    np.testing.assert_array_equal(r[:, np.arange(4), np.arange(4)], 1.0)
    assert np.all(np.abs(r) <= 1.0)
    losses = learned["loss_per_epoch"]
    assert len(losses) == 4 and losses[-1] < losses[0]  # The GNN learns (eq. 22).


def test_merge_scores_follows_eq_24():
    scores = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]])  # [P, N]; pair 2 unseen.
    relations = np.array([np.eye(3), np.eye(3)])
    relations[0, 0, 1] = relations[0, 1, 0] = 0.5
    relations[1, 0, 1] = relations[1, 1, 0] = -0.25
    relations[:, 0, 2] = relations[:, 2, 0] = 0.9  # To the unseen pair: ignored.
    merged = multisfs.merge_scores(scores, relations)
    # s'_pn = sum_q r_n^{p,q} s_qn
    expected = [[1 + 0.5 * 3, 2 - 0.25 * 4], [3 + 0.5 * 1, 4 - 0.25 * 2], [np.nan, np.nan]]
    np.testing.assert_allclose(merged, expected)


def test_mean_merge_is_the_relation_weighted_mean_of_each_pairs_shares():
    scores = np.array([[1.0, 3.0], [30.0, 10.0], [np.nan, np.nan]])  # [P, N]; pair 2 unseen.
    relations = np.array([np.eye(3), np.eye(3)])
    relations[0, 0, 1] = relations[0, 1, 0] = 0.5
    relations[1, 0, 1] = relations[1, 1, 0] = -0.25  # Opposite directions: no weight.
    relations[:, 0, 2] = relations[:, 2, 0] = 0.9  # To the unseen pair: ignored.
    merged = multisfs.merge_scores(scores, relations, "mean")
    shares = np.array([[0.25, 0.75], [0.75, 0.25]])  # Each pair's scores over its total.
    expected = [[(0.25 + 0.5 * 0.75) / 1.5, 0.75], [(0.75 + 0.5 * 0.25) / 1.5, 0.25],
                [np.nan, np.nan]]
    np.testing.assert_allclose(merged, expected)
    # Without relations each pair keeps its own ranking (its shares).
    np.testing.assert_allclose(multisfs.merge_scores(scores[:2], np.array([np.eye(2)] * 2),
                                                     "mean"), shares)
    # Pairs that agree on a field do not promote it: fully related pairs all get the mean share.
    agree = multisfs.merge_scores(scores[:2], np.ones([2, 2, 2]), "mean")
    np.testing.assert_allclose(agree, [[0.5, 0.5], [0.5, 0.5]])
    # A pair's scale does not matter, only its ranking.
    np.testing.assert_allclose(
        multisfs.merge_scores(scores * [[1.0], [1e-3], [1.0]], relations, "mean"), merged)
    with pytest.raises(ValueError, match="merge must be one of"):
        multisfs.merge_scores(scores, relations, "max")


def test_keep_counts_round_half_up_and_validate_k():
    assert saliency.keep_counts(5, 2, 0.5).tolist() == [3, 3]  # round(2.5) = 3
    assert saliency.keep_counts(20, 2, 0.2).tolist() == [16, 16]
    assert saliency.keep_counts(10, 2, 0.99).tolist() == [1, 1]  # At least one field.
    assert saliency.keep_counts(10, 2, 0.2, k=[3, 7]).tolist() == [3, 7]
    with pytest.raises(ValueError, match="'k'"):
        saliency.keep_counts(10, 2, 0.2, k=11)
    with pytest.raises(ValueError, match="'k'"):
        saliency.keep_counts(10, 2, 0.2, k=[3, 4, 5])


def test_top_k_keeps_exactly_k_with_deterministic_ties():
    scores = np.array([[[0.5, 0.9, 0.5, 0.1, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0]],
                       [[np.nan] * 5, [0.0, 0.2, 0.1, 0.3, 0.4]]])
    mask = saliency.top_k_mask(scores, [3, 2])
    assert mask.tolist() == [[[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]],
                             [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]]
    np.testing.assert_array_equal(saliency.top_k_mask(scores, [3, 2]), mask)
    assert saliency.top_k_mask(scores, 4)[0].sum(-1).tolist() == [4, 4]


def test_shared_mask_is_the_union_or_intersection_per_scenario():
    mask = np.array([[[1, 1, 0, 0], [0, 1, 1, 0]]], np.float32)
    assert saliency.shared_mask(mask, "union").tolist() == [[1, 1, 1, 0]]
    assert saliency.shared_mask(mask, "intersection").tolist() == [[0, 1, 0, 0]]


def test_saliency_ranks_the_planted_fields_first():
    result = multisfs.select(planted_batches(), VOCAB, 2, 2,
                             {"gnn": False, "k": 1, "num_inits": 4})
    assert result.mask.argmax(-1).tolist() == [[0, 1], [0, 1]]
    assert result.diagnostics["shared_mask"].tolist() == [[1, 1, 0, 0, 0]] * 2
    assert result.diagnostics["gnn_seconds"] == 0.0 and "relations" not in result.diagnostics


def test_with_the_gnn_the_selection_is_top_k_of_the_merged_scores():
    result = multisfs.select(planted_batches(), VOCAB, 2, 2,
                             {"k": 2, "num_inits": 2, "gnn_epochs": 5, "shared": "intersection"})
    d = result.diagnostics
    np.testing.assert_array_equal(result.mask, saliency.top_k_mask(result.scores, 2))
    np.testing.assert_array_equal(d["shared_mask"], result.mask.min(axis=1))
    assert d["relations"].shape == (len(VOCAB), 4, 4)
    assert d["raw_scores"].shape == result.scores.shape == (2, 2, len(VOCAB))
    # The scores are eq. (24) applied to the raw saliency.
    np.testing.assert_allclose(
        result.scores.reshape(4, -1),
        multisfs.merge_scores(d["raw_scores"].reshape(4, -1), d["relations"], "mean"))
    assert d["saliency_seconds"] > 0 and d["gnn_seconds"] > 0
    assert d["rows_read"] == 3000
    assert result.params["k"] == [2, 2] and result.params["shared"] == "intersection"
    summed = multisfs.select(planted_batches(), VOCAB, 2, 2,
                             {"k": 2, "num_inits": 2, "gnn_epochs": 5, "merge": "sum"})
    np.testing.assert_allclose(
        summed.scores.reshape(4, -1),
        multisfs.merge_scores(summed.diagnostics["raw_scores"].reshape(4, -1),
                              summed.diagnostics["relations"], "sum"))


def test_selection_is_deterministic_given_a_seed():
    first = multisfs.select(planted_batches(), VOCAB, 2, 2, {**FAST, "seed": 3})
    second = multisfs.select(planted_batches(), VOCAB, 2, 2, {**FAST, "seed": 3})
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.diagnostics["relations"], second.diagnostics["relations"])
    np.testing.assert_array_equal(first.mask, second.mask)
    other = multisfs.select(planted_batches(), VOCAB, 2, 2, {**FAST, "seed": 4})
    assert not np.array_equal(first.diagnostics["raw_scores"], other.diagnostics["raw_scores"])


def test_selection_leaves_the_global_seed_alone():
    # A caller's seeded shuffle (the executor's tf.data pass) keeps its order across calls.
    def order():
        return [int(x) for x in tf.data.Dataset.range(50).shuffle(50, seed=3)]
    before = order()
    multisfs.select(planted_batches(rows=300, batch=100), VOCAB, 2, 2, {**FAST, "seed": 9})
    assert order() == before


def test_num_batches_limits_the_rows_read():
    result = multisfs.select(planted_batches(rows=3000, batch=500), VOCAB, 2, 2,
                             {**FAST, "num_batches": 2, "gnn": False})
    assert result.diagnostics["rows_read"] == 1000


def test_by_default_five_batches_per_scenario_are_read():
    # The paper's five batches per task; each (scenario, task) pair sees its scenario's rows.
    result = multisfs.select(planted_batches(rows=3000, batch=100), VOCAB, 2, 2,
                             {"num_inits": 1, "gnn": False})
    assert result.diagnostics["rows_read"] == 1000 and result.params["num_batches"] == 10


@pytest.mark.parametrize("params, key", [
    ({"compress_ratio": 1.0}, "compress_ratio"),
    ({"compress_ratio": "0.5"}, "compress_ratio"),
    ({"num_batches": 0}, "num_batches"),
    ({"gnn": "yes"}, "gnn"),
    ({"shared": "both"}, "shared"),
    ({"k": 6}, "k"),
    ({"k": [2]}, "k"),
    ({"seed": -1}, "seed"),
    ({"gnn_learning_rate": 0}, "gnn_learning_rate"),
    ({"num_batch": 5}, "num_batch"),
    ({"merge": "max"}, "merge"),
])
def test_bad_params_raise_naming_the_key(params, key):
    with pytest.raises(ValueError, match=f"multisfs.*'{key}'"):
        multisfs.select(planted_batches(rows=10, batch=10), VOCAB, 2, 2, params)


def test_no_known_scenario_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="multisfs: no rows of a known scenario"):
        multisfs.select(planted_batches(rows=100, batch=50, unknown_rows=100), VOCAB, 2, 2)


def test_a_batch_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"multisfs: batch 1 has field_ids \(100, 5\)"):
        multisfs.select(planted_batches(rows=100, batch=100), VOCAB[:4], 2, 2)
