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

from models.layers.core import ParallelMLP, flatten_fields, mix_experts
from models.layers.routing import (ScenarioRouting, build_sublayer, mix_per_head, run_blocks,
                                   split_blocks)
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
    experts of a kind are one ``ParallelMLP``; scenario ``s`` runs its own blocks
    (``scenario_call``, on per-scenario lists: its own group of examples in PLE,
    ``models.layers.routing``). ``call`` runs every head on every example.

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

    def build(self, input_shape):
        """``input_shape``: a dict of the ``task`` and ``shared`` inputs' shapes."""
        build_sublayer(self.specific_experts, [None, input_shape["task"][-1]])
        build_sublayer(self.task_gates, [None, input_shape["task"][-1]])
        build_sublayer(self.shared_experts, [None, input_shape["shared"][-1]])
        if self.shared_gate:
            build_sublayer(self.shared_gates, [None, input_shape["shared"][-1]])
        super().build(input_shape)

    def call(self, inputs, training=None):
        """Every head for every example.

        Inputs: a dict with
            ``task``: ``[batch, d_in]`` (level 1: every head reads the same input) or
                ``[batch, S * T, d_in]`` (head ``k = s * T + t`` reads slice ``k``);
            ``shared``: ``[batch, d_in]`` (level 1) or ``[batch, S, d_in]`` (one shared
                input per scenario).
        Outputs: a dict with ``task`` ``[batch, S * T, expert_units[-1]]`` (the ``g^k``)
        and, with ``shared_gate``, ``shared`` ``[batch, S, expert_units[-1]]``.
        """
        outputs = self.scenario_call(self._per_scenario(inputs), training=training,
                                     shared_batch=self._shared_batch(inputs))
        result = {"task": tf.concat(outputs["task"], axis=1)}
        if self.shared_gate:
            result["shared"] = tf.stack(outputs["shared"], axis=1)
        return result

    def gate_weights(self, inputs):
        """Diagnostics: the task gates' weights ``[batch, S * T, m_t + m_s]`` (own, then
        shared), for ``call``'s inputs."""
        gates = self.scenario_call(self._per_scenario(inputs), with_gates=True,
                                   shared_batch=self._shared_batch(inputs))["gates"]
        return tf.concat(gates, axis=1)

    @staticmethod
    def _shared_batch(inputs):
        """``scenario_call``'s ``shared_batch`` for ``call``'s inputs: one shared input for all."""
        x_shared = inputs["shared"]
        return (x_shared, lambda s, t: t) if x_shared.shape.rank == 2 else None

    def _per_scenario(self, inputs):
        """``call``'s inputs as ``scenario_call``'s per-scenario lists."""
        S, T = self.num_scenarios, self.num_tasks
        x_task, x_shared = inputs["task"], inputs["shared"]
        return {"task": [x_task if x_task.shape.rank == 2 else x_task[:, s * T:(s + 1) * T]
                         for s in range(S)],
                "shared": [x_shared if x_shared.shape.rank == 2 else x_shared[:, s]
                           for s in range(S)]}

    def scenario_call(self, inputs, task_mask=None, training=None, with_gates=False,
                      shared_batch=None):
        """Every scenario's extraction on its own group of examples.

        Inputs: a dict with ``task``, per scenario ``s`` ``[n_s, d]`` (level 1: every
        head reads the same input) or ``[n_s, T, d]`` (head ``t`` reads slice ``t``), and
        ``shared``, per scenario ``[n_s, d]`` (the scenario's shared input).
        ``task_mask``: optional ``[S * T, d]``, head ``k = s * T + t`` reads ``x * mask[k]``
        (level-1 feature selection; applied to its experts' and gate's kernel rows).
        Output: a dict of per-scenario lists: ``task`` ``[n_s, T, expert_units[-1]]``
        (the ``g^k`` of ``s``'s heads), with ``shared_gate`` ``shared``
        ``[n_s, expert_units[-1]]``, with ``with_gates`` ``gates`` ``[n_s, T, m_t + m_s]``
        and ``shared_gates`` ``[n_s, T * m_t + m_s]``.
        ``shared_batch``: optional ``(x [batch, d], gather)`` when every scenario's shared
        input is a row of one batch tensor (level 1): the shared experts then run once
        on the whole batch, one large GEMM, and ``gather(s, outputs)`` picks scenario
        ``s``'s rows (the same values as running them on each group).
        """
        S, T = self.num_scenarios, self.num_tasks
        m_t, h = self.num_specific_experts, self.expert_units[-1]
        build_sublayer(self, {"task": [None, inputs["task"][0].shape[-1]],
                              "shared": [None, inputs["shared"][0].shape[-1]]})
        specific = split_blocks(self.specific_experts, S)
        gates = split_blocks(self.task_gates, S)
        (shared,) = split_blocks(self.shared_experts, 1)
        shared_gates = split_blocks(self.shared_gates, S) if self.shared_gate else None
        outputs = {"task": [], "shared": [], "gates": [], "shared_gates": []}
        if shared_batch is not None:
            x_batch, gather = shared_batch
            e_batch = run_blocks(self.shared_experts, shared, x_batch, training)  # [B, m_s, h]
        for s in range(S):
            x_task, x_shared = inputs["task"][s], inputs["shared"][s]
            mask = None if task_mask is None else task_mask[s * T:(s + 1) * T]  # [T, d]
            # Specific expert (t, i) of scenario s reads head t's input.
            if x_task.shape.rank == 3:
                e_task = run_blocks(self.specific_experts, specific[s],
                                    tf.repeat(x_task, m_t, axis=1), training)
            else:
                e_task = run_blocks(self.specific_experts, specific[s], x_task, training,
                                    input_mask=None if mask is None
                                    else tf.repeat(mask, m_t, axis=0))
            e_task = tf.reshape(e_task, [-1, T, m_t, h])
            e_shared = (gather(s, e_batch) if shared_batch is not None  # [n, m_s, h]
                        else run_blocks(self.shared_experts, shared, x_shared, training))

            # Task gates, eqs. 2-4 (eq. 6 above level 1): own experts, then shared ones.
            w = run_blocks(self.task_gates, gates[s], x_task, input_mask=mask)  # [n, T, m]
            outputs["task"].append(mix_per_head(w[..., :m_t], e_task)
                                   + mix_experts(w[..., m_t:], e_shared))
            if with_gates:
                outputs["gates"].append(w)
            if self.shared_gate:
                # Scenario s's shared gate: all of s's specific experts, then the shared ones.
                v = run_blocks(self.shared_gates, shared_gates[s], x_shared)[:, 0]
                experts = tf.concat([tf.reshape(e_task, [-1, T * m_t, h]), e_shared], axis=1)
                outputs["shared"].append(mix_experts(v[:, None], experts)[:, 0])
                if with_gates:
                    outputs["shared_gates"].append(v)
        return outputs

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
    ``[batch, num_fields, embedding_dim]`` and ``scenario_id``. With
    ``all_scenarios=False`` (the factory's model) an example runs only its own
    scenario's heads (its specific experts, gates, towers and shared gate; every
    scenario's for an unseen scenario, ``models.layers.routing``), so the work per
    example does not grow with the number of scenarios; the default computes every
    head for every example. Either way the caller picks the example's own scenario,
    so other scenarios' parameters get exactly zero gradient.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``; with
    ``all_scenarios=False`` row ``s`` of an example of a known scenario other than
    ``s`` is 0.

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

    def _run(self, inputs, training=None, all_scenarios=True, with_gates=False):
        """The extraction levels on each scenario's group, ``(routing, per-level outputs)``."""
        embedded = inputs["embedded"]
        x = flatten_fields(embedded)
        routing = ScenarioRouting(inputs["scenario_id"], self.num_scenarios, all_scenarios)
        task = [routing.gather(s, x) for s in range(self.num_scenarios)]
        x_shared = (flatten_fields(inputs["embedded_shared"]) if "embedded_shared" in inputs
                    else x)  # Level 1's shared input (its own scenario's fields per example).
        shared = ([routing.gather(s, x_shared) for s in range(self.num_scenarios)]
                  if "embedded_shared" in inputs else task)
        mask = (None if self.head_field_mask is None  # [S*T, F*D]
                else head_input_mask(self.head_field_mask, embedded.shape[-1]))
        g = {"task": task, "shared": shared}
        levels = []
        for j, extraction in enumerate(self.extraction_layers):
            g = extraction.scenario_call(
                g, task_mask=mask if j == 0 else None, training=training, with_gates=with_gates,
                shared_batch=(x_shared, routing.gather) if j == 0 else None)
            levels.append(g)
        return routing, levels

    def call(self, inputs, training=None, all_scenarios=True):
        """``[batch, S, T]`` logits; see ``models.layers.routing`` for which rows are computed."""
        routing, levels = self._run(inputs, training, all_scenarios)
        build_sublayer(self.towers, [None, self.num_tasks, self.expert_units[-1]])
        towers = split_blocks(self.towers, self.num_scenarios)
        logits = [run_blocks(self.towers, towers[s], g, training)[..., 0]  # [n_s, T], eq. 7
                  for s, g in enumerate(levels[-1]["task"])]
        return routing.scatter(logits)

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
        routing, levels = self._run(inputs, training, all_scenarios=True, with_gates=True)
        result = {}
        for j, (extraction, g) in enumerate(zip(self.extraction_layers, levels)):
            gates = routing.scatter(g["gates"])  # [B, S, T, m_t + m_s]
            result[f"gate_weights/level_{j}"] = tf.reshape(
                gates, [-1, self.num_scenarios * self.num_tasks, gates.shape[-1]])
            if extraction.shared_gate:
                result[f"gate_weights/level_{j}_shared"] = routing.scatter(g["shared_gates"])
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
