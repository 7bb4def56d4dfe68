"""Baseline field selectors through scikit-learn, one score per (scenario, task) and field.

Each method fits on the rows of one scenario and one task's labels at a time
(at most ``max_rows`` known-scenario rows are read in all) and keeps the top-k
fields per (scenario, task) with the same rule as MultiSFS
(``saliency.keep_counts``, ``saliency.top_k_mask``). Every field is a
categorical id (Transform's vocabulary ids and quantile buckets):

- ``mi``: mutual information of the field's ids and the label
  (``mutual_info_classif`` with discrete features), bias-corrected.
- ``chi2``: Pearson's chi-squared test of independence of the field and the
  label (``sklearn.feature_selection.chi2`` on the one-hot ids), scored by -log p.
- ``lasso``: L1-regularised logistic regression on the one-hot ids of all fields
  (the LASSO baseline of the MultiSFS paper); a field's score is how much it
  moves the logit (the standard deviation over rows of its coefficients).

``REGISTRY`` maps each name to its ``select`` function.
"""

import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import numpy as np
from scipy import stats
from sklearn.feature_selection import chi2, mutual_info_classif
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from components.feature_selector import saliency
from components.feature_selector.result import BatchesFn, SelectorResult

COMMON_DEFAULTS: Dict[str, Any] = {
    **saliency.TOP_K_DEFAULTS,  # compress_ratio, k, shared, seed
    "max_rows": 50_000,         # known-scenario rows read
}
COMMON_CHECKS = {
    **saliency.TOP_K_CHECKS,
    "max_rows": (lambda v: saliency.is_int(v, 1), "a positive integer"),
}

# One cell's field scores: (ids [n, F] of one scenario, labels [n] of one task, params) -> [F].
CellScoreFn = Callable[[np.ndarray, np.ndarray, Mapping[str, Any]], np.ndarray]


def mi_scores(ids: np.ndarray, y: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Plug-in mutual information (nats) minus its first-order bias, per field ``[F]``.

    The plug-in estimate of I(X; Y) is biased upwards by about
    ``(|X| - 1)(|Y| - 1) / 2n`` (Miller-Madow), so without the correction a
    2000-value noise field outranks a 5-value relevant one on a few thousand rows.
    """
    mi = mutual_info_classif(ids, y, discrete_features=True, random_state=params["seed"])
    distinct = np.array([len(np.unique(column)) for column in ids.T])
    return mi - (distinct - 1) / (2.0 * len(y))


def chi2_scores(ids: np.ndarray, y: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """-log p of Pearson's chi-squared independence test of each field and the label ``[F]``.

    Ids are category labels, not counts: chi2 on the raw ids would treat id 7 as
    seven times id 1. On the one-hot columns of a field, sklearn's per-column
    statistics sum to Pearson's statistic of the field's (values x classes)
    contingency table, with ``(values - 1) * (classes - 1)`` degrees of freedom.
    Fields differ in cardinality, hence in degrees of freedom, so they are
    compared by p-value (its -log, which does not underflow), not by statistic.
    """
    scores = np.empty(ids.shape[1])
    classes = len(np.unique(y))
    for f, column in enumerate(ids.T):
        onehot = OneHotEncoder(dtype=np.float64).fit_transform(column[:, None])
        statistic = float(np.sum(chi2(onehot, y)[0]))
        dof = (onehot.shape[1] - 1) * (classes - 1)
        scores[f] = -stats.chi2.logsf(statistic, dof) if dof > 0 else 0.0
    return scores


def lasso_scores(ids: np.ndarray, y: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """Spread of each field's share of an L1 logistic regression's logit ``[F]``.

    Fits ``LogisticRegression(penalty="l1", C=C)`` on the one-hot ids of all
    fields; field ``f`` contributes ``w_f[x_f]`` to the logit, and its score is
    the standard deviation of that contribution over the rows (0 for a field the
    L1 penalty zeroed). This weighs each coefficient by its value's frequency,
    unlike a norm of the coefficients, which rare values would dominate.
    """
    encoder = OneHotEncoder(dtype=np.float64)
    onehot = encoder.fit_transform(ids)
    model = LogisticRegression(penalty="l1", C=params["C"], solver="liblinear",
                               random_state=params["seed"], max_iter=params["max_iter"])
    model.fit(onehot, y)
    weights = model.coef_[0]
    scores, start = np.empty(ids.shape[1]), 0
    for f, categories in enumerate(encoder.categories_):
        field_weights = weights[start:start + len(categories)]
        start += len(categories)
        contribution = field_weights[np.searchsorted(categories, ids[:, f])]
        scores[f] = contribution.std()
    return scores


def _select(method: str, cell_scores: CellScoreFn, defaults: Mapping[str, Any],
            checks: Mapping[str, Any], batches_fn: BatchesFn, vocab_sizes: Sequence[int],
            num_scenarios: int, num_tasks: int,
            params: Optional[Mapping[str, Any]]) -> SelectorResult:
    """Scores every (scenario, task) cell with ``cell_scores``; top-k mask, shared set."""
    p = saliency.resolve_params(method, params, defaults, checks)
    num_fields = len(vocab_sizes)
    keep = saliency.keep_counts(num_fields, num_tasks, p["compress_ratio"], p["k"], method)
    start = time.perf_counter()
    batches = saliency.read_batches(batches_fn, num_scenarios, num_fields, num_tasks, method,
                                    max_rows=p["max_rows"])
    ids = np.concatenate([b[0] for b in batches])
    scenario_id = np.concatenate([b[1] for b in batches])
    labels = np.concatenate([b[2] for b in batches]) > 0.5

    scores = np.full([num_scenarios, num_tasks, num_fields], np.nan)
    without_signal = []  # Cells with no rows or a single label value: every field kept.
    for s in range(num_scenarios):
        rows = scenario_id == s
        for t in range(num_tasks):
            y = labels[rows, t]
            if y.size == 0 or y.all() or not y.any():
                without_signal.append([s, t])
                continue
            scores[s, t] = cell_scores(ids[rows], y.astype(np.int64), p)
    mask = saliency.top_k_mask(scores, keep)
    diagnostics = {
        "shared_mask": saliency.shared_mask(mask, p["shared"]),
        "rows_read": int(len(scenario_id)),
        "rows_per_scenario": np.bincount(scenario_id, minlength=num_scenarios).tolist(),
        "cells_without_signal": without_signal,
        "seconds": time.perf_counter() - start,
    }
    return SelectorResult(scores=scores, mask=mask, params={**p, "k": keep.tolist()},
                          diagnostics=diagnostics)


def select_mi(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
              num_tasks: int, params: Optional[Mapping[str, Any]] = None) -> SelectorResult:
    """Mutual information per (scenario, task); params: ``COMMON_DEFAULTS``."""
    return _select("mi", mi_scores, COMMON_DEFAULTS, COMMON_CHECKS, batches_fn, vocab_sizes,
                   num_scenarios, num_tasks, params)


def select_chi2(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
                num_tasks: int, params: Optional[Mapping[str, Any]] = None) -> SelectorResult:
    """Chi-squared independence test per (scenario, task); params: ``COMMON_DEFAULTS``."""
    return _select("chi2", chi2_scores, COMMON_DEFAULTS, COMMON_CHECKS, batches_fn, vocab_sizes,
                   num_scenarios, num_tasks, params)


LASSO_DEFAULTS: Dict[str, Any] = {
    **COMMON_DEFAULTS,
    "C": 0.2,          # inverse L1 strength (liblinear: on the summed log loss)
    "max_iter": 200,
}
LASSO_CHECKS = {
    **COMMON_CHECKS,
    "C": (lambda v: saliency.is_number(v, 0.0, low_open=True), "a positive number"),
    "max_iter": (lambda v: saliency.is_int(v, 1), "a positive integer"),
}


def select_lasso(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
                 num_tasks: int, params: Optional[Mapping[str, Any]] = None) -> SelectorResult:
    """L1 logistic regression per (scenario, task); params: ``LASSO_DEFAULTS``."""
    return _select("lasso", lasso_scores, LASSO_DEFAULTS, LASSO_CHECKS, batches_fn, vocab_sizes,
                   num_scenarios, num_tasks, params)


REGISTRY: Dict[str, Callable[..., SelectorResult]] = {
    "mi": select_mi,
    "chi2": select_chi2,
    "lasso": select_lasso,
}
