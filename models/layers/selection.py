"""Layers that make a model honour a feature selection (the FeatureSelector's artifact).

- ``ScenarioFieldMask``: each example's embedded fields masked by its scenario's
  field set (what the backbone's shared parts read).
- ``ValueMask``: MultiFS's per-scenario value masks; a dropped value's embedding
  row reads as zeros for examples of that scenario.
- ``head_input_mask`` / ``head_masked_gate``: the per-(scenario, task) field masks
  read by the task-specific parts of MMoE, CGC and PLE (their gates, and CGC/PLE's
  specific experts).

Masks are constants built from constructor arguments, so they are in ``get_config``
and in the SavedModel graph. A masked field or value contributes exact zeros, so
its embedding rows get zero gradient from the examples it is masked for.
"""

from typing import Optional, Sequence

import tensorflow as tf
import tf_keras as keras


def _with_unseen_row(mask: Sequence[Sequence[float]]) -> tf.Tensor:
    """``[S, N] -> [S + 1, N]``: row ``S`` (a scenario unseen in training) is the union."""
    mask = tf.constant(mask, tf.float32)
    return tf.concat([mask, tf.reduce_max(mask, axis=0, keepdims=True)], axis=0)


@keras.utils.register_keras_serializable(package="msmt")
class ScenarioFieldMask(keras.layers.Layer):
    """Masks every example's field embeddings by its scenario's field set.

    Inputs: ``embedded`` ``[batch, num_fields, embedding_dim]`` and ``scenario_id``
    int ``[batch]`` in ``[0, num_scenarios]`` (``num_scenarios``: unseen in
    training, which reads the union of every scenario's fields, since the model
    then mixes every scenario's prediction).
    Output: ``embedded * field_mask[scenario_id][:, :, None]``, same shape.

    Args:
        field_mask: ``[num_scenarios, num_fields]``, 1 = the scenario reads the field.
    """

    def __init__(self, field_mask: Sequence[Sequence[float]], **kwargs):
        super().__init__(**kwargs)
        self.field_mask = [[float(m) for m in row] for row in field_mask]
        self._table = _with_unseen_row(self.field_mask)  # [S + 1, F]

    def call(self, embedded, scenario_id):
        mask = tf.gather(self._table, tf.cast(scenario_id, tf.int32))  # [B, F]
        return embedded * tf.cast(mask, embedded.dtype)[:, :, None]

    def get_config(self):
        return {**super().get_config(), "field_mask": self.field_mask}


@keras.utils.register_keras_serializable(package="msmt")
class ValueMask(keras.layers.Layer):
    """MultiFS's hard value masks: ``mask[scenario, offset_f + id]`` per example and field.

    Inputs: ``embedded`` ``[batch, num_fields, embedding_dim]``, ``field_ids`` int
    ``[batch, num_fields]`` (each column in its own vocabulary, as
    ``FieldEmbedding`` reads them) and ``scenario_id`` int ``[batch]`` in
    ``[0, num_scenarios]`` (the unseen id keeps a value kept in any scenario).
    Output: ``embedded`` with the rows of dropped values zeroed, same shape.

    Args:
        value_masks: per field ``[num_scenarios, vocab_size_f]``, 1 = the value is kept
            in the scenario; rows aligned to Transform's vocabulary ids (OOV and
            missing ids included).
    """

    def __init__(self, value_masks: Sequence[Sequence[Sequence[float]]], **kwargs):
        super().__init__(**kwargs)
        self.value_masks = [[[float(m) for m in row] for row in field] for field in value_masks]
        sizes = [len(field[0]) for field in self.value_masks]
        offsets = [0]
        for size in sizes[:-1]:
            offsets.append(offsets[-1] + size)
        self._sizes = tf.constant(sizes, tf.int64)
        self._offsets = tf.constant(offsets, tf.int64)
        fused = [sum((field[s] for field in self.value_masks), [])
                 for s in range(len(self.value_masks[0]))]
        self._table = _with_unseen_row(fused)  # [S + 1, sum(vocab_sizes)]

    def call(self, embedded, field_ids, scenario_id):
        ids = tf.clip_by_value(tf.cast(field_ids, tf.int64), 0, self._sizes - 1) + self._offsets
        scenario = tf.cast(scenario_id, tf.int64)[:, None] + tf.zeros_like(ids)
        keep = tf.gather_nd(self._table, tf.stack([scenario, ids], axis=-1))  # [B, F]
        return embedded * tf.cast(keep, embedded.dtype)[:, :, None]

    def get_config(self):
        return {**super().get_config(), "value_masks": self.value_masks}


def head_input_mask(head_field_mask: Sequence[Sequence[float]], embedding_dim: int) -> tf.Tensor:
    """``[heads, num_fields] -> [heads, num_fields * embedding_dim]``, the flattened input's mask."""
    mask = tf.constant(head_field_mask, tf.float32)
    return tf.repeat(mask, int(embedding_dim), axis=1)


def head_masked_gate(gate: keras.layers.Layer, x: tf.Tensor, input_mask: tf.Tensor) -> tf.Tensor:
    """A ``SoftmaxGate`` whose head ``k`` reads ``x * input_mask[k]``.

    Computed by masking the gate's kernel rows per head (``W_k * m_k``), which
    equals masking the input per head without materialising ``[batch, heads, d]``.
    Inputs: ``x`` ``[batch, d]``, ``input_mask`` ``[heads, d]``.
    Output: gate weights ``[batch, heads, num_experts]``.
    """
    if not gate.built:
        gate(x)  # Creates the kernel.
    dense = gate._dense
    d, heads, experts = int(x.shape[-1]), gate.num_gates, gate.num_experts
    kernel = tf.reshape(dense.kernel, [d, heads, experts])
    kernel *= tf.cast(tf.transpose(input_mask), kernel.dtype)[:, :, None]
    logits = tf.einsum("bd,dke->bke", x, kernel) + tf.reshape(dense.bias, [heads, experts])
    return tf.nn.softmax(logits, axis=-1)


def validate_head_field_mask(head_field_mask: Optional[Sequence[Sequence[float]]],
                             num_heads: int, num_fields: Optional[int] = None) -> None:
    if head_field_mask is None:
        return
    if len(head_field_mask) != num_heads:
        raise ValueError(f"head_field_mask has {len(head_field_mask)} rows for {num_heads} "
                         "(scenario, task) heads")
    if num_fields is not None and any(len(row) != num_fields for row in head_field_mask):
        raise ValueError(f"head_field_mask rows must have {num_fields} entries")
