"""Shared-Bottom (Caruana, "Multitask Learning", Machine Learning 28, 1997).

Hard parameter sharing: one bottom network shared by every head, one tower per
head. In the multi-scenario adaptation every (scenario, task) pair is a head.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import MLP, ParallelMLP, flatten_fields


@keras.utils.register_keras_serializable(package="msmt")
class SharedBottom(keras.layers.Layer):
    """One bottom MLP shared by all heads; a tower for every (scenario, task) head.

    ``y_{s,t} = h_{s,t}(f(x))`` with ``f`` the shared bottom and ``h_{s,t}`` the
    tower of head ``(s, t)``; the towers run as one ``ParallelMLP``.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``
    ``[batch, num_fields, embedding_dim]``. Every head is computed; the caller
    picks the example's own scenario, so other scenarios' towers get exactly
    zero gradient.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``.

    Args:
        num_scenarios: number of scenarios ``S``.
        num_tasks: number of tasks ``T``.
        bottom_units: widths of the shared bottom MLP ``f``.
        tower_units: hidden widths of each tower (a 1-unit logit layer follows).
        dropout: dropout rate after every bottom layer.
    """

    def __init__(self, num_scenarios: int, num_tasks: int,
                 bottom_units: Sequence[int] = (128, 64), tower_units: Sequence[int] = (32,),
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.bottom_units = [int(u) for u in bottom_units]
        self.tower_units = [int(u) for u in tower_units]
        self.dropout = float(dropout)
        self.bottom = MLP(self.bottom_units, dropout=self.dropout, name="bottom")
        self.towers = ParallelMLP(self.num_scenarios * self.num_tasks, self.tower_units + [1],
                                  output_activation=None, name="towers")

    def call(self, inputs, training=None):
        x = flatten_fields(inputs["embedded"])
        shared = self.bottom(x, training=training)  # [B, H]
        logits = self.towers(shared, training=training)  # [B, S*T, 1]
        return tf.reshape(logits, [-1, self.num_scenarios, self.num_tasks])

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``: its towers."""
        heads = slice(scenario * self.num_tasks, (scenario + 1) * self.num_tasks)
        return [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "bottom_units": self.bottom_units,
                "tower_units": self.tower_units, "dropout": self.dropout}
