"""Single-shot field saliency (MultiSFS section 3.2) and what every selector shares.

At random initialisation (no training) a probe network reads the field
embeddings through a mask ``m[s, t, f]`` initialised to ones; example ``b`` of
scenario ``s_b`` feeds task ``t``'s tower with ``e_b * m[s_b, t]``. Each
(scenario, task) pair is one "task" of the paper. Its loss ``L_st`` is the mean
binary cross-entropy of task ``t`` over the examples of scenario ``s`` read (all
batches together), and its saliency is ``|dL_st / dm[s, t, f]|`` at ``m = 1``
(eq. 10), so small scenarios are not scored lower only for being small.

Also here, shared by MultiSFS and the baselines: reading the batches
(``read_batches``), parameter validation (``resolve_params``) and the top-k rule
(``keep_counts``, ``top_k_mask``, ``shared_mask``).
"""

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.feature_selector.result import BatchesFn
from models.layers import FieldEmbedding, ParallelMLP

NumpyBatch = Tuple[np.ndarray, np.ndarray, np.ndarray]
SHARED_MODES = ("union", "intersection")


# ---------------------------------------------------------------- parameters

def resolve_params(method: str, params: Optional[Mapping[str, Any]], defaults: Mapping[str, Any],
                   checks: Mapping[str, Tuple[Callable[[Any], bool], str]]) -> Dict[str, Any]:
    """``defaults`` updated with ``params``; ValueError naming the key if unknown or invalid."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"{method}: unknown parameter(s) {unknown}; known: {sorted(defaults)}")
    resolved = {**defaults, **params}
    for key, (is_valid, expected) in checks.items():
        if not is_valid(resolved[key]):
            raise ValueError(f"{method}: parameter {key!r} must be {expected}, "
                             f"got {resolved[key]!r}")
    return resolved


def is_int(value, low=None, high=None) -> bool:
    """A true integer (not a bool) in ``[low, high]``."""
    return (isinstance(value, (int, np.integer)) and not isinstance(value, bool)
            and (low is None or value >= low) and (high is None or value <= high))


def is_number(value, low=None, high=None, low_open=False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    value = float(value)
    return (math.isfinite(value) and (low is None or (value > low if low_open else value >= low))
            and (high is None or value <= high))


def _is_k(value) -> bool:
    if isinstance(value, (list, tuple)):
        return len(value) > 0 and all(is_int(x, 1) for x in value)
    return value is None or is_int(value, 1)


# Parameters of the top-k rule, common to every selector.
TOP_K_DEFAULTS: Dict[str, Any] = {
    "compress_ratio": 0.2,  # share of fields dropped per cell: k = round((1 - ratio) * N)
    "k": None,              # or fields kept per task (int, or one per task): overrides ratio
    "shared": "union",      # shared set per scenario: union (MMoE) or intersection (PLE)
    "seed": 0,
}
TOP_K_CHECKS = {
    "compress_ratio": (lambda v: is_number(v, 0.0, 1.0) and v < 1.0, "a number in [0, 1)"),
    "k": (_is_k, "null, a positive integer or a list of positive integers (one per task)"),
    "shared": (lambda v: v in SHARED_MODES, f"one of {list(SHARED_MODES)}"),
    "seed": (lambda v: is_int(v, 0), "a non-negative integer"),
}


# ---------------------------------------------------------------- reading

def read_batches(batches_fn: BatchesFn, num_scenarios: int, num_fields: int, num_tasks: int,
                 method: str, max_batches: Optional[int] = None,
                 max_rows: Optional[int] = None) -> List[NumpyBatch]:
    """One pass of ``batches_fn()`` as numpy, rows of unknown scenarios dropped.

    Stops after ``max_batches`` batches or ``max_rows`` known-scenario rows (the
    last batch is cut). Raises ValueError if a batch has the wrong shape or no
    row belongs to a known scenario.
    """
    batches, rows, seen = [], 0, 0
    for field_ids, scenario_id, labels in batches_fn():
        if max_batches is not None and seen >= max_batches:
            break
        if max_rows is not None and rows >= max_rows:
            break
        seen += 1
        field_ids = np.asarray(field_ids, np.int64)
        scenario_id = np.asarray(scenario_id, np.int64).reshape(-1)
        labels = np.asarray(labels, np.float32)
        if (field_ids.ndim != 2 or field_ids.shape[1] != num_fields
                or labels.shape != (field_ids.shape[0], num_tasks)
                or scenario_id.shape[0] != field_ids.shape[0]):
            raise ValueError(
                f"{method}: batch {seen} has field_ids {field_ids.shape}, scenario_id "
                f"{scenario_id.shape}, labels {labels.shape}; expected [B, {num_fields}], [B], "
                f"[B, {num_tasks}]")
        known = (scenario_id >= 0) & (scenario_id < num_scenarios)
        field_ids, scenario_id, labels = field_ids[known], scenario_id[known], labels[known]
        if max_rows is not None:
            keep = max_rows - rows
            field_ids, scenario_id, labels = field_ids[:keep], scenario_id[:keep], labels[:keep]
        if len(scenario_id):
            batches.append((field_ids, scenario_id, labels))
            rows += len(scenario_id)
    if not rows:
        raise ValueError(f"{method}: no rows of a known scenario (ids 0..{num_scenarios - 1}) in "
                         f"the {seen} batch(es) read; is the training split empty?")
    return batches


# ---------------------------------------------------------------- saliency

class SaliencyProbe(keras.layers.Layer):
    """Random-init probe: field embeddings through the mask ``m``, a tower per task.

    Inputs: ``field_ids`` int ``[B, F]``, ``scenario_id`` int ``[B]`` (known scenarios only).
    Output: logits ``[B, T]``; example ``b`` reads ``e_b * m[s_b, t]`` in task ``t``'s tower.
    ``mask`` is a weight ``[S, T, F]`` initialised to ones (``M = 1`` of eq. 10);
    ``base_logit`` ``[S, T]`` (see ``calibrate``) is added to every logit.
    """

    def __init__(self, vocab_sizes: Sequence[int], num_scenarios: int, num_tasks: int,
                 embedding_dim: int = 8, hidden_units: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_scenarios = int(num_scenarios)
        self.num_tasks = int(num_tasks)
        self.embedding_dim = int(embedding_dim)
        self.hidden_units = int(hidden_units)
        self.embedding = FieldEmbedding(self.vocab_sizes, self.embedding_dim)
        self.towers = ParallelMLP(self.num_tasks, [self.hidden_units, 1], output_activation=None)

    def build(self, input_shape):
        self.mask = self.add_weight(
            name="mask", shape=(self.num_scenarios, self.num_tasks, len(self.vocab_sizes)),
            initializer="ones")
        self.base_logit = self.add_weight(
            name="base_logit", shape=(self.num_scenarios, self.num_tasks), initializer="zeros",
            trainable=False)
        super().build(input_shape)

    def initialise(self, seed: int) -> None:
        """Draws every weight from ``seed`` alone, leaving TensorFlow's global seed untouched.

        Embeddings ~ U(-0.05, 0.05) (as ``FieldEmbedding``), tower kernels Glorot
        uniform per block, biases 0, mask 1. A library call must not reseed the
        process: the caller's own random ops (e.g. a shuffled tf.data pass) would
        change order after it.
        """
        if not self.built:
            self.build(None)
        rng = np.random.default_rng([seed, 0])
        if not self.embedding.built:
            self.embedding.build(None)
        self.embedding.embeddings.assign(
            rng.uniform(-0.05, 0.05, self.embedding.embeddings.shape).astype(np.float32))
        if not self.towers.built:
            self.towers.build((None, self.num_tasks, len(self.vocab_sizes) * self.embedding_dim))
        for kernel, bias in zip(self.towers.kernels, self.towers.biases):
            _, fan_in, fan_out = kernel.shape
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            kernel.assign(rng.uniform(-limit, limit, kernel.shape).astype(np.float32))
            bias.assign(np.zeros(bias.shape, np.float32))
        self.mask.assign(np.ones(self.mask.shape, np.float32))

    def calibrate(self, batches: Sequence[NumpyBatch]) -> None:
        """Sets ``base_logit[s, t]`` to the log-odds of the label rate of (s, t) in ``batches``.

        Without it the probe predicts about 0.5 everywhere, the residual ``p - y``
        has a large mean, and the saliency mostly measures how well a field's mean
        embedding shifts the logit (low-cardinality fields win, relevant or not).
        Calibrated, the residual has zero mean per cell and ``dL/dm`` measures the
        covariance of the residual with the field's contribution: its signal.
        """
        positives = np.zeros([self.num_scenarios, self.num_tasks])
        counts = np.zeros([self.num_scenarios])
        for _, scenario_id, labels in batches:
            np.add.at(positives, scenario_id, labels)
            counts += np.bincount(scenario_id, minlength=self.num_scenarios)[:self.num_scenarios]
        rate = np.clip(positives / np.maximum(counts, 1)[:, None], 1e-3, 1 - 1e-3)
        if not self.built:
            self.build(None)
        self.base_logit.assign(np.log(rate / (1 - rate)).astype(np.float32))

    def call(self, inputs):
        field_ids, scenario_id = inputs
        num_fields = len(self.vocab_sizes)
        embedded = self.embedding(field_ids)  # [B, F, D]
        example_mask = tf.gather(self.mask, scenario_id)  # [B, T, F]
        x = embedded[:, None, :, :] * example_mask[..., None]  # [B, T, F, D]
        x = tf.reshape(x, [-1, self.num_tasks, num_fields * self.embedding_dim])
        return tf.squeeze(self.towers(x), -1) + tf.gather(self.base_logit, scenario_id)  # [B, T]

    def pair_loss_sums(self, field_ids, scenario_id, labels):
        """Summed BCE per (scenario, task) ``[S, T]`` and the example count per scenario ``[S]``."""
        logits = self((field_ids, scenario_id))
        losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        sums = tf.math.unsorted_segment_sum(losses, scenario_id, self.num_scenarios)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(scenario_id, tf.float32), scenario_id,
                                              self.num_scenarios)
        return sums, counts

    def pair_losses(self, batches: Sequence[NumpyBatch]) -> np.ndarray:
        """``L_st`` ``[S, T]``: mean BCE of task t over scenario s's rows of all ``batches``."""
        sums, counts = 0.0, 0.0
        for field_ids, scenario_id, labels in batches:
            s, c = self.pair_loss_sums(tf.constant(field_ids), tf.constant(scenario_id),
                                       tf.constant(labels))
            sums, counts = sums + s.numpy(), counts + c.numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts[:, None]

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes,
                "num_scenarios": self.num_scenarios, "num_tasks": self.num_tasks,
                "embedding_dim": self.embedding_dim, "hidden_units": self.hidden_units}


def probe_saliency(probe: SaliencyProbe, batches: Sequence[NumpyBatch]) -> np.ndarray:
    """``|dL_st / dm[s, t, f]|`` at the probe's current mask, ``[S, T, F]``; NaN for unseen s.

    The gradient is accumulated over all batches before its magnitude is taken, so
    per-batch noise cancels instead of adding a positive floor to every field.
    """
    gradient = _mask_gradient(probe)
    grad_sums, counts = 0.0, 0.0
    for field_ids, scenario_id, labels in batches:
        grad, count = gradient(tf.constant(field_ids, tf.int64), tf.constant(scenario_id, tf.int64),
                               tf.constant(labels, tf.float32))
        grad_sums, counts = grad_sums + grad.numpy(), counts + count.numpy()
    counts = np.asarray(counts)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.abs(grad_sums) / np.maximum(counts, 1), np.nan)


def _mask_gradient(probe: SaliencyProbe):
    """``(field_ids, scenario_id, labels) -> (d(sum of pair loss sums)/dm [S, T, F], counts [S])``.

    One ``tf.function`` per probe, traced once (shapes left open), so a probe
    re-initialised for every init does not retrace.
    """
    if getattr(probe, "_mask_gradient_fn", None) is None:
        num_fields, num_tasks = len(probe.vocab_sizes), probe.num_tasks

        @tf.function(input_signature=[tf.TensorSpec([None, num_fields], tf.int64),
                                      tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([None, num_tasks], tf.float32)])
        def gradient(field_ids, scenario_id, labels):
            with tf.GradientTape() as tape:
                sums, count = probe.pair_loss_sums(field_ids, scenario_id, labels)
                total = tf.reduce_sum(sums)
            # d(sum of pair sums)/dm[s, t] is d(sum_st)/dm[s, t]: m[s, t] only touches (s, t).
            return tf.convert_to_tensor(tape.gradient(total, probe.mask)), count
        probe._mask_gradient_fn = gradient
    return probe._mask_gradient_fn


def field_saliency(batches, vocab_sizes, num_scenarios: int, num_tasks: int,
                   embedding_dim: int = 8, hidden_units: int = 64, seed: int = 0,
                   num_inits: int = 1) -> np.ndarray:
    """Scores ``[num_scenarios, num_tasks, num_fields]``; NaN for a scenario never seen.

    ``batches`` yields ``(field_ids [B, F], scenario_id [B], labels [B, T])``; rows
    of unknown scenarios (``scenario_id >= num_scenarios``) are skipped. With
    ``num_inits > 1`` the saliency is averaged over that many random inits: at
    random init each field value's contribution to the logit is a random
    projection, so one init ranks fields noisily. Measured on the synthetic
    default (AUC of the scores against the planted fields, per cell): 5 batches of
    2048 rows, 1 / 8 / 32 inits: 0.62 / 0.73 / 0.82; 20 batches: 0.58 / 0.84 / 0.93.
    """
    batches = read_batches(lambda: batches, num_scenarios, len(vocab_sizes), num_tasks,
                           "saliency")
    probe = SaliencyProbe(vocab_sizes, num_scenarios, num_tasks, embedding_dim, hidden_units)
    scores = []
    for init in range(num_inits):
        probe.initialise(seed * 1000 + init)  # every weight redrawn: an independent init
        probe.calibrate(batches)
        scores.append(probe_saliency(probe, batches))
    return np.mean(scores, axis=0, dtype=np.float64)


# ---------------------------------------------------------------- top-k rule

def keep_counts(num_fields: int, num_tasks: int, compress_ratio: float,
                k: Union[None, int, Sequence[int]] = None, method: str = "selector") -> np.ndarray:
    """Fields kept per task ``[T]``: ``k`` if given, else ``round((1 - compress_ratio) * N)``.

    Rounds half up (not Python's half-to-even) and keeps at least one field.
    """
    if k is None:
        keep = max(1, min(num_fields, int(math.floor((1.0 - compress_ratio) * num_fields + 0.5))))
        return np.full([num_tasks], keep, np.int64)
    counts = np.full([num_tasks], k) if np.ndim(k) == 0 else np.asarray(k)
    if counts.shape != (num_tasks,) or not all(is_int(c, 1, num_fields) for c in counts.tolist()):
        raise ValueError(f"{method}: parameter 'k' must be an integer in [1, {num_fields}] or a "
                         f"list of {num_tasks} such integers (one per task), got {k!r}")
    return counts.astype(np.int64)


def top_k_mask(scores: np.ndarray, keep) -> np.ndarray:
    """1 for the ``keep`` highest-scoring fields of each cell (all fields where scores are NaN).

    ``scores`` ``[S, T, F]``; ``keep`` an int or one count per task ``[T]``. Exactly
    ``keep`` fields per cell, ties broken towards the lower field index.
    """
    scores = np.asarray(scores, np.float64)
    keep = np.broadcast_to(np.asarray(keep, np.int64), scores.shape[-2:-1]) if scores.ndim >= 2 \
        else np.asarray(keep, np.int64)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(scores.shape[-1]), axis=-1)
    mask = (rank < keep[..., None]).astype(np.float32)
    mask[np.isnan(scores)] = 1.0
    return mask


def shared_mask(mask: np.ndarray, shared: str) -> np.ndarray:
    """Per scenario, the union or intersection of the tasks' fields: ``[S, T, F]`` -> ``[S, F]``.

    Union feeds a backbone whose bottom all tasks share (MMoE); intersection the
    shared experts of PLE/CGC (MultiSFS section 3.4).
    """
    if shared not in SHARED_MODES:
        raise ValueError(f"shared must be one of {SHARED_MODES}, got {shared!r}")
    reduce = np.max if shared == "union" else np.min
    return reduce(mask, axis=1).astype(np.float32)
