"""MultiFS (WSDM'24): hierarchical gating search over feature values, per scenario.

Every row of the fused embedding table (one per field value, OOV and missing ids
included) has a continuous shared gate ``g_c^sh`` and one continuous gate
``g_c^k`` per scenario ``k``, all initialised to 0.5. With temperature ``tau``
and ``scaling``, the gates are (eq. 6)::

    g^sh = scaling * sigmoid(tau * g_c^sh) / sigmoid(0.5)
    g^k  = scaling * sigmoid(tau * g_c^k)  / sigmoid(0.5)

The shared gate decides first, through a straight-through hard gate with a
learnable threshold ``epsilon`` (init ``threshold_init * scaling``)::

    q^sh = S(relu(g^sh - epsilon))                 # step forward, clipped identity backward
    G^k  = q^sh * g^sh + (1 - q^sh) * g^k           # eq. (5), as reformulated in sec. 2.2

Scenario ``k``'s examples read ``E x * G^k``; the shared path reads ``E x * g^sh``
through the same network. The search minimises (sec. 2.3)::

    L + lambda_shared * L^sh + sparsity_weight * L^sp + exclusivity_weight * L^or

with ``L`` the BCE of the scenario path summed over tasks, ``L^sh`` the shared
path's BCE averaged per scenario then over scenarios (so large scenarios do not
dominate it), ``L^sp`` the L1 norm of the gates and ``L^or`` the overlap
``sum_{p<r} |g^p * g^r|`` of the scenario gates. As in the authors' code, the
two penalties read ``sigmoid(g_c)`` (temperature 1), so their pull does not
vanish as ``tau`` grows (on the synthetic data, penalties on the tempered gates
of eq. 6 pruned everything sooner: Adam rescales the vanishing gradient).
``tau`` starts at 1 and is multiplied after every search epoch so that the last
epoch runs at ``final_temperature`` (a single epoch runs at ``final_temperature``).
The hard gates of an epoch are ``g_c > 0`` (eq. 7) and
``G^k = q^sh * g^sh + (1 - q^sh) * g^k``, with ``q^sh`` read at that epoch's
temperature and the learned threshold.

Deviation from the paper: which epoch's hard gates are kept. The paper keeps the
last epoch's. Here a share ``heldout_fraction`` of the rows (chosen by a hash of
their scenario id and field ids, so the same rows on every shuffled pass) is never
searched on; after every epoch the search network is scored on them with that
epoch's hard masks applied (``G^k`` times the hard mask: pruned values read 0), and
each scenario keeps the epoch with the fewest fields among those whose held-out
loss is within ``heldout_tolerance`` standard errors of its best epoch's (the
one-standard-error rule on paired per-example losses, ``choose_epoch``). Reason:
the task loss never closes a gate by itself, every prune comes from the sparsity
and exclusivity pull, so the number of fields kept after the last epoch is set by
steps times learning rate rather than by relevance (benchmarks/RESULTS.md, "MultiFS:
why its hard cut does not settle"); a held-out score is the standard way to pick a
point on such a path. One standard error, not zero: epochs whose loss differs by
less than the noise of a few thousand held-out rows are not told apart, so the
sparser one is taken. Off by default (``heldout_fraction: 0``, the paper's
last-epoch cut): on the synthetic benchmark the rule does not reach the
planted-field F1 target, because the gates prune values by frequency more than by
relevance (rare values fall first under Adam's normalised pull, frequent values of
noise fields stay), so no epoch of the path is much better than the last one.
The held-out rows are kept in memory (``heldout_fraction`` of the first pass); a
scenario with no held-out rows keeps the last epoch's masks.

Multi-task: a shared bottom MLP over the gated embeddings feeds one tower per
(scenario, task); the gates are per scenario, shared by that scenario's tasks
(as in the paper). Batches are streamed: ``batches_fn()`` is called once per epoch.

Field-level output (``SelectorResult.mask``), a second deviation: the paper stops at
value masks. Read off them (``field_rule: value_coverage``: keep field ``f`` on scenario
``s``'s paths iff the values kept in ``s`` carry at least ``min_value_coverage`` of its
traffic), the decision keeps every field whose few values are all frequent, relevant or
not, since the gates prune by frequency more than by relevance, and it is one decision
for all tasks of a scenario. The default, ``field_rule: permutation``, asks the searched
network instead, per (scenario, task) path, on rows it never searched on (cross-fitting):
the rows are split by a hash into ``permutation_folds`` folds; for each fold a search on
the other folds' rows (same seed and schedule) ends with its hard masks, and on the fold's
rows each field's column is permuted among the rows of the same scenario
(``permutation_repeats`` times; the per-row loss increase is averaged over them). Field
``f`` is kept on path ``(s, t)`` iff task ``t``'s BCE on scenario ``s``'s rows rises by
more than ``permutation_z`` standard errors (``permutation_decision``; a path whose
rarer label has fewer than ``permutation_events_per_field`` held-out examples per field
takes the decision on all scenarios' rows of its task). Permuting within the scenario
keeps the field's values and traffic there, so a frequent noise field costs nothing when
permuted, while a field that matters in one scenario, or for one task, is kept there
only. The value masks are the paper's search's (on all rows), so the Trainer applies the
same value masks under either rule. On the
synthetic benchmark (benchmarks/RESULTS.md, session 9) the permutation rule lifts the
planted-field F1 from 0.868 to 0.953 (mean of selector seeds 0-7, 0.936-0.970) in three
searches' time (13 s against 5 s on 50,000 rows), and the retrained MMoE gains AUC
over no selection (+0.0034, mean of those seeds); the value-coverage rule stays for the
paper's behaviour.

``scores``: with the permutation rule, the held-out loss increase (nats per row) each
path's decision used; with the value-coverage rule, the traffic-weighted mean of the
continuous gate ``G^s`` of the chosen epoch (at its temperature) over the field's values,
divided by its maximum ``scaling / sigmoid(0.5)``, so in ``[0, 1]``, the same for every
task of a scenario (``diagnostics["gate_scores"]`` under either rule).
"""

import math
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.feature_selector import saliency
from components.feature_selector.result import BatchesFn, SelectorResult
from models.layers import MLP, FieldEmbedding, ParallelMLP, flatten_fields

DEFAULT_PARAMS: Dict[str, Any] = {
    "search_epochs": 5,
    "final_temperature": 100.0,
    "scaling": 1.0,
    "threshold_init": 0.95,
    "lambda_shared": 0.1,
    "sparsity_weight": 1e-4,
    "exclusivity_weight": 1e-5,
    "learning_rate": 1e-2,
    "mask_learning_rate": 2e-2,
    "threshold_learning_rate": 1e-3,
    "embedding_dim": 8,
    "hidden_units": [64],
    "tower_units": 16,
    "field_rule": "permutation",
    "permutation_folds": 2,
    "permutation_repeats": 3,
    "permutation_z": 1.0,
    "permutation_events_per_field": 10,
    "permutation_max_rows": 500_000,
    "min_value_coverage": 0.5,
    "max_steps_per_epoch": None,
    "heldout_fraction": 0.0,
    "heldout_tolerance": 1.0,
    "seed": 0,
}


@tf.custom_gradient
def straight_through_step(x):
    """Unit step ``1[x > 0]``; backward passes the incoming gradient clipped to [-1, 1]."""
    def grad(upstream):
        return tf.clip_by_value(upstream, -1.0, 1.0)
    return tf.cast(x > 0, x.dtype), grad


@keras.utils.register_keras_serializable(package="msmt")
class HierarchicalValueGate(keras.layers.Layer):
    """MultiFS's shared and per-scenario value gates (eqs. 5-6) with a learnable hard gate.

    Inputs: ``field_ids`` int ``[batch, num_fields]``, each column in its own
    vocabulary ``[0, vocab_sizes[f])`` (offsets are applied here, as in
    ``FieldEmbedding``), and ``scenario_id`` int ``[batch]`` in ``[0, num_scenarios)``.
    Outputs: ``(G_scenario, g_shared)``, both ``[batch, num_fields]``: the gate of
    each example's value on its scenario's path ``G^k`` and on the shared path ``g^sh``.
    Adds ``sparsity_weight * L^sp + exclusivity_weight * L^or`` with ``add_loss``.
    """

    def __init__(self, vocab_sizes: Sequence[int], num_scenarios: int, scaling: float = 1.0,
                 threshold_init: float = 0.95, initial_value: float = 0.5,
                 sparsity_weight: float = 0.0, exclusivity_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_scenarios = int(num_scenarios)
        self.scaling = float(scaling)
        self.threshold_init = float(threshold_init)
        self.initial_value = float(initial_value)
        self.sparsity_weight = float(sparsity_weight)
        self.exclusivity_weight = float(exclusivity_weight)
        self._offsets = tf.constant(np.concatenate([[0], np.cumsum(self.vocab_sizes)[:-1]]),
                                    tf.int64)
        self.num_rows = sum(self.vocab_sizes)

    def build(self, input_shape):
        init = keras.initializers.Constant(self.initial_value)
        self.shared_logits = self.add_weight(name="shared_logits", shape=(self.num_rows,),
                                             initializer=init)  # g_c^sh
        self.scenario_logits = self.add_weight(
            name="scenario_logits", shape=(self.num_scenarios, self.num_rows),
            initializer=init)  # g_c^k
        self.threshold = self.add_weight(
            name="threshold", shape=(),
            initializer=keras.initializers.Constant(self.threshold_init * self.scaling))  # epsilon
        self.temperature = self.add_weight(name="temperature", shape=(), trainable=False,
                                           initializer="ones")  # tau
        super().build(input_shape)

    def continuous_gates(self):
        """Eq. (6): ``(g^sh [num_rows], g^k [num_scenarios, num_rows])``."""
        norm = self.scaling / _sigmoid(self.initial_value)
        return (norm * tf.sigmoid(self.temperature * self.shared_logits),
                norm * tf.sigmoid(self.temperature * self.scenario_logits))

    def rows(self, field_ids):
        """Fused-table rows ``[batch, num_fields]`` of per-field ids (clipped to the vocabulary)."""
        field_ids = tf.clip_by_value(tf.cast(field_ids, tf.int64), 0,
                                     tf.constant(self.vocab_sizes, tf.int64) - 1)
        return field_ids + self._offsets

    def call(self, field_ids, scenario_id):
        gate, g_sh = self.gates(field_ids, scenario_id)
        self.add_loss(self.penalty())
        return gate, g_sh

    def gates(self, field_ids, scenario_id, keep=None):
        """``(G^k, g^sh)`` ``[batch, num_fields]`` without the penalty.

        ``keep``: optional float ``[num_scenarios, num_rows]`` multiplied into ``G^k``
        (a hard mask: the pruned values read 0, the kept ones their gate).
        """
        rows = self.rows(field_ids)
        g_shared, g_scenarios = self.continuous_gates()
        g_sh = tf.gather(g_shared, rows)  # [B, F]
        index = tf.stack(
            [tf.broadcast_to(tf.cast(scenario_id, tf.int64)[:, None], tf.shape(rows)), rows], -1)
        g_k = tf.gather_nd(g_scenarios, index)
        q_sh = straight_through_step(tf.nn.relu(g_sh - self.threshold))
        gate = q_sh * g_sh + (1.0 - q_sh) * g_k
        if keep is not None:
            gate = gate * tf.gather_nd(keep, index)
        return gate, g_sh

    def penalty(self):
        """``sparsity_weight * L^sp + exclusivity_weight * L^or`` on ``sigmoid(g_c)``."""
        shared, scenarios = tf.sigmoid(self.shared_logits), tf.sigmoid(self.scenario_logits)
        sparsity = tf.reduce_sum(shared) + tf.reduce_sum(scenarios)
        # sum_{p<r} g^p g^r = ((sum_p g^p)^2 - sum_p (g^p)^2) / 2, per row.
        exclusivity = 0.5 * tf.reduce_sum(tf.square(tf.reduce_sum(scenarios, 0))
                                          - tf.reduce_sum(tf.square(scenarios), 0))
        return self.sparsity_weight * sparsity + self.exclusivity_weight * exclusivity

    def hard_gates(self):
        """Eqs. (7), (5): hard ``G^k`` ``[num_scenarios, num_rows]``, ``g^sh`` ``[num_rows]``."""
        g_shared, _ = self.continuous_gates()
        q_sh = tf.cast(g_shared - self.threshold > 0, tf.float32)
        shared = tf.cast(self.shared_logits > 0, tf.float32)
        scenarios = tf.cast(self.scenario_logits > 0, tf.float32)
        return q_sh * shared + (1.0 - q_sh) * scenarios, shared

    def soft_gates(self):
        """Continuous ``G^k`` ``[num_scenarios, num_rows]`` at the current tau and threshold."""
        g_shared, g_scenarios = self.continuous_gates()
        q_sh = tf.cast(g_shared - self.threshold > 0, tf.float32)
        return q_sh * g_shared + (1.0 - q_sh) * g_scenarios

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes,
                "num_scenarios": self.num_scenarios, "scaling": self.scaling,
                "threshold_init": self.threshold_init, "initial_value": self.initial_value,
                "sparsity_weight": self.sparsity_weight,
                "exclusivity_weight": self.exclusivity_weight}


@keras.utils.register_keras_serializable(package="msmt")
class MultiFSSearchNetwork(keras.Model):
    """Search network: value gates, embedding table, shared bottom, a tower per (scenario, task).

    Inputs: ``(field_ids [batch, num_fields], scenario_id [batch])``.
    Outputs: ``(scenario_logits, shared_logits)``, both ``[batch, num_tasks]``: each
    example's own-scenario towers read ``E x * G^k`` and ``E x * g^sh`` respectively.
    """

    def __init__(self, vocab_sizes: Sequence[int], num_scenarios: int, num_tasks: int,
                 embedding_dim: int = 8, hidden_units: Sequence[int] = (64,),
                 tower_units: int = 16, scaling: float = 1.0, threshold_init: float = 0.95,
                 sparsity_weight: float = 0.0, exclusivity_weight: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_scenarios = int(num_scenarios)
        self.num_tasks = int(num_tasks)
        self.embedding_dim = int(embedding_dim)
        self.hidden_units = [int(u) for u in hidden_units]
        self.tower_units = int(tower_units)
        self.scaling = float(scaling)
        self.threshold_init = float(threshold_init)
        self.sparsity_weight = float(sparsity_weight)
        self.exclusivity_weight = float(exclusivity_weight)
        self.gate = HierarchicalValueGate(self.vocab_sizes, self.num_scenarios, scaling=scaling,
                                          threshold_init=threshold_init,
                                          sparsity_weight=sparsity_weight,
                                          exclusivity_weight=exclusivity_weight, name="value_gate")
        self.embedding = FieldEmbedding(self.vocab_sizes, self.embedding_dim, name="embedding")
        self.bottom = MLP(self.hidden_units, name="bottom")
        self.towers = ParallelMLP(self.num_scenarios * self.num_tasks, [self.tower_units, 1],
                                  output_activation=None, name="towers")

    def _logits(self, embedded, gate, scenario_id):
        x = self.bottom(flatten_fields(embedded * gate[..., None]))  # [B, H]
        logits = tf.reshape(self.towers(x), [-1, self.num_scenarios, self.num_tasks])
        return tf.gather(logits, tf.cast(scenario_id, tf.int32), axis=1, batch_dims=1)  # [B, T]

    def call(self, inputs):
        field_ids, scenario_id = inputs
        gate, g_shared = self.gate(field_ids, scenario_id)
        embedded = self.embedding(field_ids)  # [B, F, D]
        return (self._logits(embedded, gate, scenario_id),
                self._logits(embedded, g_shared, scenario_id))

    def masked_logits(self, field_ids, scenario_id, keep):
        """Scenario-path logits ``[batch, num_tasks]`` with ``G^k`` times the hard ``keep``
        ``[num_scenarios, num_rows]``: the search network with the pruned values removed."""
        gate, _ = self.gate.gates(field_ids, scenario_id, keep)
        return self._logits(self.embedding(field_ids), gate, scenario_id)

    def get_config(self):
        return {"vocab_sizes": self.vocab_sizes, "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "embedding_dim": self.embedding_dim,
                "hidden_units": self.hidden_units, "tower_units": self.tower_units,
                "scaling": self.scaling, "threshold_init": self.threshold_init,
                "sparsity_weight": self.sparsity_weight,
                "exclusivity_weight": self.exclusivity_weight, "name": self.name}


METHOD = "multifs"
FIELD_RULES = ("permutation", "value_coverage")
_is_int, _is_number = saliency.is_int, saliency.is_number
CHECKS = {
    "search_epochs": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "final_temperature": (lambda v: _is_number(v, 1.0), "a number >= 1"),
    "scaling": (lambda v: _is_number(v, 0.0, low_open=True), "a number > 0"),
    "threshold_init": (lambda v: _is_number(v, 0.0, low_open=True), "a number > 0 (times scaling)"),
    "lambda_shared": (lambda v: _is_number(v, 0.0), "a number >= 0"),
    "sparsity_weight": (lambda v: _is_number(v, 0.0), "a number >= 0"),
    "exclusivity_weight": (lambda v: _is_number(v, 0.0), "a number >= 0"),
    "learning_rate": (lambda v: _is_number(v, 0.0, low_open=True), "a number > 0"),
    "mask_learning_rate": (lambda v: _is_number(v, 0.0, low_open=True), "a number > 0"),
    "threshold_learning_rate": (lambda v: _is_number(v, 0.0), "a number >= 0"),
    "embedding_dim": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "hidden_units": (lambda v: isinstance(v, (list, tuple)) and len(v) > 0
                     and all(_is_int(u, 1) for u in v), "a non-empty list of integers >= 1"),
    "tower_units": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "field_rule": (lambda v: v in FIELD_RULES, " or ".join(repr(r) for r in FIELD_RULES)),
    "permutation_folds": (lambda v: _is_int(v, 2), "an integer >= 2"),
    "permutation_repeats": (lambda v: _is_int(v, 1), "an integer >= 1"),
    "permutation_z": (lambda v: _is_number(v, 0.0), "a number >= 0 (standard errors)"),
    "permutation_events_per_field": (lambda v: _is_number(v, 0.0), "a number >= 0"),
    "permutation_max_rows": (lambda v: _is_int(v, 2), "an integer >= 2"),
    "min_value_coverage": (lambda v: _is_number(v, 0.0, 1.0, low_open=True), "a number in (0, 1]"),
    "max_steps_per_epoch": (lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
    "heldout_fraction": (lambda v: _is_number(v, 0.0, 1.0) and v < 1, "a number in [0, 1)"),
    "heldout_tolerance": (lambda v: _is_number(v, 0.0), "a number >= 0 (standard errors)"),
    "seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
}


def resolve_params(params: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """``params`` over ``DEFAULT_PARAMS``; ValueError naming an unknown key or a bad value."""
    resolved = saliency.resolve_params(METHOD, params, DEFAULT_PARAMS, CHECKS)
    return {**resolved, "hidden_units": [int(u) for u in resolved["hidden_units"]]}


def temperature_schedule(search_epochs: int, final_temperature: float) -> List[float]:
    """``tau`` of each search epoch: 1, multiplied each epoch, ``final_temperature`` at the last."""
    if search_epochs == 1:
        return [float(final_temperature)]
    return [float(final_temperature) ** (e / (search_epochs - 1)) for e in range(search_epochs)]


def _bce(labels, logits):
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)  # [B, T]


def search(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
           num_tasks: int, params: Optional[Mapping[str, Any]] = None) -> SelectorResult:
    """Runs the MultiFS search and returns hard value masks per scenario and the field selection.

    ``batches_fn()`` yields ``(field_ids int [B, F], scenario_id int [B], labels float [B, T])``;
    rows of the unseen-scenario id (``>= num_scenarios``) are skipped. Traffic per value is
    counted on the first epoch; a scenario with no rows there keeps every value and field,
    with NaN scores. ``params``: see ``DEFAULT_PARAMS`` (validated by ``resolve_params``).

    The value search (the paper's, on every row but ``heldout_fraction``) gives the value
    masks and, with ``field_rule: value_coverage``, the field decision and the scores (the
    gates). With ``field_rule: permutation`` (default), ``permutation_folds`` more searches
    decide the fields per (scenario, task) and the scores are the held-out loss increases
    behind that decision (``permutation_decision``).

    Diagnostics of the value search, one entry per epoch: ``temperature``, ``threshold``
    (after the epoch), ``loss`` (mean total objective), ``steps`` (batches with searched
    rows), ``seconds``, ``kept_value_fraction`` and ``kept_traffic_fraction`` (per
    scenario, of the hard ``G^k``), ``shared_value_fraction`` (hard ``g^sh``),
    ``kept_fields`` and ``field_mask`` (per scenario, by value coverage), ``heldout_loss``
    (per scenario; empty without held-out rows); then ``chosen_epoch`` and ``heldout_rows``
    (per scenario), ``final_temperature``, ``final_threshold``, ``value_coverage`` and
    ``gate_scores`` (``[S, F]``) of the chosen epochs, ``scenario_rows`` (all rows,
    held-out included). With the permutation rule: ``permutation_z`` and
    ``permutation_loss_increase`` (``[S, T, F]``, each scenario's own rows),
    ``permutation_rows`` (``[S]``), ``permutation_positives`` and ``permutation_pooled``
    (``[S, T]``: decided on all scenarios' rows) and ``fold_seconds``. Last,
    ``search_seconds`` (all searches).
    """
    p = resolve_params(params)
    vocab_sizes = [int(v) for v in vocab_sizes]
    if not vocab_sizes or min(vocab_sizes) < 1:
        raise ValueError(f"multifs: vocab_sizes must be non-empty positive sizes, "
                         f"got {vocab_sizes}")
    if num_scenarios < 1 or num_tasks < 1:
        raise ValueError(f"multifs: need num_scenarios >= 1 and num_tasks >= 1, got "
                         f"{num_scenarios} and {num_tasks}")
    num_fields = len(vocab_sizes)
    started = time.perf_counter()
    values = _search_pass(batches_fn, vocab_sizes, num_scenarios, num_tasks, p,
                          _RowHoldout(0.0, p["heldout_fraction"], num_fields, p["seed"]))
    figures = _field_decision(values["counts"], values["hard"], values["soft"], vocab_sizes,
                              p["min_value_coverage"])
    field_mask = np.repeat(figures["kept"][:, None, :], num_tasks, axis=1)
    scores = np.repeat(figures["scores"][:, None, :], num_tasks, axis=1)
    rule: Dict[str, Any] = {}
    if p["field_rule"] == "permutation":
        rule = _permutation_rule(batches_fn, vocab_sizes, num_scenarios, num_tasks, p)
        field_mask, scores = rule.pop("kept"), rule.pop("scores")
    seen = values["counts"].sum(1) > 0  # [S]
    hard = np.where(seen[:, None], values["hard"], 1.0)
    field_mask = np.where(seen[:, None, None], field_mask, 1.0)
    scores = np.where(seen[:, None, None], scores, np.nan)
    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int64)
    value_masks = [hard[:, start:start + size].astype(np.float32)
                   for start, size in zip(offsets, vocab_sizes)]
    diagnostics = {
        **values["history"],
        "value_coverage": figures["coverage"].tolist(),
        "gate_scores": figures["scores"].tolist(),
        **rule,
        "search_seconds": time.perf_counter() - started,
    }
    return SelectorResult(scores=scores, mask=field_mask.astype(np.float32), params=p,
                          value_masks=value_masks, diagnostics=diagnostics)


def _permutation_rule(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
                      num_tasks: int, p: Mapping[str, Any]) -> Dict[str, Any]:
    """The permutation field rule: one search per fold on the other folds' rows, each
    network scored on its own fold (``permutation_loss_increase``), the per-row increases
    of all folds pooled into ``permutation_decision``. Returns ``kept``, ``scores`` and
    the diagnostics ``search`` documents."""
    folds = p["permutation_folds"]
    totals = np.zeros([2, num_scenarios, num_tasks, len(vocab_sizes)])
    rows, positives = np.zeros(num_scenarios), np.zeros([num_scenarios, num_tasks])
    seconds = []
    for fold in range(folds):
        fold_start = time.perf_counter()
        holdout = _RowHoldout(fold / folds, (fold + 1) / folds, len(vocab_sizes), p["seed"],
                              max_rows=p["permutation_max_rows"] // folds)
        searched = _search_pass(batches_fn, vocab_sizes, num_scenarios, num_tasks, p, holdout,
                                score_last_epoch=True)
        if searched["heldout"]:
            sums, counts, fold_positives = permutation_loss_increase(
                searched["heldout_step"], searched["last_hard"], *searched["heldout"],
                num_scenarios, p["permutation_repeats"],
                np.random.default_rng([p["seed"], fold, 0x9E37]))
            totals += sums
            rows += counts
            positives += fold_positives
        seconds.append(time.perf_counter() - fold_start)
    decision = permutation_decision(totals[0], totals[1], rows, positives, p["permutation_z"],
                                    p["permutation_events_per_field"])
    return {"kept": decision["kept"], "scores": decision["scores"],
            "permutation_z": decision["z"].tolist(),
            "permutation_loss_increase": decision["loss_increase"].tolist(),
            "permutation_rows": rows.tolist(), "permutation_positives": positives.tolist(),
            "permutation_pooled": decision["pooled"].tolist(), "fold_seconds": seconds}


def permutation_loss_increase(heldout_step, keep: np.ndarray, field_ids: np.ndarray,
                              scenario_id: np.ndarray, labels: np.ndarray, num_scenarios: int,
                              repeats: int, rng: np.random.Generator):
    """Per-row held-out loss increase when a field's column is permuted among the rows of
    the same scenario, averaged over ``repeats`` permutations.

    A search network's ``heldout_step`` (``_search_pass``) scores it with its hard masks
    ``keep`` ``[S, rows]`` applied on rows it never searched on (``field_ids [N, F]``,
    ``scenario_id [N]``, ``labels [N, T]``). Returns ``(sums [2, S, T, F], rows [S],
    positives [S, T])``: the sum over each scenario's rows of the per-row increase and of
    its square (BCE of each task, nats), the scenario's row count and its positive labels.
    """
    num_fields, num_tasks = field_ids.shape[1], labels.shape[1]

    def row_losses(ids):
        return _heldout_bce(heldout_step, keep, ids, scenario_id, labels)

    base = row_losses(field_ids)
    groups = [np.flatnonzero(scenario_id == s) for s in range(num_scenarios)]
    sums = np.zeros([2, num_scenarios, num_tasks, num_fields])
    permuted = field_ids.copy()  # one column at a time differs from field_ids
    for f in range(num_fields):
        increase = np.zeros_like(base)
        for _ in range(repeats):
            for rows in groups:
                permuted[rows, f] = field_ids[rng.permutation(rows), f]
            increase += row_losses(permuted) - base
        permuted[:, f] = field_ids[:, f]
        increase /= repeats
        for s, rows in enumerate(groups):
            sums[0, s, :, f] = increase[rows].sum(0)
            sums[1, s, :, f] = np.square(increase[rows]).sum(0)
    return (sums, np.array([len(rows) for rows in groups], np.float64),
            np.stack([labels[rows].sum(0) for rows in groups]).astype(np.float64))


def permutation_decision(sums: np.ndarray, squares: np.ndarray, rows: np.ndarray,
                         positives: np.ndarray, z: float,
                         events_per_field: float) -> Dict[str, np.ndarray]:
    """Which fields each (scenario, task) path keeps, from held-out loss increases.

    ``sums``, ``squares``: ``[S, T, F]`` sums over a scenario's held-out rows of the per-row
    loss increase when the field is permuted, and of its square; ``rows``: ``[S]``;
    ``positives``: ``[S, T]`` positive labels among them. A field is kept on a path iff the
    mean increase exceeds ``z`` standard errors (a one-sided test that the field lowers the
    path's loss). The default 1.0 (the one-standard-error rule of ``choose_epoch``) rather
    than the 5% level 1.645: a relevant field dropped costs the retrained model more than a
    noise field kept (benchmarks/RESULTS.md, session 9). A path has too little to test on
    when its rarer label has fewer than ``events_per_field`` examples per field (the
    events-per-variable rule of thumb for logistic models, 10): it takes the decision on
    all scenarios' rows of its task (``pooled``), and if those are too few as well, keeps
    every field. Returns ``kept`` (bool), ``loss_increase`` and ``z`` (each scenario's own
    rows; NaN without rows) and ``scores`` (the increases the decision used), all
    ``[S, T, F]``, and ``pooled`` ``[S, T]``.
    """

    def test(total, total_squares, n):
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total / n
            variance = np.maximum(total_squares - n * np.square(mean), 0.0) / (n - 1)
            z_score = np.where(variance > 0, mean / np.sqrt(variance / n),
                               np.sign(mean) * np.where(mean != 0, np.inf, 0.0))
        return np.where(n > 1, mean, np.nan), np.where(n > 1, z_score, np.nan)

    n = np.asarray(rows, np.float64)[:, None, None]
    positives = np.asarray(positives, np.float64)
    loss_increase, z_own = test(sums, squares, n)
    pooled_increase, z_pooled = test(sums.sum(0), squares.sum(0), n.sum())
    min_events = events_per_field * sums.shape[-1]
    own = np.minimum(positives, n[..., 0] - positives) >= min_events  # [S, T]
    total = positives.sum(0)
    testable = np.minimum(total, n.sum() - total) >= min_events  # [T]
    kept = np.where(own[..., None], z_own > z, z_pooled[None] > z)
    kept = kept | ~testable[None, :, None]
    return {"kept": kept, "loss_increase": loss_increase, "z": z_own, "pooled": ~own,
            "scores": np.where(own[..., None], loss_increase, pooled_increase[None])}


def _search_pass(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
                 num_tasks: int, p: Mapping[str, Any], holdout: "_RowHoldout",
                 score_last_epoch: bool = False) -> Dict[str, Any]:
    """One search of ``p["search_epochs"]`` epochs on the rows ``holdout`` does not hold out.

    Returns the value traffic ``counts`` (all rows), the hard gates ``hard`` and the
    continuous gates ``soft`` of the chosen epochs (``[S, rows]``) and the per-epoch
    ``history`` (see ``search``); with ``score_last_epoch`` (no epoch choice) also the
    network's ``heldout_step`` (per-row, per-task BCE with hard masks applied, for
    ``_heldout_bce``), the last epoch's hard gates ``last_hard`` and the ``heldout`` rows
    ``(field_ids, scenario_id, labels)`` as numpy arrays (an empty tuple if none).
    """
    num_fields = len(vocab_sizes)
    keras.utils.set_random_seed(p["seed"])
    network = MultiFSSearchNetwork(
        vocab_sizes, num_scenarios, num_tasks, embedding_dim=p["embedding_dim"],
        hidden_units=p["hidden_units"], tower_units=p["tower_units"], scaling=p["scaling"],
        threshold_init=p["threshold_init"], sparsity_weight=p["sparsity_weight"],
        exclusivity_weight=p["exclusivity_weight"])
    network((tf.zeros([1, num_fields], tf.int64), tf.zeros([1], tf.int64)))
    gate = network.gate
    gate_vars = [gate.shared_logits, gate.scenario_logits]
    threshold_vars = [gate.threshold]
    model_vars = [v for v in network.trainable_variables
                  if all(v is not g for g in gate_vars + threshold_vars)]
    optimizers = [(keras.optimizers.Adam(p["learning_rate"]), model_vars),
                  (keras.optimizers.Adam(p["mask_learning_rate"]), gate_vars),
                  (keras.optimizers.Adam(p["threshold_learning_rate"]), threshold_vars)]
    for optimizer, variables in optimizers:
        optimizer.build(variables)  # slots before tracing, so train_step traces once
    lambda_shared = float(p["lambda_shared"])

    @tf.function(input_signature=[tf.TensorSpec([None, num_fields], tf.int64),
                                  tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None, num_tasks], tf.float32)])
    def train_step(field_ids, scenario_id, labels):
        with tf.GradientTape() as tape:
            scenario_logits, shared_logits = network((field_ids, scenario_id))
            loss = tf.reduce_sum(tf.reduce_mean(_bce(labels, scenario_logits), 0))  # L
            # L^sh = (1/K) sum_k L_k^sh over the scenarios present in the batch.
            per_example = tf.reduce_sum(_bce(labels, shared_logits), -1)
            sums = tf.math.unsorted_segment_sum(per_example, scenario_id, num_scenarios)
            counts = tf.math.unsorted_segment_sum(tf.ones_like(per_example), scenario_id,
                                                  num_scenarios)
            present = tf.cast(counts > 0, tf.float32)
            shared_loss = tf.reduce_sum(tf.math.divide_no_nan(sums, counts)) / tf.maximum(
                tf.reduce_sum(present), 1.0)
            total = loss + lambda_shared * shared_loss + tf.add_n(network.losses)
        variables = [v for _, vs in optimizers for v in vs]
        grads = tape.gradient(total, variables)
        start = 0
        for optimizer, vs in optimizers:
            optimizer.apply_gradients(zip(grads[start:start + len(vs)], vs))
            start += len(vs)
        return total

    @tf.function(input_signature=[tf.TensorSpec([None, num_fields], tf.int64),
                                  tf.TensorSpec([None], tf.int64),
                                  tf.TensorSpec([None, num_tasks], tf.float32),
                                  tf.TensorSpec([num_scenarios, gate.num_rows], tf.float32)])
    def heldout_step(field_ids, scenario_id, labels, keep):
        return _bce(labels, network.masked_logits(field_ids, scenario_id, keep))  # [B, T]

    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int64)
    upper = np.asarray(vocab_sizes, np.int64) - 1
    counts = np.zeros([num_scenarios, gate.num_rows], np.float64)
    schedule = temperature_schedule(p["search_epochs"], p["final_temperature"])
    heldout: List[tuple] = []  # (field_ids, scenario_id, labels) of the held-out rows
    kept_rows = 0
    history: Dict[str, list] = {"temperature": [], "threshold": [], "loss": [], "steps": [],
                                "seconds": [], "kept_value_fraction": [],
                                "kept_traffic_fraction": [], "shared_value_fraction": [],
                                "kept_fields": [], "field_mask": [], "heldout_loss": []}
    hard_path, soft_path, heldout_losses = [], [], []  # per epoch
    norm = gate.scaling / _sigmoid(gate.initial_value)
    for epoch, tau in enumerate(schedule):
        epoch_start = time.perf_counter()
        gate.temperature.assign(tau)
        losses, steps = [], 0
        for field_ids, scenario_id, labels in batches_fn():
            if p["max_steps_per_epoch"] is not None and steps >= p["max_steps_per_epoch"]:
                break
            field_ids, scenario_id, labels = _known_rows(field_ids, scenario_id, labels,
                                                         num_scenarios, num_fields, num_tasks)
            if scenario_id.shape[0] == 0:
                continue
            ids, scenarios = field_ids.numpy(), scenario_id.numpy()
            held = holdout.held_out(ids, scenarios)
            if epoch == 0:
                rows = np.clip(ids, 0, upper) + offsets
                flat = scenarios[:, None] * gate.num_rows + rows
                counts += np.bincount(flat.ravel(), minlength=counts.size).reshape(counts.shape)
            if held.any():
                if epoch == 0 and kept_rows < holdout.max_rows:
                    take = np.flatnonzero(held)[:holdout.max_rows - kept_rows]
                    heldout.append((ids[take], scenarios[take], labels.numpy()[take]))
                    kept_rows += len(take)
                field_ids, scenario_id, labels = (tf.constant(ids[~held]),
                                                  tf.constant(scenarios[~held]),
                                                  tf.boolean_mask(labels, ~held))
                if scenario_id.shape[0] == 0:
                    continue
            losses.append(float(train_step(field_ids, scenario_id, labels)))
            steps += 1
        if epoch == 0 and counts.sum() == 0:
            raise ValueError("multifs: batches_fn() yielded no rows of a known scenario "
                             f"(scenario ids in [0, {num_scenarios}))")
        if epoch == 0 and heldout:
            heldout = [np.concatenate(part) for part in zip(*heldout)]
        hard, shared = (g.numpy() for g in gate.hard_gates())
        soft = gate.soft_gates().numpy() / norm
        hard_path.append(hard)
        soft_path.append(soft)
        if heldout and not score_last_epoch:
            heldout_losses.append(_heldout_bce(heldout_step, hard, *heldout).sum(1))
            history["heldout_loss"].append([
                float(heldout_losses[-1][heldout[1] == s].mean()) if np.any(heldout[1] == s)
                else float("nan") for s in range(num_scenarios)])
        history["temperature"].append(float(tau))
        history["threshold"].append(float(gate.threshold.numpy()))
        history["loss"].append(float(np.mean(losses)) if losses else float("nan"))
        history["steps"].append(steps)
        history["seconds"].append(time.perf_counter() - epoch_start)
        history["kept_value_fraction"].append(hard.mean(axis=1).tolist())
        history["kept_traffic_fraction"].append(
            (np.sum(counts * hard, 1) / np.maximum(counts.sum(1), 1)).tolist())
        history["shared_value_fraction"].append(float(shared.mean()))
        kept = _field_decision(counts, hard, soft, vocab_sizes, p["min_value_coverage"])["kept"]
        history["kept_fields"].append(kept.sum(1).tolist())
        history["field_mask"].append(kept.astype(int).tolist())
    gate.temperature.assign(float(p["final_temperature"]))

    last = len(schedule) - 1
    chosen = [last] * num_scenarios
    if heldout and not score_last_epoch:
        for s in range(num_scenarios):
            own = heldout[1] == s
            if own.any():
                chosen[s] = choose_epoch(np.stack([e[own] for e in heldout_losses]),
                                         history["kept_fields"], s, p["heldout_tolerance"])
    history.update({
        "chosen_epoch": chosen,
        "heldout_rows": [int(np.sum(heldout[1] == s)) if heldout else 0
                         for s in range(num_scenarios)],
        "final_temperature": float(gate.temperature.numpy()),
        "final_threshold": float(gate.threshold.numpy()),
        "scenario_rows": [float(c) / num_fields for c in counts.sum(1)],
    })
    result = {"counts": counts, "history": history,
              **{name: np.stack([path[e][s] for s, e in enumerate(chosen)])
                 for name, path in (("hard", hard_path), ("soft", soft_path))}}
    if score_last_epoch:
        result.update(heldout_step=heldout_step, last_hard=hard_path[-1],
                      heldout=tuple(heldout))
    return result


def choose_epoch(losses: np.ndarray, kept_fields: Sequence[Sequence[float]], scenario: int,
                 tolerance: float) -> int:
    """The epoch whose hard masks keep the fewest fields of ``scenario`` among the epochs
    whose held-out loss is within ``tolerance`` standard errors of the best epoch's.

    ``losses``: per-example held-out loss ``[epochs, rows]`` of the scenario's rows;
    ``kept_fields[e][scenario]``: fields kept at epoch ``e``. Epoch ``e`` is within
    tolerance when ``mean(d) <= tolerance * std(d) / sqrt(rows)`` for the paired
    differences ``d = losses[e] - losses[best]`` (a one-standard-error rule on paired
    losses). Ties go to the lower held-out loss, then to the later epoch.
    """
    losses = np.asarray(losses, np.float64)
    means = losses.mean(1)
    best = int(np.argmin(means))
    rows = losses.shape[1]
    candidates = []
    for e in range(losses.shape[0]):
        d = losses[e] - losses[best]
        se = d.std(ddof=1) / math.sqrt(rows) if rows > 1 else 0.0
        if d.mean() <= tolerance * se:
            candidates.append((kept_fields[e][scenario], means[e], -e))
    return -min(candidates)[2]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _field_decision(counts, hard, soft, vocab_sizes, min_value_coverage) -> Dict[str, np.ndarray]:
    """The value-coverage field rule, and the per-field figures of the gates.

    ``counts``, ``hard``, ``soft``: ``[S, rows]`` over the fused table: value traffic, hard
    gates and continuous gates ``G^k``. Returns ``coverage`` (share of the field's traffic
    on values ``hard`` keeps), ``scores`` (traffic-weighted mean of ``soft``) and ``kept``
    (``coverage >= min_value_coverage``), all ``[S, F]``. NaN (and kept False) for a
    scenario without traffic.
    """
    S = counts.shape[0]
    offsets = np.concatenate([[0], np.cumsum(vocab_sizes)[:-1]]).astype(np.int64)
    figures = {name: np.full([S, len(vocab_sizes)], np.nan) for name in ("coverage", "scores")}
    for f, (start, size) in enumerate(zip(offsets, vocab_sizes)):
        traffic = counts[:, start:start + size]  # [S, V_f]
        total = traffic.sum(1)
        for name, per_value in (("coverage", hard), ("scores", soft)):
            with np.errstate(invalid="ignore", divide="ignore"):
                figures[name][:, f] = (traffic * per_value[:, start:start + size]).sum(1) / total
    with np.errstate(invalid="ignore"):
        figures["kept"] = figures["coverage"] >= min_value_coverage
    return figures


_HELDOUT_BATCH = 8192


def _heldout_bce(heldout_step, keep: np.ndarray, field_ids: np.ndarray,
                 scenario_id: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``heldout_step``'s BCE per row and task ``[N, T]`` (float64) over held-out rows, in
    windows of ``_HELDOUT_BATCH`` rows, with the hard masks ``keep`` ``[S, rows]``."""
    keep = tf.constant(keep, tf.float32)
    return np.concatenate([
        heldout_step(tf.constant(field_ids[i:i + _HELDOUT_BATCH]),
                     tf.constant(scenario_id[i:i + _HELDOUT_BATCH]),
                     tf.constant(labels[i:i + _HELDOUT_BATCH]), keep).numpy()
        for i in range(0, len(scenario_id), _HELDOUT_BATCH)]).astype(np.float64)


def _row_keys(field_ids: np.ndarray, scenario_id: np.ndarray) -> np.ndarray:
    """``[B, F + 1]`` uint64: each row's content (field ids, scenario id), for ``_row_uniform``."""
    return np.concatenate([field_ids.astype(np.uint64), scenario_id.astype(np.uint64)[:, None]], 1)


def _row_uniform(keys: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """A number in [0, 1) ``[B]`` hashed from each row's ``keys`` (``_row_keys``)."""
    with np.errstate(over="ignore"):
        h = (keys * multipliers).sum(1, dtype=np.uint64)
        h ^= h >> np.uint64(31)  # splitmix64 finaliser
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
    return (h >> np.uint64(11)).astype(np.float64) / 2.0 ** 53


class _RowHoldout:
    """Deterministic held-out rows: a hash of (scenario id, field ids) in ``[low, high)``.

    The decision depends on the row's content only (not on its position in a shuffled
    pass), so the same rows are held out on every epoch; disjoint intervals of one seed
    hold out disjoint rows (the permutation rule's folds). At most ``max_rows`` held-out
    rows are kept for scoring (the first of the pass); the others are still not searched on.
    """

    def __init__(self, low: float, high: float, num_fields: int, seed: int,
                 max_rows: Optional[int] = None):
        self.low, self.high = float(low), float(high)
        self.max_rows = 2 ** 62 if max_rows is None else int(max_rows)
        rng = np.random.default_rng([seed, 0x6D66])
        self.multipliers = rng.integers(1, 2 ** 63, size=num_fields + 1, dtype=np.uint64) | 1

    def held_out(self, field_ids: np.ndarray, scenario_id: np.ndarray) -> np.ndarray:
        """Bool ``[B]``."""
        if self.high <= self.low:
            return np.zeros(len(scenario_id), bool)
        u = _row_uniform(_row_keys(field_ids, scenario_id), self.multipliers)
        return (u >= self.low) & (u < self.high)


def _known_rows(field_ids, scenario_id, labels, num_scenarios, num_fields, num_tasks):
    """Casts a batch, checks its shapes and drops rows of the unseen-scenario id."""
    field_ids = tf.cast(field_ids, tf.int64)
    scenario_id = tf.reshape(tf.cast(scenario_id, tf.int64), [-1])
    labels = tf.cast(labels, tf.float32)
    if field_ids.shape.rank != 2 or field_ids.shape[1] != num_fields:
        raise ValueError(f"multifs: field_ids must be [batch, {num_fields}] (one column per "
                         f"vocab size), got shape {field_ids.shape.as_list()}")
    if labels.shape.rank != 2 or labels.shape[1] != num_tasks:
        raise ValueError(f"multifs: labels must be [batch, {num_tasks}], got shape "
                         f"{labels.shape.as_list()}")
    known = (scenario_id >= 0) & (scenario_id < num_scenarios)
    return (tf.boolean_mask(field_ids, known), tf.boolean_mask(scenario_id, known),
            tf.boolean_mask(labels, known))
