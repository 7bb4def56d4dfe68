"""Reading Transform's output: vocabulary sizes, scenario names, batched datasets."""

import os
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from models import features
from models.factory import DataInfo
from pipeline.specs import DatasetSpec

READ_BLOCK = 256  # Records taken from one file before the next, when reading several.
MAX_PARALLEL_FILES = 8  # Files read at once.


def field_vocab_sizes(tft_output: tft.TFTransformOutput, spec: DatasetSpec) -> List[int]:
    """Id range of every field: vocabulary + OOV ids, or buckets + the missing id."""
    sizes = []
    for field in spec.categorical_fields:
        size = tft_output.vocabulary_size_by_name(features.vocabulary_name(field.name))
        sizes.append(int(size) + field.num_oov_buckets)
    sizes += [field.buckets + 1 for field in spec.numerical_fields]
    return sizes


def scenario_names(tft_output: tft.TFTransformOutput) -> List[str]:
    """Scenario keys in scenario-id order."""
    return [v.decode("utf-8") if isinstance(v, bytes) else v
            for v in tft_output.vocabulary_by_name(features.SCENARIO_VOCABULARY)]


def transformed_files(examples_uri: str, split: str) -> List[str]:
    return tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))


def _records(files: List[str]) -> tf.data.Dataset:
    """The serialized records of ``files``; several files are read in parallel.

    Files are interleaved in blocks of ``READ_BLOCK`` records: TFRecordDataset's own
    ``num_parallel_reads`` interleaves record by record, which costs more than reading and
    parsing the record: the whole input pipeline ran at 62k examples/s with it, 400-450k
    without (2 cores, benchmarks/RESULTS.md, session 14).
    """
    if len(files) == 1:
        return tf.data.TFRecordDataset(files, compression_type="GZIP")
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=min(len(files), MAX_PARALLEL_FILES), block_length=READ_BLOCK,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(file_pattern, tft_output: tft.TFTransformOutput, spec: DatasetSpec,
                 batch_size: int, shuffle: bool = False, seed: int = 0,
                 num_epochs: Optional[int] = 1,
                 scenario_weights: Optional[Sequence[float]] = None) -> tf.data.Dataset:
    """``(features, {task: label [batch, 1]})`` batches from transformed tf.Examples.

    With ``scenario_weights`` (one per scenario id, unseen included) the batches
    are ``(features, labels, {task: weight [batch, 1]})``.
    """
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = [f for pattern in patterns for f in tf.io.gfile.glob(pattern)]
    if not files:
        raise ValueError(f"no transformed examples match {patterns}")
    feature_spec = tft_output.transformed_feature_spec()
    dataset = _records(sorted(files))
    if shuffle:
        dataset = dataset.shuffle(buffer_size=max(4 * batch_size, 10_000), seed=seed)
    dataset = dataset.repeat(num_epochs).batch(batch_size)
    labels = [features.label_key(t) for t in spec.task_names]

    def split(serialized):
        parsed = tf.io.parse_example(serialized, feature_spec)
        targets = {t: tf.reshape(parsed.pop(t), [-1, 1]) for t in labels}
        if scenario_weights is None:
            return parsed, targets
        weight = tf.gather(tf.constant(scenario_weights, tf.float32), parsed[features.SCENARIO_ID])
        return parsed, targets, {t: weight[:, None] for t in labels}

    return dataset.map(split, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def count_scenarios(dataset: tf.data.Dataset, num_scenarios: int) -> np.ndarray:
    """Examples per scenario id (the unseen-scenario id excluded) in one pass."""
    counts = np.zeros(num_scenarios + 1, np.int64)
    for batch in dataset:
        ids = batch[0][features.SCENARIO_ID].numpy()
        counts += np.bincount(ids, minlength=num_scenarios + 1)[: num_scenarios + 1]
    return counts[:num_scenarios]


def scenario_level_sizes(tft_output: tft.TFTransformOutput, spec: DatasetSpec) -> List[int]:
    """Id range (vocabulary + OOV) of each coarser level of the scenario hierarchy."""
    return [int(tft_output.vocabulary_size_by_name(features.scenario_level_vocabulary(i))) + 1
            for i in range(len(spec.scenario_columns) - 1)]


def data_info(tft_output: tft.TFTransformOutput, spec: DatasetSpec,
              scenario_counts: Sequence[int],
              field_mask: Optional[Sequence[float]] = None) -> DataInfo:
    names = scenario_names(tft_output)
    counts = np.asarray(scenario_counts, np.float64)
    prior = counts / counts.sum() if counts.sum() > 0 else np.full(len(names), 1.0 / len(names))
    return DataInfo(
        field_names=tuple(spec.field_names), vocab_sizes=tuple(field_vocab_sizes(tft_output, spec)),
        task_names=tuple(spec.task_names), scenario_names=tuple(names),
        scenario_prior=tuple(float(p) for p in prior),
        field_mask=None if field_mask is None else tuple(float(m) for m in field_mask),
        task_parents=tuple(t.depends_on for t in spec.tasks),
        scenario_level_sizes=tuple(scenario_level_sizes(tft_output, spec)))
