"""AESM² (Zou et al., SIGIR'22): automatic expert selection for multi-scenario multi-task search.

Multi-scenario layers, one per level of the scenario hierarchy (coarse to fine), are
stacked under a multi-task layer (paper Fig. 3). Every layer is an MMoE whose gates
select, per instance, ``top_k_specific`` experts specific to the current scenario (or
task) and ``top_k_shared`` experts shared by all of them (eqs. 7-14). Equation numbers
refer to the paper (``../shared/seeds/002_01aca1895dfccf34.txt``).

Where this differs from the authors' code (``alipay/oes_msl_mtl``), on purpose:

- unselected experts are masked *additively* (eq. 14: ``-inf``, here ``-1e9``, before the
  softmax); the authors multiply the logits by the mask, which flips the sign of negative
  logits and hands the weight to the unselected experts;
- the Gaussian noise (eq. 8) perturbs the *selection* only; the mixture weights and the
  auxiliary loss (eq. 20) read the noise-free gates;
- shared experts are chosen among the experts not already chosen as specific, so exactly
  ``top_k_specific + top_k_shared`` experts are active per instance (the union in eq. 14
  may otherwise collapse);
- any number of scenarios, hierarchy levels and tasks.
"""

import math
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import ParallelMLP, flatten_fields

_MASK_VALUE = -1e9  # Additive mask: exp(-1e9 - max) is exactly 0 in float32.


def _top_k_mask(scores, k: int, num_experts: int):
    """``[..., n] -> [..., n]``: 1.0 at the ``k`` highest scores of each row (vectorised)."""
    if k == 0:
        return tf.zeros_like(scores)
    indices = tf.math.top_k(scores, k=k, sorted=False).indices
    return tf.reduce_sum(tf.one_hot(indices, num_experts, dtype=scores.dtype), axis=-2)


def _additive_mask(keep):
    """``0`` where ``keep`` is 1, ``-1e9`` (``-inf`` for a softmax) elsewhere: add it to logits."""
    return tf.where(keep > 0, tf.zeros([], keep.dtype), tf.cast(_MASK_VALUE, keep.dtype))


def _masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty)."""
    mask = tf.cast(mask, values.dtype)
    return tf.reduce_sum(values * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)


@keras.utils.register_keras_serializable(package="msmt")
class ExpertSelectionGate(keras.layers.Layer):
    """``num_gates`` gates over ``num_experts`` experts with per-instance expert selection.

    One gate per scenario (multi-scenario layer, eq. 8) or per task (multi-task layer,
    eq. 16)::

        g_j = S_j [x, s, t_j] + eta_j                   (eqs. 8, 16; t_j only for tasks)
        G~ = softmax over the gates of G[k, :]           (eq. 9, per expert k)
        h^p_k = -KL(p_c, G~[k, :]) = log G~[k, c]        (eq. 11, p_c one-hot current gate)
        h^q_k = -KL(q, G~[k, :]),  q uniform             (eq. 13)
        E_sp = TopK(h^p), E_sh = TopK(h^q over experts not in E_sp)     (eqs. 10, 12)
        g^_c[k] = g_c[k] if k in E_sp u E_sh else -inf   (eq. 14, additive mask)
        weights = softmax(g^_c)

    ``eta`` is Gaussian noise with standard deviation ``noise_scale * num_experts``, drawn
    in training only and used for the selection only. The auxiliary loss (eq. 20, per
    layer) is ``lambda_sp`` x the mean KL of the selected specific experts to ``p_c`` plus
    ``lambda_sh`` x the mean KL of the selected shared experts to ``q``, over the outputs
    whose ``aux_mask`` is 1; each term is added with ``add_loss``.

    Inputs: ``[x, s]``, ``x`` ``[batch, d]`` or ``[batch, rows, d]`` (the layer's input) and
    ``s`` ``[batch, rows, e]`` (the scenario embedding ``s`` of each row; a row is one
    scenario context, e.g. one candidate scenario); ``current`` int ``[batch, rows, c]``,
    for each of ``c`` outputs per row the gate that is "current" (the scenario or task
    whose mixture is wanted), in ``[0, num_gates)``; ``aux_mask`` ``[batch, rows, c]``
    (optional, 1 where the output's selection is trained by the auxiliary loss).
    Output: mixture weights ``[batch, rows, c, num_experts]``: exactly
    ``top_k_specific + top_k_shared`` non-zero entries per output, summing to 1.
    """

    def __init__(self, num_gates: int, num_experts: int, top_k_specific: int,
                 top_k_shared: int, noise_scale: float = 0.0, lambda_sp: float = 0.0,
                 lambda_sh: float = 0.0, gate_embedding_dim: int = 0,
                 seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_gates, self.num_experts = int(num_gates), int(num_experts)
        self.top_k_specific, self.top_k_shared = int(top_k_specific), int(top_k_shared)
        if self.top_k_specific < 0 or self.top_k_shared < 0:
            raise ValueError("top_k_specific and top_k_shared must be >= 0")
        if not 1 <= self.top_k_specific + self.top_k_shared <= self.num_experts:
            raise ValueError(f"top_k_specific + top_k_shared must be in [1, {self.num_experts}], "
                             f"got {self.top_k_specific} + {self.top_k_shared}")
        self.noise_scale = float(noise_scale)
        self.lambda_sp, self.lambda_sh = float(lambda_sp), float(lambda_sh)
        self.gate_embedding_dim = int(gate_embedding_dim)
        self.seed = seed
        self._noise = keras.layers.GaussianNoise(self.noise_scale * self.num_experts, seed=seed,
                                                 name="eta")

    def build(self, input_shape):
        x_shape, s_shape = input_shape
        width = self.num_gates * self.num_experts  # Gate j's scores: columns [j*n, (j+1)*n).
        self.kernel_x = self.add_weight(name="kernel_x", shape=(int(x_shape[-1]), width),
                                        initializer="glorot_uniform")
        self.kernel_s = self.add_weight(name="kernel_s", shape=(int(s_shape[-1]), width),
                                        initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros")
        if self.gate_embedding_dim:  # Task embeddings t_j and their part of T_j (eq. 16).
            self.gate_embeddings = self.add_weight(
                name="gate_embeddings", shape=(self.num_gates, self.gate_embedding_dim),
                initializer=keras.initializers.RandomUniform(-0.05, 0.05))
            self.kernel_t = self.add_weight(
                name="kernel_t", shape=(self.num_gates, self.gate_embedding_dim, self.num_experts),
                initializer="glorot_uniform")
        super().build(input_shape)

    def gate_logits(self, inputs):
        """``G`` (eqs. 7-8/16 without noise): ``[batch, rows, num_gates, num_experts]``."""
        x, s = inputs
        logits = tf.tensordot(s, self.kernel_s, axes=1) + self.bias  # [B, R, m*n]
        x_part = tf.tensordot(x, self.kernel_x, axes=1)
        logits += x_part[:, None, :] if x.shape.rank == 2 else x_part
        shape = tf.concat([tf.shape(logits)[:2], [self.num_gates, self.num_experts]], axis=0)
        logits = tf.reshape(logits, shape)
        if self.gate_embedding_dim:
            logits += tf.einsum("je,jen->jn", self.gate_embeddings, self.kernel_t)
        return logits

    def call(self, inputs, current, aux_mask=None, training=None):
        m, n = self.num_gates, self.num_experts
        g = self.gate_logits(inputs)  # [B, R, m, n]
        current = tf.clip_by_value(tf.cast(current, tf.int32), 0, m - 1)  # [B, R, c]
        log_m = math.log(m)

        # Selection (eqs. 9-13) on the noisy scores; top_k indices carry no gradient.
        log_g_tilde = tf.nn.log_softmax(self._noise(g, training=training), axis=-2)  # eq. 9
        h_p = tf.gather(log_g_tilde, current, axis=2, batch_dims=2)  # [B, R, c, n] eq. 11
        h_q = log_m + tf.reduce_mean(log_g_tilde, axis=-2, keepdims=True)  # [B, R, 1, n] eq. 13
        specific = _top_k_mask(h_p, self.top_k_specific, n)  # eq. 10
        shared = _top_k_mask(h_q + _additive_mask(1.0 - specific), self.top_k_shared, n)  # eq. 12
        selected = specific + shared

        # Eq. 14, additive: unselected experts get -inf before the softmax.
        g_current = tf.gather(g, current, axis=2, batch_dims=2)  # [B, R, c, n]
        weights = tf.nn.softmax(g_current + _additive_mask(selected), axis=-1)

        if aux_mask is not None and (self.lambda_sp or self.lambda_sh):  # eq. 20
            log_g_tilde = tf.nn.log_softmax(g, axis=-2)  # Noise-free G~.
            kl_p = -tf.gather(log_g_tilde, current, axis=2, batch_dims=2)
            kl_q = -(log_m + tf.reduce_mean(log_g_tilde, axis=-2, keepdims=True))
            aux_mask = tf.broadcast_to(tf.cast(aux_mask, g.dtype), tf.shape(current))
            if self.top_k_specific and self.lambda_sp:
                kl_sp = tf.reduce_sum(kl_p * specific, axis=-1) / self.top_k_specific
                self.add_loss(self.lambda_sp * _masked_mean(kl_sp, aux_mask))
            if self.top_k_shared and self.lambda_sh:
                kl_sh = tf.reduce_sum(kl_q * shared, axis=-1) / self.top_k_shared
                self.add_loss(self.lambda_sh * _masked_mean(kl_sh, aux_mask))
        return weights

    def gate_parameters(self, gate: int):
        """``(variable, index)`` pairs of gate ``gate``'s ``S_j`` (its scores' columns)."""
        columns = slice(gate * self.num_experts, (gate + 1) * self.num_experts)
        pairs = [(self.kernel_x, (slice(None), columns)), (self.kernel_s, (slice(None), columns)),
                 (self.bias, (columns,))]
        if self.gate_embedding_dim:
            pairs += [(self.gate_embeddings, (gate,)), (self.kernel_t, (gate,))]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_gates": self.num_gates,
                "num_experts": self.num_experts, "top_k_specific": self.top_k_specific,
                "top_k_shared": self.top_k_shared, "noise_scale": self.noise_scale,
                "lambda_sp": self.lambda_sp, "lambda_sh": self.lambda_sh,
                "gate_embedding_dim": self.gate_embedding_dim, "seed": self.seed}


@keras.utils.register_keras_serializable(package="msmt")
class MultiScenarioLayer(keras.layers.Layer):
    """One multi-scenario layer (Fig. 4b; eq. 15): an expert pool, a selecting gate per scenario.

    ``z_j = MMoE(x, g^_j) = sum_k g^_j[k] f_k(x)`` (eqs. 1, 15) with ``g^_j`` the selected,
    masked gate of scenario ``j`` (``ExpertSelectionGate``).

    Inputs: ``[x, s]`` with ``x`` ``[batch, d]`` and ``s`` ``[batch, rows, e]`` (the scenario
    embedding of each row, ``[s_1, ..., s_l]`` for the ``l``-th layer of a hierarchy);
    ``current`` int ``[batch, rows]``, the scenario of each row at this layer's level;
    ``aux_mask`` ``[batch, rows]`` (1 where the row is the example's own scenario).
    Output: ``z`` ``[batch, rows, expert_units[-1]]``.
    """

    def __init__(self, num_scenarios: int, num_experts: int, expert_units: Sequence[int],
                 top_k_specific: int, top_k_shared: int, noise_scale: float = 0.0,
                 lambda_sp: float = 0.0, lambda_sh: float = 0.0, dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_experts = int(num_scenarios), int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.top_k_specific, self.top_k_shared = int(top_k_specific), int(top_k_shared)
        self.noise_scale = float(noise_scale)
        self.lambda_sp, self.lambda_sh = float(lambda_sp), float(lambda_sh)
        self.dropout = float(dropout)
        self.experts = ParallelMLP(self.num_experts, self.expert_units, dropout=self.dropout,
                                   name="experts")
        self.gate = ExpertSelectionGate(
            self.num_scenarios, self.num_experts, self.top_k_specific, self.top_k_shared,
            noise_scale=self.noise_scale, lambda_sp=self.lambda_sp, lambda_sh=self.lambda_sh,
            name="scenario_gates")

    def call(self, inputs, current, aux_mask=None, training=None):
        x, _ = inputs
        f = self.experts(x, training=training)  # [B, n, H], eq. 2
        weights = self.gate(inputs, current[..., None],
                            None if aux_mask is None else aux_mask[..., None],
                            training=training)[:, :, 0]  # [B, R, n]
        return tf.einsum("brk,bkh->brh", weights, f)  # eqs. 1, 15

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_experts": self.num_experts, "expert_units": self.expert_units,
                "top_k_specific": self.top_k_specific, "top_k_shared": self.top_k_shared,
                "noise_scale": self.noise_scale, "lambda_sp": self.lambda_sp,
                "lambda_sh": self.lambda_sh, "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="msmt")
class MultiTaskLayer(keras.layers.Layer):
    """The multi-task layer (Fig. 4c; eqs. 16-17): an expert pool, a selecting gate per task.

    ``z_k = MMoE(z_j, g^_k)`` with ``g_k = T_k [z_j, s, t_k] + eta_k`` (eq. 16), selection
    as in the multi-scenario layer with tasks in place of scenarios.

    Inputs: ``[z, s]`` with ``z`` ``[batch, rows, d]`` (one scenario representation per
    row) and ``s`` ``[batch, rows, e]`` (the rows' scenario embeddings);
    ``aux_mask`` ``[batch, rows]`` (1 where the row is the example's own scenario).
    Output: ``[batch, rows, num_tasks, expert_units[-1]]``.
    """

    def __init__(self, num_tasks: int, num_experts: int, expert_units: Sequence[int],
                 top_k_specific: int, top_k_shared: int, task_embedding_dim: int,
                 noise_scale: float = 0.0, lambda_sp: float = 0.0, lambda_sh: float = 0.0,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_tasks, self.num_experts = int(num_tasks), int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.top_k_specific, self.top_k_shared = int(top_k_specific), int(top_k_shared)
        self.task_embedding_dim = int(task_embedding_dim)
        self.noise_scale = float(noise_scale)
        self.lambda_sp, self.lambda_sh = float(lambda_sp), float(lambda_sh)
        self.dropout = float(dropout)
        self.experts = ParallelMLP(self.num_experts, self.expert_units, dropout=self.dropout,
                                   name="experts")
        self.gate = ExpertSelectionGate(
            self.num_tasks, self.num_experts, self.top_k_specific, self.top_k_shared,
            noise_scale=self.noise_scale, lambda_sp=self.lambda_sp, lambda_sh=self.lambda_sh,
            gate_embedding_dim=self.task_embedding_dim, name="task_gates")

    def call(self, inputs, aux_mask=None, training=None):
        z, _ = inputs
        batch_rows = tf.shape(z)[:2]
        f = self.experts(tf.reshape(z, [-1, z.shape[-1]]), training=training)
        f = tf.reshape(f, tf.concat([batch_rows, tf.shape(f)[1:]], axis=0))  # [B, R, n, H]
        tasks_shape = tf.concat([batch_rows, [self.num_tasks]], axis=0)
        current = tf.broadcast_to(tf.range(self.num_tasks), tasks_shape)  # task k's gate
        mask = None if aux_mask is None else tf.broadcast_to(aux_mask[..., None], tasks_shape)
        weights = self.gate(inputs, current, mask, training=training)  # [B, R, T, n]
        return tf.einsum("brtk,brkh->brth", weights, f)  # eq. 17

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks,
                "num_experts": self.num_experts, "expert_units": self.expert_units,
                "top_k_specific": self.top_k_specific, "top_k_shared": self.top_k_shared,
                "task_embedding_dim": self.task_embedding_dim, "noise_scale": self.noise_scale,
                "lambda_sp": self.lambda_sp, "lambda_sh": self.lambda_sh,
                "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="msmt")
class AESM2(keras.layers.Layer):
    """AESM² backbone (Fig. 3): multi-scenario layers down the hierarchy, multi-task layer, towers.

    One ``MultiScenarioLayer`` per hierarchy level: layer ``l`` (coarse to fine) gates with
    the scenario embedding ``[s_1, ..., s_l]`` of the example's level-``l`` id
    (``scenario_levels[:, l]``; the last layer uses ``scenario_id``); without a hierarchy
    there is one. The finest layer and the multi-task layer are evaluated for every
    candidate scenario ``j`` (keeping the example's coarser ids), so the output has a row
    per scenario; the towers (eq. 18) are one per (scenario, task) head.

    Inputs: the backbone inputs (see ``models.factory``).
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``. Auxiliary losses
    (eq. 21): two per gated layer (``lambda_sp``, ``lambda_sh``), on the example's own
    scenario only.

    ``scenario_parameters(s)``: scenario ``s``'s finest-level embedding, its finest gate
    ``S_s`` and its towers. In the prediction path only examples of ``s`` read them (the
    expert selection, a top-k, carries no gradient). The auxiliary loss is different by
    design: eq. 9 normalises each expert's scores over all scenarios' gates, so every
    scenario's auxiliary loss also moves the other scenarios' gates.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, embedding_dim: int,
                 scenario_level_sizes: Sequence[int] = (), num_experts: int = 6,
                 expert_units: Sequence[int] = (64,), top_k_specific: int = 2,
                 top_k_shared: int = 1, tower_units: Sequence[int] = (32,),
                 lambda_sp: float = 0.01, lambda_sh: float = 0.01, noise_scale: float = 0.01,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.embedding_dim = int(embedding_dim)
        self.scenario_level_sizes = [int(v) for v in scenario_level_sizes]
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.top_k_specific, self.top_k_shared = int(top_k_specific), int(top_k_shared)
        self.tower_units = [int(u) for u in tower_units]
        self.lambda_sp, self.lambda_sh = float(lambda_sp), float(lambda_sh)
        self.noise_scale = float(noise_scale)
        self.dropout = float(dropout)
        selection = dict(num_experts=self.num_experts, expert_units=self.expert_units,
                         top_k_specific=self.top_k_specific, top_k_shared=self.top_k_shared,
                         noise_scale=self.noise_scale, lambda_sp=self.lambda_sp,
                         lambda_sh=self.lambda_sh, dropout=self.dropout)
        sizes = self.scenario_level_sizes + [self.num_scenarios]  # Coarse to fine.
        self.scenario_embeddings = [
            keras.layers.Embedding(size, self.embedding_dim, name=f"scenario_embedding_{l}")
            for l, size in enumerate(sizes)]
        self.scenario_layers = [MultiScenarioLayer(size, name=f"multi_scenario_layer_{l}",
                                                   **selection)
                                for l, size in enumerate(sizes)]
        self.task_layer = MultiTaskLayer(self.num_tasks, task_embedding_dim=self.embedding_dim,
                                         name="multi_task_layer", **selection)
        self.towers = ParallelMLP(self.num_scenarios * self.num_tasks, self.tower_units + [1],
                                  output_activation=None, name="towers")

    @staticmethod
    def validate_hparams(hparams) -> Optional[str]:
        """The factory's check of a spec's hyper-parameters: an error message or None."""
        k_sp, k_sh, n = hparams["top_k_specific"], hparams["top_k_shared"], hparams["num_experts"]
        if k_sp < 0 or k_sh < 0 or not 1 <= k_sp + k_sh <= n:
            return (f"top_k_specific + top_k_shared must be >= 1 and <= num_experts ({n}), "
                    f"each >= 0; got {k_sp} + {k_sh}")
        for name in ("lambda_sp", "lambda_sh", "noise_scale"):
            if hparams[name] < 0:
                return f"{name} must be >= 0, got {hparams[name]}"
        return None

    def call(self, inputs, training=None):
        x = flatten_fields(inputs["embedded"])
        scenario_id = tf.cast(inputs["scenario_id"], tf.int32)
        levels = tf.cast(inputs["scenario_levels"], tf.int32)
        batch = tf.shape(x)[0]
        num_scenarios = self.num_scenarios

        # Coarser levels: the example's own scenario at each level, [s_1, ..., s_l] (sec. 3.3).
        s_parts = []
        for level, size in enumerate(self.scenario_level_sizes):
            ids = tf.clip_by_value(levels[:, level], 0, size - 1)[:, None]  # [B, 1]
            s_parts.append(self.scenario_embeddings[level](ids))  # [B, 1, e]
            s = tf.concat(s_parts, axis=-1)
            x = self.scenario_layers[level]([x, s], ids, tf.ones_like(ids, x.dtype),
                                            training=training)[:, 0]  # [B, H]

        # Finest level: one row per candidate scenario j, the example's own one trained.
        finest = self.scenario_embeddings[-1](tf.range(num_scenarios))  # [S, e]
        s = tf.concat([tf.repeat(p, num_scenarios, axis=1) for p in s_parts]
                      + [tf.broadcast_to(finest[None], [batch, num_scenarios, self.embedding_dim])],
                      axis=-1)  # [B, S, e * levels]
        candidates = tf.broadcast_to(tf.range(num_scenarios), [batch, num_scenarios])
        own = tf.one_hot(scenario_id, num_scenarios, dtype=x.dtype)  # Unseen id: all zero.
        z = self.scenario_layers[-1]([x, s], candidates, own, training=training)  # [B, S, H]
        z = self.task_layer([z, s], own, training=training)  # [B, S, T, H]
        heads = tf.reshape(z, [-1, num_scenarios * self.num_tasks, z.shape[-1]])
        logits = self.towers(heads, training=training)  # [B, S*T, 1], eq. 18 (logits)
        return tf.reshape(logits, [-1, num_scenarios, self.num_tasks])

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario`` (prediction path)."""
        heads = slice(scenario * self.num_tasks, (scenario + 1) * self.num_tasks)
        pairs = [(self.scenario_embeddings[-1].embeddings, (scenario,))]
        pairs += self.scenario_layers[-1].gate.gate_parameters(scenario)
        pairs += [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "embedding_dim": self.embedding_dim,
                "scenario_level_sizes": self.scenario_level_sizes,
                "num_experts": self.num_experts, "expert_units": self.expert_units,
                "top_k_specific": self.top_k_specific, "top_k_shared": self.top_k_shared,
                "tower_units": self.tower_units, "lambda_sp": self.lambda_sp,
                "lambda_sh": self.lambda_sh, "noise_scale": self.noise_scale,
                "dropout": self.dropout}

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``): every gated layer's weights.

        ``gate_weights/scenario_level_<l>``: the multi-scenario layer of hierarchy level
        ``l`` (coarse to fine), ``[batch, 1, n]`` (the example's own level-``l`` scenario)
        for the coarser levels and ``[batch, S, n]`` (every candidate scenario) for the
        finest; ``gate_weights/task_layer`` ``[batch, S * T, n]``. The weights are the
        masked softmax of eq. 14, so exactly the selected experts are non-zero;
        ``expert_selection/<same name>`` is 1.0 where an expert is selected. No
        auxiliary loss is added.
        """
        x = flatten_fields(inputs["embedded"])
        levels = tf.cast(inputs["scenario_levels"], tf.int32)
        batch, num_scenarios = tf.shape(x)[0], self.num_scenarios
        weights = {}
        s_parts = []
        for level, size in enumerate(self.scenario_level_sizes):  # As in call().
            ids = tf.clip_by_value(levels[:, level], 0, size - 1)[:, None]  # [B, 1]
            s_parts.append(self.scenario_embeddings[level](ids))
            s = tf.concat(s_parts, axis=-1)
            layer = self.scenario_layers[level]
            weights[f"scenario_level_{level}"] = layer.gate([x, s], ids[..., None],
                                                            training=training)[:, :, 0]
            x = layer([x, s], ids, training=training)[:, 0]
        finest = self.scenario_embeddings[-1](tf.range(num_scenarios))
        s = tf.concat([tf.repeat(p, num_scenarios, axis=1) for p in s_parts]
                      + [tf.broadcast_to(finest[None], [batch, num_scenarios, self.embedding_dim])],
                      axis=-1)
        candidates = tf.broadcast_to(tf.range(num_scenarios), [batch, num_scenarios])
        layer = self.scenario_layers[-1]
        weights[f"scenario_level_{len(self.scenario_level_sizes)}"] = layer.gate(
            [x, s], candidates[..., None], training=training)[:, :, 0]  # [B, S, n]
        z = layer([x, s], candidates, training=training)  # [B, S, H]
        tasks = tf.broadcast_to(tf.range(self.num_tasks), [batch, num_scenarios, self.num_tasks])
        task_weights = self.task_layer.gate([z, s], tasks, training=training)  # [B, S, T, n]
        weights["task_layer"] = tf.reshape(task_weights,
                                           [-1, num_scenarios * self.num_tasks, self.num_experts])
        result = {f"gate_weights/{k}": w for k, w in weights.items()}
        result.update({f"expert_selection/{k}": tf.cast(w > 0, w.dtype)
                       for k, w in weights.items()})
        return result
