"""CGC and PLE (Tang et al., "Progressive Layered Extraction", RecSys'20).

Multi-scenario adaptation, as the MSMT papers use these baselines: every
(scenario, task) pair is one of the paper's "tasks" (a head), so a head owns
its task-specific experts, its gate and its tower. The paper's shared gate, which
at intermediate levels mixes *all* experts into the next level's shared input,
is kept per scenario: scenario ``s``'s shared gate mixes the shared experts and
the specific experts of ``s``'s heads, so the shared path of ``s`` is exactly the
paper's PLE over ``s``'s tasks and no scenario reads another's specific
experts. With one scenario the layers are the paper's, unchanged.
"""

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import ParallelMLP, flatten_fields
from models.layers.selection import head_input_mask, validate_head_field_mask


@keras.utils.register_keras_serializable(package="msmt")
class ExtractionLayer(keras.layers.Layer):
    """One extraction network: task-specific and shared experts, per-head gates.

    With ``S`` scenarios, ``T`` tasks, ``m_t = num_specific_experts`` and
    ``m_s = num_shared_experts``, head ``k = (s, t)`` owns experts
    ``E_(k,1..m_t)`` and all heads share ``E_(s,1..m_s)``. Head ``k``'s gate
    (PLE eqs. 2-4; eq. 6 at level ``j > 1``)::

        g^k = w^k(x_k) S^k,   w^k(x_k) = softmax(W_g^k x_k),
        S^k = [E_(k,1), ..., E_(k,m_t), E_(s,1), ..., E_(s,m_s)]

    reads its own input ``x_k`` (the field embeddings at level 1, head ``k``'s
    previous output above) and mixes only its own and the shared experts. This is
    CGC (Customized Gate Control). With ``shared_gate=True`` (PLE's intermediate
    levels) scenario ``s`` also has a shared gate over the specific experts of all
    its heads and the shared experts, read from the scenario's shared input
    ``x_s``; its output feeds the next level's shared experts.

    Specific experts of head ``k`` read ``x_k``; shared experts read ``x_s``. All
    experts of a kind run as one ``ParallelMLP``.

    Inputs: a dict with
        ``task``: ``[batch, d_in]`` (level 1: every head reads the same input) or
            ``[batch, S * T, d_in]`` (head ``k = s * T + t`` reads slice ``k``);
        ``shared``: ``[batch, d_in]`` (level 1) or ``[batch, S, d_in]`` (one shared
            input per scenario).
    Outputs: a dict with ``task`` ``[batch, S * T, expert_units[-1]]`` (the ``g^k``)
    and, with ``shared_gate``, ``shared`` ``[batch, S, expert_units[-1]]``.

    Args:
        num_scenarios: number of scenarios ``S``.
        num_tasks: number of tasks ``T``; the layer has ``S * T`` heads.
        num_specific_experts: ``m_t``, experts owned by each head.
        num_shared_experts: ``m_s``, experts shared by all heads.
        expert_units: widths of every expert MLP.
        dropout: dropout rate after every expert layer.
        shared_gate: whether to compute the per-scenario shared gate (all levels of
            PLE but the last).
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_specific_experts: int = 2,
                 num_shared_experts: int = 4, expert_units: Sequence[int] = (64,),
                 dropout: float = 0.0, shared_gate: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.num_specific_experts = int(num_specific_experts)
        self.num_shared_experts = int(num_shared_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.dropout = float(dropout)
        self.shared_gate = bool(shared_gate)
        num_heads = self.num_scenarios * self.num_tasks
        m_t, m_s = self.num_specific_experts, self.num_shared_experts
        self.specific_experts = ParallelMLP(num_heads * m_t, self.expert_units,
                                            dropout=self.dropout, name="specific_experts")
        self.shared_experts = ParallelMLP(m_s, self.expert_units, dropout=self.dropout,
                                          name="shared_experts")
        # A gate is one linear layer followed by a softmax over its experts (eq. 3).
        self.task_gates = ParallelMLP(num_heads, [m_t + m_s], output_activation="softmax",
                                      name="task_gates")
        self.shared_gates = (ParallelMLP(self.num_scenarios, [self.num_tasks * m_t + m_s],
                                         output_activation="softmax", name="shared_gates")
                             if self.shared_gate else None)

    def call(self, inputs, training=None):
        x_task, x_shared = inputs["task"], inputs["shared"]
        S, T = self.num_scenarios, self.num_tasks
        m_t, m_s, h = self.num_specific_experts, self.num_shared_experts, self.expert_units[-1]

        # Experts. Specific expert (k, i) reads head k's input.
        if x_task.shape.rank == 3:
            x_task_experts = tf.repeat(x_task, m_t, axis=1)  # [B, S*T*m_t, d]
        else:
            x_task_experts = x_task
        e_task = self.specific_experts(x_task_experts, training=training)
        e_task = tf.reshape(e_task, [-1, S, T, m_t, h])
        if x_shared.shape.rank == 3:  # One shared input per scenario.
            e_shared = self.shared_experts(tf.reshape(x_shared, [-1, x_shared.shape[-1]]),
                                           training=training)
            e_shared = tf.reshape(e_shared, [-1, S, m_s, h])
        else:  # Every scenario reads the same input.
            e_shared = self.shared_experts(x_shared, training=training)[:, None]
            e_shared = tf.broadcast_to(e_shared, [tf.shape(e_shared)[0], S, m_s, h])

        # Task gates, eqs. 2-4 (eq. 6 above level 1): own experts, then shared ones.
        w = tf.reshape(self.task_gates(x_task), [-1, S, T, m_t + m_s])
        g_task = (tf.einsum("bstm,bstmh->bsth", w[..., :m_t], e_task)
                  + tf.einsum("bstm,bsmh->bsth", w[..., m_t:], e_shared))
        outputs = {"task": tf.reshape(g_task, [-1, S * T, h])}

        if self.shared_gate:
            # Scenario s's shared gate: all of s's specific experts, then the shared ones.
            v = self.shared_gates(x_shared)  # [B, S, T*m_t + m_s]
            v_task = tf.reshape(v[..., :T * m_t], [-1, S, T, m_t])
            outputs["shared"] = (tf.einsum("bstm,bstmh->bsh", v_task, e_task)
                                 + tf.einsum("bsm,bsmh->bsh", v[..., T * m_t:], e_shared))
        return outputs

    def gate_weights(self, inputs):
        """Diagnostics: the task gates' weights ``[batch, S * T, m_t + m_s]`` (own, then shared)."""
        return self.task_gates(inputs["task"])

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by heads of ``scenario``."""
        T, m_t = self.num_tasks, self.num_specific_experts
        experts = slice(scenario * T * m_t, (scenario + 1) * T * m_t)
        heads = slice(scenario * T, (scenario + 1) * T)
        experts_weights = self.specific_experts.kernels + self.specific_experts.biases
        pairs = [(v, (experts,)) for v in experts_weights]
        pairs += [(v, (heads,)) for v in self.task_gates.kernels + self.task_gates.biases]
        if self.shared_gate:
            pairs += [(v, (slice(scenario, scenario + 1),))
                      for v in self.shared_gates.kernels + self.shared_gates.biases]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "num_specific_experts": self.num_specific_experts,
                "num_shared_experts": self.num_shared_experts, "expert_units": self.expert_units,
                "dropout": self.dropout, "shared_gate": self.shared_gate}


@keras.utils.register_keras_serializable(package="msmt")
class PLE(keras.layers.Layer):
    """Progressive Layered Extraction: stacked extraction networks, a tower per head.

    Level ``j`` is an ``ExtractionLayer``; every level but the last has shared
    gates whose output is the next level's shared input, and each head's gate
    output is its next level's input (eq. 6). Head ``k = (s, t)``'s logit is its
    tower on the last level's gate output, ``y^k = t^k(g^(k,N))`` (eq. 7).

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``
    ``[batch, num_fields, embedding_dim]``. Every head is computed; the caller
    picks the example's own scenario, so other scenarios' experts, gates and
    towers get exactly zero gradient.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``.

    Args:
        num_scenarios: number of scenarios ``S``.
        num_tasks: number of tasks ``T``.
        num_levels: number of extraction networks ``N`` (1 is CGC).
        num_specific_experts: experts owned by each (scenario, task) head per level.
        num_shared_experts: shared experts per level.
        expert_units: widths of every expert MLP.
        tower_units: hidden widths of each tower (a 1-unit logit layer follows).
        dropout: dropout rate after every expert layer.
        head_field_mask: optional ``[S * T, num_fields]`` feature selection: head
            ``k = s * T + t``'s level-1 input (its specific experts and gate) is
            ``embedded`` masked to its own fields; the shared experts read
            ``embedded_shared`` when given (the scenario's shared field set, e.g.
            the intersection of its paths' fields), else ``embedded``.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_levels: int = 2,
                 num_specific_experts: int = 2, num_shared_experts: int = 4,
                 expert_units: Sequence[int] = (64,), tower_units: Sequence[int] = (32,),
                 dropout: float = 0.0,
                 head_field_mask: Optional[Sequence[Sequence[float]]] = None, **kwargs):
        super().__init__(**kwargs)
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.num_levels = int(num_levels)
        self.num_specific_experts = int(num_specific_experts)
        self.num_shared_experts = int(num_shared_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.tower_units = [int(u) for u in tower_units]
        self.dropout = float(dropout)
        validate_head_field_mask(head_field_mask, self.num_scenarios * self.num_tasks)
        self.head_field_mask = (None if head_field_mask is None
                                else [[float(m) for m in row] for row in head_field_mask])
        self.extraction_layers = [
            ExtractionLayer(self.num_scenarios, self.num_tasks, self.num_specific_experts,
                            self.num_shared_experts, self.expert_units, dropout=self.dropout,
                            shared_gate=level < self.num_levels - 1, name=f"extraction_{level}")
            for level in range(self.num_levels)]
        self.towers = ParallelMLP(self.num_scenarios * self.num_tasks, self.tower_units + [1],
                                  output_activation=None, name="towers")

    def _level_one_inputs(self, inputs):
        """The first extraction layer's inputs; per-head ``[B, S*T, F*D]`` when masked."""
        embedded = inputs["embedded"]
        x = flatten_fields(embedded)
        shared = flatten_fields(inputs["embedded_shared"]) if "embedded_shared" in inputs else x
        if self.head_field_mask is None:
            return {"task": x, "shared": shared}
        mask = head_input_mask(self.head_field_mask, embedded.shape[-1])  # [S*T, F*D]
        return {"task": x[:, None, :] * tf.cast(mask, x.dtype)[None], "shared": shared}

    def call(self, inputs, training=None):
        g = self._level_one_inputs(inputs)
        for extraction in self.extraction_layers:
            g = extraction(g, training=training)
        logits = self.towers(g["task"], training=training)  # [B, S*T, 1]
        return tf.reshape(logits, [-1, self.num_scenarios, self.num_tasks])

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``."""
        heads = slice(scenario * self.num_tasks, (scenario + 1) * self.num_tasks)
        pairs = [pair for extraction in self.extraction_layers
                 for pair in extraction.scenario_parameters(scenario)]
        pairs += [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "num_levels": self.num_levels,
                "num_specific_experts": self.num_specific_experts,
                "num_shared_experts": self.num_shared_experts, "expert_units": self.expert_units,
                "tower_units": self.tower_units, "dropout": self.dropout,
                "head_field_mask": self.head_field_mask}

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``), per extraction level ``j``.

        ``gate_weights/level_<j>`` ``[batch, S * T, m_t + m_s]``: the task gates (own
        specific experts first, then the shared ones); below the last level also
        ``gate_weights/level_<j>_shared`` ``[batch, S, T * m_t + m_s]``: each scenario's
        shared gate.
        """
        g = self._level_one_inputs(inputs)
        result = {}
        for j, extraction in enumerate(self.extraction_layers):
            result[f"gate_weights/level_{j}"] = extraction.gate_weights(g)
            if extraction.shared_gate:
                result[f"gate_weights/level_{j}_shared"] = extraction.shared_gates(g["shared"])
            g = extraction(g, training=training)
        return result


@keras.utils.register_keras_serializable(package="msmt")
class CGC(PLE):
    """Customized Gate Control (PLE paper, Sec. 4.1): the single-level PLE.

    One ``ExtractionLayer`` without shared gate, a tower per (scenario, task) head:
    ``y^k = t^k(g^k(x))`` (eq. 5). Inputs and output as ``PLE``.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_specific_experts: int = 2,
                 num_shared_experts: int = 4, expert_units: Sequence[int] = (64,),
                 tower_units: Sequence[int] = (32,), dropout: float = 0.0, **kwargs):
        super().__init__(num_scenarios, num_tasks, num_levels=1,
                         num_specific_experts=num_specific_experts,
                         num_shared_experts=num_shared_experts, expert_units=expert_units,
                         tower_units=tower_units, dropout=dropout, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["num_levels"]
        return config
