"""Single-shot gradient saliency of a per-(scenario, task) field mask (MultiSFS, SNIP-style).

At random initialisation (no training) a probe network reads the field
embeddings through a mask ``m[s, t, f]`` initialised to ones; example ``b`` of
scenario ``s_b`` feeds task ``t``'s tower with ``e_b * m[s_b, t]``. The saliency
of field ``f`` for (scenario ``s``, task ``t``) is ``|dL_t / dm[s, t, f]|``,
averaged over several batches and normalised by the scenario's share of each
batch, so that small scenarios are not scored lower only for being small.
"""

from typing import Iterable, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from models.layers import FieldEmbedding, ParallelMLP


def field_saliency(batches: Iterable[Tuple[tf.Tensor, tf.Tensor, tf.Tensor]], vocab_sizes,
                   num_scenarios: int, num_tasks: int, embedding_dim: int = 8,
                   hidden_units: int = 64, seed: int = 0) -> np.ndarray:
    """Scores ``[num_scenarios, num_tasks, num_fields]``; NaN for a scenario never seen.

    ``batches`` yields ``(field_ids [B, F], scenario_id [B], labels [B, T])``.
    """
    keras.utils.set_random_seed(seed)
    num_fields = len(vocab_sizes)
    embedding = FieldEmbedding(vocab_sizes, embedding_dim)
    towers = ParallelMLP(num_tasks, [hidden_units, 1], output_activation=None)
    mask = tf.Variable(tf.ones([num_scenarios, num_tasks, num_fields]))
    total = np.zeros([num_scenarios, num_tasks, num_fields])
    share = np.zeros([num_scenarios])

    for field_ids, scenario_id, labels in batches:
        known = scenario_id < num_scenarios
        field_ids, scenario_id = field_ids[known], scenario_id[known]
        labels = tf.cast(labels[known], tf.float32)
        with tf.GradientTape() as tape:
            embedded = embedding(field_ids)  # [B, F, D]
            example_mask = tf.gather(mask, scenario_id)  # [B, T, F]
            x = embedded[:, None, :, :] * example_mask[..., None]  # [B, T, F, D]
            x = tf.reshape(x, [-1, num_tasks, num_fields * embedding_dim])
            logits = tf.squeeze(towers(x), -1)  # [B, T]
            loss = tf.reduce_sum(tf.reduce_mean(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits), axis=0))
        total += np.abs(tf.convert_to_tensor(tape.gradient(loss, mask)).numpy())
        batch = max(int(tf.size(scenario_id)), 1)
        share += np.bincount(scenario_id.numpy(), minlength=num_scenarios)[:num_scenarios] / batch
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(share[:, None, None] > 0, total / share[:, None, None], np.nan)


def top_k_mask(scores: np.ndarray, keep: int) -> np.ndarray:
    """1 for the ``keep`` highest-scoring fields of each cell (all fields where scores are NaN)."""
    mask = np.zeros_like(scores, dtype=np.float32)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=-1, kind="stable")
    np.put_along_axis(mask, order[..., :keep], 1.0, axis=-1)
    mask[np.isnan(scores)] = 1.0
    return mask
