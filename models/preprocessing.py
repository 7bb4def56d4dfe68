"""preprocessing_fn: vocabularies, quantile buckets, the scenario id, labels passed through.

Every field becomes an int64 id ``[batch]`` in its own range:
- categorical: a frequency-ranked vocabulary (``frequency_threshold``, ``top_k``)
  plus ``num_oov_buckets`` ids for values never seen in training;
- numerical: ``buckets`` quantile buckets; a missing or NaN value gets its own
  id, ``buckets`` (it is neither dropped nor imputed);
- the scenario (the hierarchy's columns joined with "/") a vocabulary with one
  OOV id, ``num_scenarios``, for a scenario unseen in training; each coarser
  level of a hierarchy gets its own id as well.
"""

from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow_transform import schema_inference

from models import features
from models import vocabularies as vocabularies_lib
from pipeline.specs import DatasetSpec


def _dense(x: Any, default) -> tf.Tensor:
    """``[batch]`` from a ``[batch, 1]`` dense or a sparse feature (missing -> default)."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(tf.sparse.reset_shape(x, [x.dense_shape[0], 1]), default_value=default)
    return tf.reshape(x, [-1])


def bucketize_columns(x: tf.Tensor, num_buckets: int) -> tf.Tensor:
    """``[batch, k]`` float -> ``[batch, k]`` int64 quantile bucket of each column.

    What ``tft.bucketize(x, num_buckets, elementwise=True)`` computes, but as one batched
    ``searchsorted`` over the ``[k, num_buckets - 1]`` boundaries instead of ``k``
    per-column subgraphs (which cost tracing time several times per Transform run and
    ``k`` small ops per batch).
    """
    boundaries = tft.quantiles(x, num_buckets, epsilon=min(1.0 / num_buckets, 0.01),
                               reduce_instance_dims=False)
    boundaries = tf.reshape(boundaries, [x.shape[1], -1])
    # side="right": a value equal to a boundary goes to the bucket above it (tft.apply_buckets).
    return tf.transpose(tf.searchsorted(boundaries, tf.transpose(x), side="right",
                                        out_type=tf.int64))


def scenario_key(inputs: Dict[str, Any], spec: DatasetSpec, depth: int) -> tf.Tensor:
    """The scenario path down to level ``depth`` (exclusive), e.g. ``"ch0/s3"``."""
    parts = [_dense(inputs[c], b"") for c in spec.scenario_columns[:depth]]
    return parts[0] if len(parts) == 1 else tf.strings.join(parts, separator=features.SCENARIO_SEPARATOR)


def transform(inputs: Dict[str, Any], spec: DatasetSpec) -> Dict[str, tf.Tensor]:
    # Every vocabulary (the fields' and the scenario levels') in one analyzer: one pass, one
    # set of Beam stages instead of one per vocabulary.
    columns, vocabularies, output_keys = {}, [], []
    for field in spec.categorical_fields:
        name = features.vocabulary_name(field.name)
        columns[name] = _dense(inputs[field.name], b"")
        vocabularies.append(vocabularies_lib.Vocabulary(
            name, frequency_threshold=field.frequency_threshold, top_k=field.top_k,
            num_oov_buckets=field.num_oov_buckets))
        output_keys.append(field.name)
    depth = len(spec.scenario_columns)
    for level in range(depth):
        name = (features.SCENARIO_VOCABULARY if level == depth - 1
                else features.scenario_level_vocabulary(level))
        columns[name] = scenario_key(inputs, spec, level + 1)
        vocabularies.append(vocabularies_lib.Vocabulary(name, num_oov_buckets=1))
        output_keys.append(features.SCENARIO_ID if level == depth - 1
                           else features.scenario_level_id(level))
    vocabulary_ids = vocabularies_lib.compute_and_apply_vocabularies(columns, vocabularies)
    vocabulary_ids = {key: vocabulary_ids[vocabulary.name]
                      for key, vocabulary in zip(output_keys, vocabularies)}
    outputs = {field.name: vocabulary_ids.pop(field.name) for field in spec.categorical_fields}
    # One element-wise quantiles analyzer per bucket count, not one per field: the fields
    # are stacked [batch, k] and sketched as k streams of one combiner (1.5x faster
    # Transform on 63 numericals, benchmarks/RESULTS.md). Quantiles ignore NaN.
    by_buckets: Dict[int, list] = {}
    for field in spec.numerical_fields:
        by_buckets.setdefault(field.buckets, []).append(field.name)
    for num_buckets, names in by_buckets.items():
        x = tf.stack([tf.cast(_dense(inputs[n], float("nan")), tf.float32) for n in names], axis=1)
        missing = tf.logical_not(tf.math.is_finite(x))
        x = tf.where(missing, tf.fill(tf.shape(x), float("nan")), x)  # Quantiles skip NaN, not inf.
        # Ids 0..num_buckets - 1, and num_buckets for a missing value. One unstack and one
        # pair of bounds per group: per-field slices and constants are traced ~10 times a run.
        lowest, highest = tf.constant(0, tf.int64), tf.constant(num_buckets, tf.int64)
        ids = tf.where(missing, highest, bucketize_columns(x, num_buckets))
        for name, column in zip(names, tf.unstack(ids, axis=1)):
            outputs[name] = column
            schema_inference.set_tensor_schema_override(column, lowest, highest)
    outputs.update(vocabulary_ids)  # The scenario ids.
    for task in spec.task_names:
        outputs[features.label_key(task)] = tf.cast(_dense(inputs[task], 0), tf.float32)
    return outputs
