"""Baseline field selectors (scikit-learn): mutual information, chi-squared, L1 logistic."""

import numpy as np
import pytest
from scipy import stats
from sklearn.feature_selection import mutual_info_classif

from components.feature_selector import baselines
from conftest import planted_field_batches

VOCAB = [4, 4, 6, 200, 3]


def planted(rows=3000, num_scenarios=2, batch=1000, seed=0, unknown_rows=0, silent_cell=None):
    """Field 0 drives task 0, field 1 drives task 1; field 3 is a 200-value noise field."""
    return planted_field_batches(VOCAB, rows, num_scenarios, batch, seed, unknown_rows,
                                 silent_cell=silent_cell)


@pytest.mark.parametrize("method", sorted(baselines.REGISTRY))
def test_each_method_ranks_the_planted_fields_first(method):
    result = baselines.REGISTRY[method](planted(), VOCAB, 2, 2, {"k": 1})
    assert result.mask.argmax(-1).tolist() == [[0, 1], [0, 1]]
    assert result.mask.sum(-1).tolist() == [[1, 1], [1, 1]]
    assert result.diagnostics["shared_mask"].tolist() == [[1, 1, 0, 0, 0]] * 2
    # The 200-value noise field never outranks the planted field of a cell.
    assert np.all(result.scores[:, 0, 0] > result.scores[:, 0, 3])
    assert np.all(result.scores[:, 1, 1] > result.scores[:, 1, 3])


@pytest.mark.parametrize("method", sorted(baselines.REGISTRY))
def test_each_method_is_deterministic(method):
    first = baselines.REGISTRY[method](planted(), VOCAB, 2, 2, {"compress_ratio": 0.5})
    second = baselines.REGISTRY[method](planted(), VOCAB, 2, 2, {"compress_ratio": 0.5})
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.mask, second.mask)
    assert first.mask.sum(-1).tolist() == [[3, 3], [3, 3]]  # round(0.5 * 5) = 3
    assert first.params["k"] == [3, 3] and first.params["max_rows"] == 50_000


def test_chi2_score_is_the_contingency_table_test():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 400)
    y = (rng.random(400) < 0.2 + 0.1 * x).astype(np.int64)
    table = np.array([[np.sum((x == v) & (y == c)) for c in (0, 1)] for v in range(5)])
    statistic, p, dof, _ = stats.chi2_contingency(table, correction=False)
    score = baselines.chi2_scores(x[:, None], y, {})
    assert dof == 4
    np.testing.assert_allclose(score, [-np.log(p)], rtol=1e-9)


def test_mi_is_corrected_for_the_number_of_values():
    rng = np.random.default_rng(2)
    rows = 2000
    noise = rng.integers(0, 200, rows)  # Many values, no signal.
    weak = rng.integers(0, 2, rows)  # Two values, a weak signal: I(X; Y) ~ 0.02 nats.
    y = (rng.random(rows) < 0.35 + 0.2 * weak).astype(np.int64)
    ids = np.stack([noise, weak], 1)
    scores = baselines.mi_scores(ids, y, {"seed": 0})
    assert scores[1] > scores[0]
    assert abs(scores[0]) < 0.01  # The plug-in bias, (200 - 1) / 2n ~ 0.05 nats, is gone.
    plug_in = mutual_info_classif(ids, y, discrete_features=True)
    assert plug_in[0] > plug_in[1]  # Uncorrected, the noise field would win.


def test_lasso_zeroes_a_field_without_signal_under_strong_regularisation():
    result = baselines.select_lasso(planted(), VOCAB, 2, 2, {"C": 0.01, "k": 2})
    assert np.all(result.scores[:, :, 4] == 0.0)  # Three-value noise field.
    assert np.all(result.scores[:, 0, 0] > 0) and np.all(result.scores[:, 1, 1] > 0)


def test_max_rows_caps_the_rows_read_and_unknown_rows_are_skipped():
    result = baselines.select_mi(planted(unknown_rows=500), VOCAB, 2, 2, {"max_rows": 1200})
    d = result.diagnostics
    assert d["rows_read"] == 1200 and sum(d["rows_per_scenario"]) == 1200
    assert d["seconds"] > 0


def test_a_cell_without_signal_keeps_every_field():
    result = baselines.select_chi2(planted(silent_cell=(1, 0)), VOCAB, 2, 2, {"k": 2})
    assert result.diagnostics["cells_without_signal"] == [[1, 0]]
    assert np.all(np.isnan(result.scores[1, 0])) and result.mask[1, 0].tolist() == [1] * 5
    assert result.mask[0].sum(-1).tolist() == [2, 2] and result.mask[1, 1].sum() == 2


def test_an_unseen_scenario_gets_nan_scores_and_keeps_every_field():
    result = baselines.select_mi(planted(), VOCAB, 3, 2, {"k": 2})
    assert np.all(np.isnan(result.scores[2])) and np.all(result.mask[2] == 1)
    assert result.diagnostics["rows_per_scenario"][2] == 0


@pytest.mark.parametrize("method, params, key", [
    ("mi", {"compress_ratio": -0.1}, "compress_ratio"),
    ("chi2", {"max_rows": 0}, "max_rows"),
    ("chi2", {"shared": "all"}, "shared"),
    ("mi", {"k": 0}, "k"),
    ("lasso", {"C": 0}, "C"),
    ("lasso", {"max_iter": 1.5}, "max_iter"),
    ("mi", {"C": 1.0}, "C"),  # Only lasso has C.
])
def test_bad_params_raise_naming_the_key(method, params, key):
    with pytest.raises(ValueError, match=f"{method}.*'{key}'"):
        baselines.REGISTRY[method](planted(rows=10, batch=10), VOCAB, 2, 2, params)


def test_no_known_scenario_rows_is_a_clear_error():
    with pytest.raises(ValueError, match="chi2: no rows of a known scenario"):
        baselines.select_chi2(planted(rows=100, unknown_rows=100), VOCAB, 2, 2)
