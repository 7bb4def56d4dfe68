"""MultiSFS (Wang et al., SIGIR'23): single-shot saliency merged by field-wise task relations.

In the multi-scenario setting every (scenario, task) pair is a "task" of the
paper; ``P = S * T`` pairs, pair ``p = s * T + t``.

1. Saliency ``s_pn = |dL_p / dm_pn|`` at random init, over ``num_batches`` batches
   (section 3.2, eq. 10; ``saliency.py``), averaged over ``num_inits`` inits. The
   paper averages five batches of 2048 rows per task; a (scenario, task) pair sees
   only its scenario's share of a batch, so by default five batches per scenario
   are read (``num_batches: null``).
2. Field-wise task relations (section 3.3, Algorithm 1): a data-task bipartite
   graph over the rows read (data node ``i`` -- task node ``p`` iff ``y_p^(i) = 1``;
   a row only has labels for its own scenario's pairs), each row's labels randomly
   split into auxiliary (edges the GNN sees) and test labels (what it predicts),
   a field-wise bi-directional GraphSAGE (eqs. 16-18) trained with the BCE of
   eq. (22), then ``r_n^{p,q}`` = cosine of the task node states per field (eq. 23).
3. Merged scores (eq. 24), top-k per pair and a shared set per scenario (union or
   intersection, section 3.4). ``merge: sum`` is eq. (24) as printed,
   ``s'_pn = sum_q r_n^{p,q} s_qn``; the default ``merge: mean`` is its normalised
   form (``merge_scores``): each pair's scores as shares of its total, relations
   clipped at 0, and the relation-weighted mean instead of the sum.
"""

import time
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.feature_selector import saliency
from components.feature_selector.result import BatchesFn, SelectorResult
from models.layers import FieldEmbedding

METHOD = "multisfs"
DEFAULT_PARAMS: Dict[str, Any] = {
    **saliency.TOP_K_DEFAULTS,  # compress_ratio, k, shared, seed
    "num_batches": None,       # batches read; null: 5 per scenario (the paper: 5 per task)
    "embedding_dim": 8,        # probe and GNN embedding size D
    "hidden_units": 64,        # probe tower width
    "num_inits": 32,           # random probe inits the saliency is averaged over
    "gnn": True,               # merge the saliency by the learned relations (eq. 24)
    "gnn_layers": 1,           # GraphSAGE layers L (the paper: 1, against over-smoothing)
    "gnn_epochs": 30,          # passes over the batches read
    "gnn_learning_rate": 0.01,
    "test_label_fraction": 0.5,  # share of a row's labels held out as Test(i) (eq. 13)
    "merge": "mean",           # eq. (24): "mean" (normalised, see merge_scores) or "sum"
}
MERGE_MODES = ("mean", "sum")
CHECKS = {
    **saliency.TOP_K_CHECKS,
    "num_batches": (lambda v: v is None or saliency.is_int(v, 1), "null or a positive integer"),
    "embedding_dim": (lambda v: saliency.is_int(v, 1), "a positive integer"),
    "hidden_units": (lambda v: saliency.is_int(v, 1), "a positive integer"),
    "num_inits": (lambda v: saliency.is_int(v, 1), "a positive integer"),
    "gnn": (lambda v: isinstance(v, bool), "true or false"),
    "gnn_layers": (lambda v: saliency.is_int(v, 1), "a positive integer"),
    "gnn_epochs": (lambda v: saliency.is_int(v, 1), "a positive integer"),
    "gnn_learning_rate": (lambda v: saliency.is_number(v, 0.0, low_open=True), "a positive number"),
    "test_label_fraction": (lambda v: saliency.is_number(v, 0.0, 1.0, low_open=True),
                            "a number in (0, 1]"),
    "merge": (lambda v: v in MERGE_MODES, f"one of {list(MERGE_MODES)}"),
}


class FieldwiseSAGE(keras.layers.Layer):
    """One field-wise, bi-directional GraphSAGE layer (MultiSFS eqs. 16-18).

    Inputs: data states ``E`` ``[B, N, D]``, task states ``Z`` ``[P, N, D]`` and the
    auxiliary adjacency ``A`` ``[B, P]`` (1 = edge). Outputs ``(E', Z')``, same shapes:

        e'_n = U_n [Mean_{z in N(x)} ReLU(W^t_n z_n), e_n]      (eqs. 16, 18)
        z'_n = U_n [Mean_{x in N(z)} ReLU(W^d_n e_n), z_n]      (eq. 17)

    ``W^t`` carries task->data messages, ``W^d`` data->task; every field ``n`` has
    its own ``U_n``, ``W_n`` so fields never mix. A node without neighbours gets a
    zero message.
    """

    def __init__(self, num_fields: int, dim: int, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_fields = int(num_fields)
        self.dim = int(dim)
        self.seed = seed

    def build(self, input_shape):
        n, d = self.num_fields, self.dim
        init = lambda offset: keras.initializers.GlorotUniform(  # noqa: E731
            None if self.seed is None else self.seed + offset)
        self.w_task = self.add_weight(name="w_task_to_data", shape=(n, d, d), initializer=init(1))
        self.w_data = self.add_weight(name="w_data_to_task", shape=(n, d, d), initializer=init(2))
        self.u = self.add_weight(name="u", shape=(n, 2 * d, d), initializer=init(3))
        super().build(input_shape)

    def call(self, inputs):
        e, z, adjacency = inputs
        adjacency = tf.cast(adjacency, e.dtype)
        data_degree = tf.maximum(tf.reduce_sum(adjacency, 1, keepdims=True), 1.0)  # [B, 1]
        task_degree = tf.maximum(tf.reduce_sum(adjacency, 0), 1.0)[:, None]  # [P, 1]
        message_t = tf.nn.relu(tf.einsum("pnd,nde->pne", z, self.w_task))  # task -> data
        message_d = tf.nn.relu(tf.einsum("bnd,nde->bne", e, self.w_data))  # data -> task
        to_data = tf.einsum("bp,pne->bne", adjacency / data_degree, message_t)
        to_task = tf.einsum("bp,bne->pne", adjacency / tf.transpose(task_degree), message_d)
        e_next = tf.einsum("bnk,nkd->bnd", tf.concat([to_data, e], -1), self.u)
        z_next = tf.einsum("pnk,nkd->pnd", tf.concat([to_task, z], -1), self.u)
        return e_next, z_next

    def get_config(self):
        return {**super().get_config(), "num_fields": self.num_fields, "dim": self.dim,
                "seed": self.seed}


class TaskRelationGNN(keras.layers.Layer):
    """The data-task GNN of Algorithm 1: embeddings ``V'``, task nodes ``Z``, L SAGE layers.

    Inputs: ``field_ids`` ``[B, F]`` and the auxiliary adjacency ``[B, P]``.
    Outputs: ``y_hat`` ``[B, P]`` (eq. 21) and the final task states ``Z_L`` ``[P, F, D]``.
    """

    def __init__(self, vocab_sizes: Sequence[int], num_pairs: int, embedding_dim: int = 8,
                 num_layers: int = 2, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.num_pairs = int(num_pairs)
        self.embedding_dim = int(embedding_dim)
        self.num_layers = int(num_layers)
        self.seed = int(seed)
        self.embedding = FieldEmbedding(self.vocab_sizes, self.embedding_dim)  # V', eq. (11)
        self.sage = [FieldwiseSAGE(len(self.vocab_sizes), self.embedding_dim, seed + 10 * i)
                     for i in range(self.num_layers)]

    def build(self, input_shape):
        self.task_nodes = self.add_weight(  # Z, eq. (12): one D-vector per (pair, field)
            name="task_nodes", shape=(self.num_pairs, len(self.vocab_sizes), self.embedding_dim),
            initializer=keras.initializers.RandomNormal(stddev=0.1, seed=self.seed))
        # V' from the seed too (FieldEmbedding's own initializer is unseeded).
        self.embedding.build(None)
        self.embedding.embeddings.assign(np.random.default_rng([self.seed, 2]).uniform(
            -0.05, 0.05, self.embedding.embeddings.shape).astype(np.float32))
        super().build(input_shape)

    def call(self, inputs):
        field_ids, adjacency = inputs
        e, z = self.embedding(field_ids), self.task_nodes  # eqs. (14), (15)
        for layer in self.sage:
            e, z = layer((e, z, adjacency))
        # Eq. (21) sums N per-field sigmoids, which is not a probability for the BCE of
        # eq. (22); we average them instead (same field-level scores, range (0, 1)).
        y_hat = tf.reduce_mean(tf.sigmoid(tf.einsum("bnd,pnd->bpn", e, z)), -1)
        return y_hat, z

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes,
                "num_pairs": self.num_pairs, "embedding_dim": self.embedding_dim,
                "num_layers": self.num_layers, "seed": self.seed}


def split_labels(scenario_id: np.ndarray, labels: np.ndarray, num_scenarios: int,
                 test_fraction: float, rng: np.random.Generator):
    """Aux adjacency ``[B, P]`` and test-label targets/weights ``[B, P]`` (eq. 13).

    Row ``i`` has labels only for its own scenario's ``T`` pairs; each is held out
    as a test label with probability ``test_fraction`` (at least one per row), the
    rest are auxiliary and become edges where positive. Partitions differ per row.
    """
    rows, num_tasks = labels.shape
    test = rng.random((rows, num_tasks)) < test_fraction
    none = ~test.any(1)
    test[none, rng.integers(0, num_tasks, int(none.sum()))] = True
    num_pairs = num_scenarios * num_tasks
    columns = scenario_id[:, None] * num_tasks + np.arange(num_tasks)[None, :]  # [B, T]
    adjacency = np.zeros((rows, num_pairs), np.float32)
    targets = np.zeros((rows, num_pairs), np.float32)
    weights = np.zeros((rows, num_pairs), np.float32)
    row_index = np.repeat(np.arange(rows)[:, None], num_tasks, 1)
    adjacency[row_index, columns] = np.where(test, 0.0, labels > 0.5)
    targets[row_index, columns] = labels
    weights[row_index, columns] = test.astype(np.float32)
    return adjacency, targets, weights


def cosine_relations(z: np.ndarray) -> np.ndarray:
    """``r[n, p, q]`` = cosine of ``z[p, n]`` and ``z[q, n]``, ones on the diagonal (eq. 23).

    ``z`` ``[P, N, D]`` -> ``[N, P, P]``, symmetric. A zero vector has relation 0
    to every other pair.
    """
    z = np.transpose(np.asarray(z, np.float64), (1, 0, 2))  # [N, P, D]
    norm = np.linalg.norm(z, axis=-1, keepdims=True)
    unit = z / np.where(norm > 0, norm, 1.0)
    relations = np.clip(np.einsum("npd,nqd->npq", unit, unit), -1.0, 1.0)
    relations = (relations + np.transpose(relations, (0, 2, 1))) / 2.0
    relations[:, np.arange(z.shape[1]), np.arange(z.shape[1])] = 1.0
    return relations


def merge_scores(scores: np.ndarray, relations: np.ndarray, mode: str = "sum") -> np.ndarray:
    """Eq. (24): ``[P, N]`` scores and ``[N, P, P]`` relations -> merged ``[P, N]``.

    ``mode="sum"``, eq. (24) as printed: ``s'_pn = sum_q r_n^{p,q} s_qn``. The paper
    prints ``s_tn`` inside the sum, which would only rescale ``s_tn`` by
    ``sum_i r_n^{t,i}``; the text ("modified through a weighted sum" of related
    tasks' importance) gives ``s_in``.

    ``mode="mean"``, its normalised form::

        s'_pn = sum_q r+_n^{p,q} s^_qn / sum_q r+_n^{p,q},   s^_qn = s_qn / sum_m s_qm,
        r+ = max(r, 0)

    Three defects of the sum, each measured on the synthetic default (F1 of top-16
    against the planted fields: raw saliency 0.908, sum 0.856, mean 0.921):
    (1) the sum grows with ``sum_q r_n^{p,q}``, so a field on which every pair looks
    alike is promoted over a relevant field whose pairs differ (mean relation 0.94
    between pairs a field is irrelevant to, 0.89 between pairs it is relevant
    to); the weighted mean ranks by importance, not by agreement. (2) The
    saliency's scale differs by pair (a rare label has a small residual, hence
    small gradients), so one pair's raw scores would outweigh another's; as
    shares of the pair's total the
    ranking within each pair is unchanged and pairs weigh alike (the paper's
    objection to normalising, section 3.2, is to normalising over all pairs and
    fields at once). (3) A negative cosine (a field whose values move two labels
    in opposite directions) would subtract one pair's importance from another's;
    the field matters to both, so it gets no weight instead. The diagonal is 1,
    so every pair keeps its own score in the mean.

    Pairs without scores (NaN: a scenario with no rows) take no part and stay NaN.
    """
    if mode not in MERGE_MODES:
        raise ValueError(f"merge must be one of {list(MERGE_MODES)}, got {mode!r}")
    scores = np.asarray(scores, np.float64)
    known = ~np.isnan(scores)
    relations = np.asarray(relations, np.float64)
    if mode == "sum":
        merged = np.einsum("npq,qn->pn", relations, np.where(known, scores, 0.0))
        return np.where(known, merged, np.nan)
    totals = np.nansum(scores, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(known & (totals > 0), scores / totals, 0.0)
    weights = np.maximum(relations, 0.0) * known.T[:, None, :]  # [N, P, Q]: known q only
    with np.errstate(invalid="ignore", divide="ignore"):
        merged = np.einsum("npq,qn->pn", weights, shares) / np.einsum("npq->pn", weights)
    return np.where(known, merged, np.nan)


def learn_relations(batches: Sequence[saliency.NumpyBatch], vocab_sizes: Sequence[int],
                    num_scenarios: int, num_tasks: int, embedding_dim: int = 8,
                    num_layers: int = 2, epochs: int = 30, learning_rate: float = 0.01,
                    test_fraction: float = 0.5, seed: int = 0) -> Dict[str, Any]:
    """Algorithm 1: train the data-task GNN on ``batches``; relations ``[N, P, P]`` and losses.

    Each batch is one bipartite graph (its rows and all ``P`` task nodes), one
    Adam step per batch and epoch. The relations use ``Z_L``, the task states
    after the ``L`` layers on the graph of all rows read.
    """
    rng = np.random.default_rng([seed, 1])
    num_pairs = num_scenarios * num_tasks
    graphs = []
    for field_ids, scenario_id, labels in batches:
        graphs.append((tf.constant(field_ids),) + tuple(
            tf.constant(a) for a in split_labels(scenario_id, labels, num_scenarios,
                                                 test_fraction, rng)))
    model = TaskRelationGNN(vocab_sizes, num_pairs, embedding_dim, num_layers, seed)
    model((graphs[0][0], graphs[0][1]))  # Builds the weights outside tf.function.
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(field_ids, adjacency, targets, weights):
        with tf.GradientTape() as tape:
            y_hat, _ = model((field_ids, adjacency))
            y_hat = tf.clip_by_value(y_hat, 1e-7, 1.0 - 1e-7)
            bce = -(targets * tf.math.log(y_hat) + (1.0 - targets) * tf.math.log(1.0 - y_hat))
            loss = tf.reduce_sum(bce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)  # (22)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    losses = []
    for _ in range(epochs):
        losses.append(float(np.mean([step(*graph).numpy() for graph in graphs])))
    field_ids = tf.concat([g[0] for g in graphs], 0)
    adjacency = tf.concat([g[1] for g in graphs], 0)
    _, z_final = model((field_ids, adjacency))
    return {"relations": cosine_relations(z_final.numpy()), "loss_per_epoch": losses}


def select(batches_fn: BatchesFn, vocab_sizes: Sequence[int], num_scenarios: int,
           num_tasks: int, params: Optional[Mapping[str, Any]] = None) -> SelectorResult:
    """MultiSFS field selection per (scenario, task); see the module docstring.

    ``diagnostics``: ``raw_scores`` ``[S, T, F]`` (before eq. 24), ``relations``
    ``[F, P, P]`` (pair ``p = s * T + t``; absent when ``gnn`` is off),
    ``shared_mask`` ``[S, F]``, ``gnn_loss_per_epoch``, ``rows_read``,
    ``saliency_seconds``, ``gnn_seconds``.
    """
    p = saliency.resolve_params(METHOD, params, DEFAULT_PARAMS, CHECKS)
    num_fields = len(vocab_sizes)
    keep = saliency.keep_counts(num_fields, num_tasks, p["compress_ratio"], p["k"], METHOD)
    num_batches = 5 * num_scenarios if p["num_batches"] is None else p["num_batches"]
    batches = saliency.read_batches(batches_fn, num_scenarios, num_fields, num_tasks, METHOD,
                                    max_batches=num_batches)

    start = time.perf_counter()
    raw = saliency.field_saliency(iter(batches), vocab_sizes, num_scenarios, num_tasks,
                                  p["embedding_dim"], p["hidden_units"], p["seed"],
                                  p["num_inits"])
    saliency_seconds = time.perf_counter() - start

    diagnostics: Dict[str, Any] = {"raw_scores": raw,
                                   "rows_read": int(sum(len(b[1]) for b in batches)),
                                   "saliency_seconds": saliency_seconds, "gnn_seconds": 0.0}
    scores = raw
    if p["gnn"]:
        start = time.perf_counter()
        learned = learn_relations(batches, vocab_sizes, num_scenarios, num_tasks,
                                  p["embedding_dim"], p["gnn_layers"], p["gnn_epochs"],
                                  p["gnn_learning_rate"], p["test_label_fraction"], p["seed"])
        diagnostics["gnn_seconds"] = time.perf_counter() - start
        diagnostics["relations"] = learned["relations"]
        diagnostics["gnn_loss_per_epoch"] = learned["loss_per_epoch"]
        merged = merge_scores(raw.reshape(num_scenarios * num_tasks, num_fields),
                              learned["relations"], p["merge"])
        scores = merged.reshape(num_scenarios, num_tasks, num_fields)

    mask = saliency.top_k_mask(scores, keep)
    diagnostics["shared_mask"] = saliency.shared_mask(mask, p["shared"])
    resolved = {**p, "k": keep.tolist(), "num_batches": num_batches}
    return SelectorResult(scores=scores, mask=mask, params=resolved, diagnostics=diagnostics)
