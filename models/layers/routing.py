"""Own-scenario computation: run each scenario's path only on the examples that need it.

A backbone whose scenario-specific parts are whole sub-networks (PLE/CGC's specific
experts, gates and towers, HiNet's per-scenario CGC and towers, STAR's star-topology
FCN) groups the batch by scenario, runs scenario ``s``'s path on its group as dense
matmuls and scatters the results back into ``[batch, num_scenarios, ...]``. Example
``b``'s row ``s`` is computed when ``s`` is its own scenario, or for every ``s`` when
its scenario is unseen in training (id ``num_scenarios``: ``ScenarioSelect`` mixes every
known scenario's prediction for it); the other rows are zeros that ``ScenarioSelect``
weighs by exactly 0, so results and gradients equal the every-scenario computation's.

``ScenarioRouting(scenario_id, S, all_scenarios=True)`` puts every example in every
group (no gather): the every-scenario computation, the backbones' default (the
factory's model passes ``all_scenarios=False``; ``models.factory.all_scenario_model``
and the diagnostics compute every scenario). With one scenario every example is in the
one group, so nothing is gathered either.
"""

from typing import List, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import mix_experts


class ScenarioRouting:
    """Each scenario's group of examples: gather its inputs, scatter its outputs back.

    Args:
        scenario_id: int ``[batch]`` in ``[0, num_scenarios]``.
        num_scenarios: ``S``.
        all_scenarios: put every example in every group.
    """

    def __init__(self, scenario_id, num_scenarios: int, all_scenarios: bool = False):
        self.num_scenarios = int(num_scenarios)
        self.batch_size = tf.shape(scenario_id)[0]
        self.dense = bool(all_scenarios) or self.num_scenarios == 1
        self.indices: List[Optional[tf.Tensor]] = [None] * self.num_scenarios
        if not self.dense:
            ids = tf.cast(scenario_id, tf.int32)
            unseen = (ids < 0) | (ids >= self.num_scenarios)
            self.indices = [tf.cast(tf.where((ids == s) | unseen)[:, 0], tf.int32)
                            for s in range(self.num_scenarios)]

    def gather(self, scenario: int, x):
        """``[batch, ...] -> [n_s, ...]``: the rows of scenario ``scenario``'s group."""
        return x if self.dense else tf.gather(x, self.indices[scenario])

    def scatter(self, outputs: Sequence[tf.Tensor]):
        """Per scenario ``[n_s, ...]`` -> ``[batch, S, ...]``, zeros outside each group."""
        if self.dense:
            return tf.stack(list(outputs), axis=1)
        rows = []
        for indices, y in zip(self.indices, outputs):
            shape = tf.concat([[self.batch_size], tf.shape(y)[1:]], axis=0)
            rows.append(tf.scatter_nd(indices[:, None], y, shape))
        return tf.stack(rows, axis=1)


def build_sublayer(layer: keras.layers.Layer, input_shape) -> None:
    """Builds a sub-layer that its parent runs by its weights, not by ``__call__``.

    Variables get the same names as when the layer builds on its first call. Like Keras'
    own first call, they are created under ``tf.init_scope``: called from ``call`` while a
    functional model is traced, they would otherwise land in that graph's variable
    collections, which every later graph in the process inherits (TFT then refuses its
    ``preprocessing_fn``: "contained trainable variables").
    """
    if not layer.built:
        with tf.init_scope(), tf.name_scope(layer.name):
            layer.build(input_shape)


def split_blocks(mlp, num_groups: int):
    """A ``ParallelMLP``'s weights in ``num_groups`` equal groups of consecutive blocks.

    Returns per group a list, per layer, of ``(kernel [k, d_in, d_out], bias [k, d_out])``.
    One split per variable, so the gradient of a variable is one concatenation (a
    slice per group would add ``num_groups`` full-size zero-padded gradients).
    """
    kernels = [tf.split(k, num_groups, axis=0) for k in mlp.kernels]
    biases = [tf.split(b, num_groups, axis=0) for b in mlp.biases]
    return [[(kernels[i][g], biases[i][g]) for i in range(len(mlp.kernels))]
            for g in range(num_groups)]


def run_blocks(mlp, weights, x, training=None, input_mask=None):
    """Some blocks of a ``ParallelMLP`` (``weights``, one group of ``split_blocks``) on ``x``.

    ``x``: ``[n, d_in]`` (every block reads it) or ``[n, k, d_in]`` (block ``i`` reads slice
    ``i``). ``input_mask``: optional ``[k, d_in]``, block ``i`` reads ``x * input_mask[i]``
    (applied to its first kernel's rows, which is the same product). Output:
    ``[n, k, units[-1]]``.
    """
    if input_mask is not None:
        (kernel, bias), rest = weights[0], list(weights[1:])
        weights = [(kernel * tf.cast(input_mask, kernel.dtype)[:, :, None], bias)] + rest
    return mlp(x, training=training, weights=weights)


def mix_per_head(weights, experts):
    """``[n, T, m] x [n, T, m, h] -> [n, T, h]``: each head's gate over its own experts.

    One batched matmul over the ``n * T`` rows (``mix_experts``); the equivalent einsum
    ``ntm,ntmh->nth`` ran 1.5-3x slower forward + backward (PLE's shape, 2 cores).
    """
    _, t, m, h = experts.shape
    mixed = mix_experts(tf.reshape(weights, [-1, 1, m]), tf.reshape(experts, [-1, m, h]))
    return tf.reshape(mixed, [-1, t, h])
