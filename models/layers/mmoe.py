"""MMoE (Ma et al., KDD'18) with one gate and one tower per (scenario, task)."""

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import ParallelMLP, SoftmaxGate, flatten_fields, mix_experts
from models.layers.selection import head_input_mask, head_masked_gate, validate_head_field_mask


@keras.utils.register_keras_serializable(package="msmt")
class MultiScenarioMMoE(keras.layers.Layer):
    """Shared experts; a softmax gate and a tower for every (scenario, task) head.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``
    ``[batch, num_fields, embedding_dim]``. Every head is computed; the caller
    picks the example's own scenario, so other scenarios' gates and towers get
    exactly zero gradient.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``.

    Feature selection: the experts read ``embedded_shared`` when given (the
    scenario's shared field set, e.g. the intersection of its paths' fields),
    else ``embedded``; with ``head_field_mask`` ``[S * T, num_fields]`` head
    ``k = s * T + t``'s gate reads ``embedded`` masked to its own fields.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, num_experts: int = 4,
                 expert_units: Sequence[int] = (128, 64), tower_units: Sequence[int] = (32,),
                 dropout: float = 0.0,
                 head_field_mask: Optional[Sequence[Sequence[float]]] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.tower_units = [int(u) for u in tower_units]
        self.dropout = float(dropout)
        num_heads = self.num_scenarios * self.num_tasks
        validate_head_field_mask(head_field_mask, num_heads)
        self.head_field_mask = (None if head_field_mask is None
                                else [[float(m) for m in row] for row in head_field_mask])
        self.experts = ParallelMLP(self.num_experts, self.expert_units, dropout=self.dropout,
                                   name="experts")
        self.gates = SoftmaxGate(num_heads, self.num_experts, name="gates")
        self.towers = ParallelMLP(num_heads, self.tower_units + [1], dropout=0.0,
                                  output_activation=None, name="towers")

    def call(self, inputs, training=None):
        x = flatten_fields(inputs.get("embedded_shared", inputs["embedded"]))
        expert_outputs = self.experts(x, training=training)  # [B, E, H]
        gate_weights = self._gate_weights(inputs["embedded"])  # [B, S*T, E]
        mixed = mix_experts(gate_weights, expert_outputs)  # [B, S*T, H]
        logits = self.towers(mixed, training=training)  # [B, S*T, 1]
        return tf.reshape(logits, [-1, self.num_scenarios, self.num_tasks])

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``."""
        t = self.num_tasks
        heads = slice(scenario * t, (scenario + 1) * t)
        gate_columns = slice(scenario * t * self.num_experts, (scenario + 1) * t * self.num_experts)
        pairs = [(self.gates._dense.kernel, (slice(None), gate_columns)),
                 (self.gates._dense.bias, (gate_columns,))]
        pairs += [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "num_experts": self.num_experts,
                "expert_units": self.expert_units, "tower_units": self.tower_units,
                "dropout": self.dropout, "head_field_mask": self.head_field_mask}

    def _gate_weights(self, embedded):
        """``[B, F, D] -> [B, S*T, E]``; head ``k`` reads its own fields when masked."""
        x = flatten_fields(embedded)
        if self.head_field_mask is None:
            return self.gates(x)
        return head_masked_gate(self.gates, x,
                                head_input_mask(self.head_field_mask, embedded.shape[-1]))

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``): ``gate_weights/experts``
        ``[batch, S * T, num_experts]``, every (scenario, task) head's gate (MMoE eq. 5)."""
        return {"gate_weights/experts": self._gate_weights(inputs["embedded"])}
