"""Building blocks shared by every MSMT architecture: embedding, MLPs, gates, heads."""

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

# Up to this many table rows, the embedding gradient is a dense ``[rows, dim]`` tensor.
DENSE_GRADIENT_MAX_ROWS = 1 << 17


@tf.custom_gradient
def gather_with_dense_gradient(table, indices):
    """``tf.gather(table, indices)`` whose gradient for ``table`` is dense, not IndexedSlices.

    Adam's sparse path de-duplicates the indices (``unique`` + segment sum) and then
    scatters into its slots, yet it decays and updates the whole table every step
    anyway; for a table smaller than a batch's lookups, one segment sum into a dense
    gradient does the same update for less work.
    """
    def grad(upstream):
        rows = tf.shape(table, out_type=tf.int64)[0]
        flat = tf.reshape(upstream, tf.stack([-1, tf.shape(upstream)[-1]]))
        return tf.math.unsorted_segment_sum(flat, tf.reshape(indices, [-1]), rows), None
    return tf.gather(table, indices), grad


@keras.utils.register_keras_serializable(package="msmt")
class FieldEmbedding(keras.layers.Layer):
    """Looks up every field in one fused table (field offsets), with an optional field mask.

    Inputs: ``field_ids`` int ``[batch, num_fields]``, each column in its own
    vocabulary ``[0, vocab_sizes[f])``.
    Output: ``[batch, num_fields, embedding_dim]``. Fields whose ``field_mask`` is 0
    contribute zeros (and receive no gradient). A table of at most
    ``DENSE_GRADIENT_MAX_ROWS`` rows gets a dense gradient (``gather_with_dense_gradient``);
    a larger one keeps the sparse ``IndexedSlices`` gradient.
    """

    def __init__(self, vocab_sizes: Sequence[int], embedding_dim: int,
                 field_mask: Optional[Sequence[float]] = None,
                 embeddings_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.embedding_dim = int(embedding_dim)
        self.field_mask = None if field_mask is None else [float(m) for m in field_mask]
        if self.field_mask is not None and len(self.field_mask) != len(self.vocab_sizes):
            raise ValueError(f"field_mask has {len(self.field_mask)} entries for "
                             f"{len(self.vocab_sizes)} fields")
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        offsets = [0]
        for size in self.vocab_sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self._offsets = tf.constant(offsets, tf.int64)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(sum(self.vocab_sizes), self.embedding_dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
            regularizer=self.embeddings_regularizer)
        super().build(input_shape)

    def call(self, field_ids):
        field_ids = tf.cast(field_ids, tf.int64)
        # Ids outside a field's vocabulary would read a neighbour's rows: clip them.
        upper = tf.constant(self.vocab_sizes, tf.int64) - 1
        field_ids = tf.clip_by_value(field_ids, 0, upper)
        table_ids = field_ids + self._offsets
        if sum(self.vocab_sizes) <= DENSE_GRADIENT_MAX_ROWS:
            # A tensor, not the variable (under a mixed policy, the compute-dtype read).
            embedded = gather_with_dense_gradient(tf.convert_to_tensor(self.embeddings), table_ids)
        else:
            embedded = tf.gather(self.embeddings, table_ids)
        if self.field_mask is not None:
            embedded *= tf.constant(self.field_mask, embedded.dtype)[:, None]
        return embedded

    def get_config(self):
        return {**super().get_config(), "vocab_sizes": self.vocab_sizes,
                "embedding_dim": self.embedding_dim, "field_mask": self.field_mask,
                "embeddings_regularizer": keras.regularizers.serialize(self.embeddings_regularizer)}


@keras.utils.register_keras_serializable(package="msmt")
class MLP(keras.layers.Layer):
    """A stack of dense layers: ``[batch, d_in] -> [batch, units[-1]]``."""

    def __init__(self, units: Sequence[int], activation: str = "relu", dropout: float = 0.0,
                 output_activation: Optional[str] = "same", **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.activation = activation
        self.dropout = float(dropout)
        self.output_activation = output_activation
        last_activation = activation if output_activation == "same" else output_activation
        self._dense = [keras.layers.Dense(u, activation=activation if i < len(self.units) - 1
                                          else last_activation, name=f"dense_{i}")
                       for i, u in enumerate(self.units)]
        self._dropout = [keras.layers.Dropout(self.dropout) for _ in self.units]

    def call(self, inputs, training=None):
        x = inputs
        for dense, dropout in zip(self._dense, self._dropout):
            x = dense(x)
            if self.dropout:
                x = dropout(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation,
                "dropout": self.dropout, "output_activation": self.output_activation}


@keras.utils.register_keras_serializable(package="msmt")
class ParallelMLP(keras.layers.Layer):
    """``num_blocks`` independent MLPs evaluated as one batched matmul per layer.

    Used for a set of experts (shared input) and for a set of towers (one input
    per block), without a Python loop over blocks.

    Inputs: ``[batch, d_in]`` (every block reads the same input) or
    ``[batch, num_blocks, d_in]`` (block ``k`` reads slice ``k``).
    Output: ``[batch, num_blocks, units[-1]]``. ``call(..., weights=...)`` runs a subset
    of the blocks instead: per layer ``(kernel [k, d_in, d_out], bias [k, d_out])`` (e.g.
    one scenario's blocks on its own examples, ``models.layers.routing``), output
    ``[batch, k, units[-1]]``.
    """

    def __init__(self, num_blocks: int, units: Sequence[int], activation: str = "relu",
                 dropout: float = 0.0, output_activation: Optional[str] = "same", **kwargs):
        super().__init__(**kwargs)
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = int(num_blocks)
        self.units = [int(u) for u in units]
        self.activation = activation
        self.dropout = float(dropout)
        self.output_activation = output_activation
        self._dropout = keras.layers.Dropout(self.dropout)

    def build(self, input_shape):
        d_in = int(input_shape[-1])
        self.kernels, self.biases = [], []
        for i, u in enumerate(self.units):
            self.kernels.append(self.add_weight(
                name=f"kernel_{i}", shape=(self.num_blocks, d_in, u),
                initializer=keras.initializers.GlorotUniform()))
            self.biases.append(self.add_weight(name=f"bias_{i}", shape=(self.num_blocks, u),
                                               initializer="zeros"))
            d_in = u
        super().build(input_shape)

    def call(self, inputs, training=None, weights=None):
        # Between layers the blocks are block-major, [K, B, d]: every layer that reads
        # per-block inputs is one batched [K, B, d_in] x [K, d_in, d_out] matmul whose
        # gradients are batched GEMMs too (einsum "bki,kio->bko" transposes inside its
        # kernel gradient: 1.8x slower at MMoE's second expert layer, benchmarks/RESULTS.md).
        x = inputs
        last = len(self.units) - 1
        block_major = False
        for i, (kernel, bias) in enumerate(weights or zip(self.kernels, self.biases)):
            activation = keras.activations.get(
                self.activation if i < last or self.output_activation == "same"
                else self.output_activation)
            k, d_in, d_out = kernel.shape
            if x.shape.rank == 2:
                # Every block reads x: one [B, d_in] x [d_in, K * d_out] GEMM with a 2-D
                # bias (fused MatMul + BiasAdd + activation; einsum's batched form also
                # tiles x in its gradient).
                fused = tf.reshape(tf.transpose(kernel, [1, 0, 2]), [d_in, k * d_out])
                x = tf.nn.bias_add(tf.matmul(x, fused), tf.reshape(bias, [-1]))
                if activation is keras.activations.softmax:  # Per block, not across blocks.
                    x = activation(tf.reshape(x, [-1, k, d_out]))
                else:
                    x = tf.reshape(activation(x), [-1, k, d_out])
                if i < last:
                    x, block_major = tf.transpose(x, [1, 0, 2]), True
            else:
                if not block_major:
                    x, block_major = tf.transpose(x, [1, 0, 2]), True
                x = activation(tf.matmul(x, kernel) + bias[:, None, :])
            if self.dropout:
                x = self._dropout(x, training=training)
        return tf.transpose(x, [1, 0, 2]) if block_major else x

    def get_config(self):
        return {**super().get_config(), "num_blocks": self.num_blocks, "units": self.units,
                "activation": self.activation, "dropout": self.dropout,
                "output_activation": self.output_activation}


@keras.utils.register_keras_serializable(package="msmt")
class SoftmaxGate(keras.layers.Layer):
    """``num_gates`` softmax gates over ``num_experts`` experts (MMoE eq. 5).

    Input: ``[batch, d_in]``. Output: gate weights ``[batch, num_gates, num_experts]``,
    each row summing to 1.
    """

    def __init__(self, num_gates: int, num_experts: int, **kwargs):
        super().__init__(**kwargs)
        self.num_gates = int(num_gates)
        self.num_experts = int(num_experts)
        self._dense = keras.layers.Dense(self.num_gates * self.num_experts, name="gate")

    def call(self, inputs):
        logits = tf.reshape(self._dense(inputs), [-1, self.num_gates, self.num_experts])
        return tf.nn.softmax(logits, axis=-1)

    def get_config(self):
        return {**super().get_config(), "num_gates": self.num_gates,
                "num_experts": self.num_experts}


def flatten_fields(embedded):
    """``[B, F, D] -> [B, F * D]`` with a static last dimension."""
    return tf.reshape(embedded, [-1, embedded.shape[1] * embedded.shape[2]])


def mix_experts(gate_weights, expert_outputs):
    """``[B, G, E] x [B, E, H] -> [B, G, H]``: each gate's weighted sum of experts.

    A batched matmul (its gradients are batched matmuls; einsum's were 2.8x slower here).
    """
    return tf.matmul(gate_weights, expert_outputs)


@keras.utils.register_keras_serializable(package="msmt")
class TaskProbabilities(keras.layers.Layer):
    """Task logits to probabilities, with ESMM composition for dependent tasks.

    Input: ``task_logits`` ``[batch, num_scenarios, num_tasks]``. Output:
    probabilities of the same shape. With ``task_parents[t] = p``, task ``t``
    is only observed after task ``p`` (conversion after click): its logit is
    read as the conditional (pCVR) and its output is the joint,
    ``p_t = sigmoid(logit_t) * p_p`` (ESMM, Ma et al. SIGIR'18, eq. 1:
    pCTCVR = pCTR x pCVR), so its loss on the joint label trains the
    conditional over the entire impression space.
    """

    def __init__(self, task_parents: Optional[Sequence[Optional[int]]] = None, **kwargs):
        super().__init__(**kwargs)
        self.task_parents = None if task_parents is None else [
            None if p is None else int(p) for p in task_parents]
        for t, p in enumerate(self.task_parents or []):
            if p is not None and not 0 <= p < t:
                raise ValueError(f"task {t}'s parent must be an earlier task, got {p}")

    def call(self, task_logits):
        conditional = tf.sigmoid(task_logits)
        if not self.task_parents or all(p is None for p in self.task_parents):
            return conditional
        joint = []
        for t, parent in enumerate(self.task_parents):
            p_t = conditional[..., t]
            joint.append(p_t if parent is None else p_t * joint[parent])
        return tf.stack(joint, axis=-1)

    def get_config(self):
        return {**super().get_config(), "task_parents": self.task_parents}


@keras.utils.register_keras_serializable(package="msmt")
class ScenarioSelect(keras.layers.Layer):
    """Picks each example's own-scenario prediction out of the all-scenario ones.

    Inputs: ``probabilities`` ``[batch, num_scenarios, num_tasks]`` and
    ``scenario_id`` ``[batch]`` in ``[0, num_scenarios]``, where ``num_scenarios``
    is the out-of-vocabulary id of a scenario never seen in training.
    Output: ``[batch, num_tasks]``. For an unseen scenario the output is the
    traffic-share-weighted mean of the known scenarios' probabilities
    (``scenario_prior``), the documented serving behaviour. Scenarios other than
    the example's own get exactly zero gradient.
    """

    def __init__(self, scenario_prior: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        prior = [float(p) for p in scenario_prior]
        total = sum(prior)
        if not prior or total <= 0:
            raise ValueError("scenario_prior must be non-empty with a positive sum")
        self.scenario_prior = [p / total for p in prior]

    def call(self, probabilities, scenario_id):
        num_scenarios = len(self.scenario_prior)
        own = tf.one_hot(tf.cast(scenario_id, tf.int32), num_scenarios, dtype=probabilities.dtype)
        known = tf.reduce_sum(own, axis=-1, keepdims=True)
        prior = tf.constant(self.scenario_prior, probabilities.dtype)[None, :]
        weights = own + (1.0 - known) * prior  # [B, S]
        return tf.einsum("bs,bst->bt", weights, probabilities)

    def get_config(self):
        return {**super().get_config(), "scenario_prior": self.scenario_prior}
