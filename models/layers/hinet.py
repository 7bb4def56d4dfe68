"""HiNet (Zhou et al., ICDE'23): hierarchical information extraction for MSMT recommendation.

A scenario extraction layer (a scenario-shared expert, one scenario-specific expert per
scenario, each a Sub-Expert Integration module, and the Scenario-aware Attentive Network)
feeds a task extraction layer (one CGC per scenario) and a tower per (scenario, task).
Equation numbers refer to the paper (``../shared/seeds/003_1fef7012eec63f42.txt``). The
per-scenario loss weights (eq. 9: the inverse of each scenario's share of the data) are a
training option, ``training.scenario_loss_weights: inverse_share`` in the model spec.
Unlike the authors' code, any number of scenarios and tasks.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import ParallelMLP, SoftmaxGate, flatten_fields, mix_experts
from models.layers.routing import (ScenarioRouting, build_sublayer, mix_per_head, run_blocks,
                                   split_blocks)

_MASK_VALUE = -1e9  # exp(-1e9 - max) is exactly 0 in float32.


@keras.utils.register_keras_serializable(package="msmt")
class SubExpertIntegration(keras.layers.Layer):
    """Sub-Expert Integration (SEI, Fig. 2C): sub-expert MLPs mixed by a softmax gate.

    ``num_modules`` independent SEI modules evaluated together; module ``i`` computes
    ``sum_k g^k(x) Q^k(x)`` with ``g(x) = softmax(W x)`` over its ``num_sub_experts``
    sub-experts (eqs. 1-3). HiNet's scenario-shared expert is one module, its
    scenario-specific experts are ``num_scenarios`` modules.

    Input: ``x`` ``[batch, d]``. Output: ``[batch, num_modules, units[-1]]``. The gate
    weights (``self.gate(x)``, ``[batch, num_modules, num_sub_experts]``) sum to 1.
    """

    def __init__(self, num_modules: int, num_sub_experts: int, units: Sequence[int],
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_modules, self.num_sub_experts = int(num_modules), int(num_sub_experts)
        self.units = [int(u) for u in units]
        self.dropout = float(dropout)
        self.sub_experts = ParallelMLP(self.num_modules * self.num_sub_experts, self.units,
                                       dropout=self.dropout, name="sub_experts")  # Q^k
        self.gate = SoftmaxGate(self.num_modules, self.num_sub_experts, name="gate")  # eq. 2

    def call(self, x, training=None):
        q = self.sub_experts(x, training=training)  # [B, M*K, H]
        q = tf.reshape(q, [-1, self.num_modules, self.num_sub_experts, self.units[-1]])
        return tf.einsum("bmk,bmkh->bmh", self.gate(x), q)  # eqs. 1, 3

    def get_config(self):
        return {**super().get_config(), "num_modules": self.num_modules,
                "num_sub_experts": self.num_sub_experts, "units": self.units,
                "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="msmt")
class ScenarioAwareAttention(keras.layers.Layer):
    """Scenario-aware Attentive Network (SAN, eqs. 4-5), for every scenario at once.

    ``A_i = sum_{m != i} g_a^i[m] S_m`` with ``g_a^i = softmax(W_a^i Emb(s_i))`` over the
    *other* scenarios: the own scenario's score is masked out before the softmax and its
    weight is exactly 0. With a single scenario there is nothing to attend to and ``A = 0``.

    Input: ``S`` ``[batch, num_scenarios, d]`` (the scenario-specific expert outputs).
    Output: ``A`` ``[batch, num_scenarios, d]``, row ``i`` being scenario ``i``'s ``A_i``.
    """

    def __init__(self, num_scenarios: int, san_dim: int, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.san_dim = int(num_scenarios), int(san_dim)

    def build(self, input_shape):
        m = self.num_scenarios
        self.scenario_embeddings = self.add_weight(  # Emb(s_i)
            name="scenario_embeddings", shape=(m, self.san_dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05))
        self.kernel = self.add_weight(name="kernel", shape=(m, self.san_dim, m),  # W_a^i
                                      initializer="glorot_uniform")
        super().build(input_shape)

    def attention_weights(self):
        """``g_a`` ``[num_scenarios, num_scenarios]``: row ``i`` attends over the others (eq. 5)."""
        scores = tf.einsum("id,idm->im", self.scenario_embeddings, self.kernel)
        eye = tf.eye(self.num_scenarios, dtype=scores.dtype)  # bfloat16 under a mixed policy.
        own = tf.where(eye > 0, tf.cast(_MASK_VALUE, eye.dtype), tf.zeros([], eye.dtype))
        return tf.nn.softmax(scores + own, axis=-1) * (1.0 - eye)

    def call(self, inputs):
        return tf.einsum("im,bmd->bid", self.attention_weights(), inputs)  # eq. 4

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "san_dim": self.san_dim}


@keras.utils.register_keras_serializable(package="msmt")
class ScenarioCGC(keras.layers.Layer):
    """Task extraction layer (eqs. 6-7): one Customized Gate Control per scenario, batched.

    Scenario ``i``'s CGC has ``num_shared_experts`` task-shared experts ``E_th^i`` and
    ``num_specific_experts`` experts ``E_tp^ij`` per task ``j``;
    ``T_i^j = delta_i^j(C_i) [E_th^i(C_i) || E_tp^ij(C_i)]`` with
    ``delta_i^j(C_i) = softmax(W_i^j C_i)``.

    Input: ``C`` ``[batch, num_scenarios, d]`` (row ``i`` is ``C_i``).
    Output: ``T`` ``[batch, num_scenarios, num_tasks, units[-1]]``.
    ``scenario_outputs`` runs each scenario's CGC on its own group of examples.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_shared_experts: int,
                 num_specific_experts: int, units: Sequence[int], dropout: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.num_shared_experts = int(num_shared_experts)
        self.num_specific_experts = int(num_specific_experts)
        self.units = [int(u) for u in units]
        self.dropout = float(dropout)
        s, t = self.num_scenarios, self.num_tasks
        # Block order: scenario-major (shared: i*Ns + k; specific: (i*T + j)*Np + k).
        self.shared_experts = ParallelMLP(s * self.num_shared_experts, self.units,
                                          dropout=self.dropout, name="task_shared_experts")
        self.specific_experts = ParallelMLP(s * t * self.num_specific_experts, self.units,
                                            dropout=self.dropout, name="task_specific_experts")

    def build(self, input_shape):
        num_gate_experts = self.num_shared_experts + self.num_specific_experts
        self.gate_kernel = self.add_weight(  # W_i^j
            name="gate_kernel",
            shape=(self.num_scenarios, self.num_tasks, int(input_shape[-1]), num_gate_experts),
            initializer="glorot_uniform")
        self.gate_bias = self.add_weight(
            name="gate_bias", shape=(self.num_scenarios, self.num_tasks, num_gate_experts),
            initializer="zeros")
        build_sublayer(self.shared_experts, [None, input_shape[-1]])
        build_sublayer(self.specific_experts, [None, input_shape[-1]])
        super().build(input_shape)

    def gate_weights(self, c):
        """``delta`` ``[batch, num_scenarios, num_tasks, shared + specific]`` (eq. 7)."""
        return tf.nn.softmax(tf.einsum("bsd,stde->bste", c, self.gate_kernel) + self.gate_bias,
                             axis=-1)

    def scenario_outputs(self, c, training=None):
        """Each scenario's CGC on its own examples: ``c[i]`` ``[n_i, d]`` (``C_i`` of scenario
        ``i``'s group) -> per scenario ``T_i`` ``[n_i, num_tasks, units[-1]]``."""
        s, t, h = self.num_scenarios, self.num_tasks, self.units[-1]
        ns, np_ = self.num_shared_experts, self.num_specific_experts
        if not self.built:
            build_sublayer(self, [None, s, c[0].shape[-1]])
        shared = split_blocks(self.shared_experts, s)
        specific = split_blocks(self.specific_experts, s)
        gate_kernels, gate_biases = tf.unstack(self.gate_kernel), tf.unstack(self.gate_bias)
        outputs = []
        for i in range(s):
            e_th = run_blocks(self.shared_experts, shared[i], c[i], training)  # [n, Ns, H]
            e_tp = tf.reshape(run_blocks(self.specific_experts, specific[i], c[i], training),
                              [-1, t, np_, h])
            delta = tf.nn.softmax(tf.einsum("nd,tde->nte", c[i], gate_kernels[i])
                                  + gate_biases[i], axis=-1)  # eq. 7, [n, T, Ns + Np]
            outputs.append(mix_experts(delta[..., :ns], e_th)  # eq. 6
                           + mix_per_head(delta[..., ns:], e_tp))
        return outputs

    def call(self, c, training=None):
        return tf.stack(self.scenario_outputs(tf.unstack(c, axis=1), training), axis=1)

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs of scenario ``scenario``'s CGC."""
        shared = slice(scenario * self.num_shared_experts,
                       (scenario + 1) * self.num_shared_experts)
        block = self.num_tasks * self.num_specific_experts
        specific = slice(scenario * block, (scenario + 1) * block)
        pairs = [(v, (shared,)) for v in self.shared_experts.kernels + self.shared_experts.biases]
        pairs += [(v, (specific,))
                  for v in self.specific_experts.kernels + self.specific_experts.biases]
        pairs += [(self.gate_kernel, (scenario,)), (self.gate_bias, (scenario,))]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "num_shared_experts": self.num_shared_experts,
                "num_specific_experts": self.num_specific_experts, "units": self.units,
                "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="msmt")
class HiNet(keras.layers.Layer):
    """HiNet backbone (Fig. 2A): scenario extraction, task extraction, towers.

    Scenario extraction: ``G`` = the scenario-shared SEI (eq. 1), ``S_i`` = scenario ``i``'s
    SEI (eq. 3), ``A_i`` = SAN over the other scenarios (eq. 4);
    ``C_i = Concat[G, S_i, A_i]``. Task extraction: scenario ``i``'s CGC (eqs. 6-7), then
    the tower ``tau_i^j`` of each (scenario, task) (eq. 8, as a logit).

    The scenario extraction layer runs every scenario's SEI for every example (SAN reads
    every ``S_m``, as in the paper); with ``all_scenarios=False`` (the factory's model) the
    task extraction layer and the towers run only the example's own scenario (every
    scenario's for an unseen one; ``models.layers.routing``), by default every scenario's
    for every example.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded`` and
    ``scenario_id``.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``; with
    ``all_scenarios=False`` row ``i`` of an example of a known scenario other than ``i``
    is 0.

    ``scenario_parameters(s)`` lists what is private to scenario ``s``'s path: its SAN query
    (``Emb(s_s)`` and ``W_a^s``), its CGC (experts and gates) and its towers. Its SEI
    expert ``S_s`` is *not* private: SAN deliberately lets the other scenarios attend to it,
    so examples of other scenarios train it too.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_sub_experts: int = 5,
                 sub_expert_units: Sequence[int] = (128, 64), num_shared_experts: int = 2,
                 num_specific_experts: int = 2, expert_units: Sequence[int] = (128, 64),
                 tower_units: Sequence[int] = (128, 64), san_dim: int = 16,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.num_sub_experts = int(num_sub_experts)
        self.sub_expert_units = [int(u) for u in sub_expert_units]
        self.num_shared_experts = int(num_shared_experts)
        self.num_specific_experts = int(num_specific_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.tower_units = [int(u) for u in tower_units]
        self.san_dim = int(san_dim)
        self.dropout = float(dropout)
        self.scenario_shared_expert = SubExpertIntegration(
            1, self.num_sub_experts, self.sub_expert_units, dropout=self.dropout,
            name="scenario_shared_expert")
        self.scenario_specific_experts = SubExpertIntegration(
            self.num_scenarios, self.num_sub_experts, self.sub_expert_units, dropout=self.dropout,
            name="scenario_specific_experts")
        self.san = ScenarioAwareAttention(self.num_scenarios, self.san_dim, name="san")
        self.task_extraction = ScenarioCGC(
            self.num_scenarios, self.num_tasks, self.num_shared_experts,
            self.num_specific_experts, self.expert_units, dropout=self.dropout,
            name="task_extraction")
        self.towers = ParallelMLP(self.num_scenarios * self.num_tasks, self.tower_units + [1],
                                  output_activation=None, name="towers")

    @staticmethod
    def validate_hparams(hparams):
        """The factory's check of a spec's hyper-parameters: an error message or None."""
        if hparams["san_dim"] < 1:
            return f"san_dim must be >= 1, got {hparams['san_dim']}"
        return None

    def call(self, inputs, training=None, all_scenarios=True):
        x = flatten_fields(inputs["embedded"])
        s = self.num_scenarios
        g = self.scenario_shared_expert(x, training=training)  # [B, 1, H], eq. 1
        s_i = self.scenario_specific_experts(x, training=training)  # [B, S, H], eq. 3
        a_i = self.san(s_i)  # [B, S, H], eq. 4
        c_i = tf.concat([tf.repeat(g, s, axis=1), s_i, a_i], axis=-1)  # C_i, [B, S, 3H]
        routing = ScenarioRouting(inputs["scenario_id"], s, all_scenarios)
        t_ij = self.task_extraction.scenario_outputs(  # eq. 6, per scenario [n_i, T, H']
            [routing.gather(i, c_i[:, i]) for i in range(s)], training=training)
        build_sublayer(self.towers, [None, self.num_tasks, self.expert_units[-1]])
        towers = split_blocks(self.towers, s)
        logits = [run_blocks(self.towers, towers[i], t, training)[..., 0]  # eq. 8, [n_i, T]
                  for i, t in enumerate(t_ij)]
        return routing.scatter(logits)

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario`` (see class doc)."""
        heads = slice(scenario * self.num_tasks, (scenario + 1) * self.num_tasks)
        pairs = [(self.san.scenario_embeddings, (scenario,)), (self.san.kernel, (scenario,))]
        pairs += self.task_extraction.scenario_parameters(scenario)
        pairs += [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "num_sub_experts": self.num_sub_experts,
                "sub_expert_units": self.sub_expert_units,
                "num_shared_experts": self.num_shared_experts,
                "num_specific_experts": self.num_specific_experts,
                "expert_units": self.expert_units, "tower_units": self.tower_units,
                "san_dim": self.san_dim, "dropout": self.dropout}

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``).

        ``gate_weights/shared_sei`` ``[batch, 1, K]`` and ``gate_weights/specific_sei``
        ``[batch, S, K]``: the SEI gates over the sub-experts (eq. 2);
        ``gate_weights/task_extraction`` ``[batch, S * T, N_s + N_p]``: each head's CGC
        gate ``delta_i^j`` (eq. 7, task-shared experts first); ``san_attention``
        ``[S, S]``: SAN's ``g_a`` (eq. 5, row ``i`` attends over the other scenarios).
        """
        x = flatten_fields(inputs["embedded"])
        s = self.num_scenarios
        g = self.scenario_shared_expert(x, training=training)
        s_i = self.scenario_specific_experts(x, training=training)
        c_i = tf.concat([tf.repeat(g, s, axis=1), s_i, self.san(s_i)], axis=-1)
        delta = self.task_extraction.gate_weights(c_i)  # [B, S, T, N_s + N_p]
        return {"gate_weights/shared_sei": self.scenario_shared_expert.gate(x),
                "gate_weights/specific_sei": self.scenario_specific_experts.gate(x),
                "gate_weights/task_extraction": tf.reshape(
                    delta, [-1, s * self.num_tasks, delta.shape[-1]]),
                "san_attention": self.san.attention_weights()}
