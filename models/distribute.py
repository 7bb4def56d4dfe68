"""The Trainer's tf.distribute strategy, from the model spec's ``training.strategy`` and TF_CONFIG.

- ``mirrored``: ``MirroredStrategy`` over this machine's GPUs (or its CPU).
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` across the machines that
  ``TF_CONFIG`` lists (``{"cluster": {"worker": ["host:port", ...]}, "task":
  {"type": "worker", "index": i}}``), each running the same Trainer; gradients are
  all-reduced every step. As in TensorFlow's multi-worker Keras guide, the chief
  (``chief`` task, else worker 0) writes the SavedModel and logs; the other
  workers write theirs to a temporary directory that is then removed; the
  input is sharded by example (``AutoShardPolicy.DATA``) so any number of files
  works.

The strategy must exist before the process runs any TensorFlow op (collective
ops are configured at start-up), so ``run_fn`` creates it first.
"""

import json
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

from pipeline.specs import TRAINING_STRATEGIES as STRATEGIES  # noqa: E402


class DistributeConfigError(ValueError):
    """The strategy asked for cannot be set up from this process's environment."""


def make_strategy(name: str) -> tf.distribute.Strategy:
    if name not in STRATEGIES:
        raise DistributeConfigError(f"training.strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "mirrored":
        # Every MirroredStrategy of a process starts its collective keys at the same base:
        # a second Trainer in one process (the Tuner then the Trainer, a notebook running
        # the pipeline twice) would reuse the first one's keys and fail inside
        # CollectiveReduceV2. TensorFlow's own tests move the base the same way.
        tf.distribute.MirroredStrategy._collective_key_base += 100_000
        return tf.distribute.MirroredStrategy()
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise DistributeConfigError(
            "training.strategy multi_worker needs TF_CONFIG in the Trainer's environment "
            '({"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}})')
    try:
        parsed = json.loads(config)
        workers = parsed["cluster"]["worker"]
        task = parsed["task"]
        task["type"], task["index"]
    except (ValueError, KeyError, TypeError) as e:
        raise DistributeConfigError(f"TF_CONFIG is malformed ({e!r}): {config}") from None
    if not workers:
        raise DistributeConfigError("TF_CONFIG: cluster.worker lists no worker")
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the model: the ``chief`` task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def write_dir(directory: str, strategy: tf.distribute.Strategy) -> str:
    """``directory`` on the chief; a fresh temporary directory on the other workers."""
    if is_chief(strategy):
        return directory
    resolver = strategy.cluster_resolver
    return tempfile.mkdtemp(prefix=f"msmt_{resolver.task_type}_{resolver.task_id}_")


def remove_if_temporary(path: str, directory: str) -> None:
    """Deletes a non-chief worker's copy (``path`` != the real ``directory``)."""
    if path != directory:
        shutil.rmtree(path, ignore_errors=True)


def shard_by_example(dataset: tf.data.Dataset,
                     strategy: Optional[tf.distribute.Strategy]) -> tf.data.Dataset:
    """Multi-worker: each worker reads every file and keeps its share of the examples."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return dataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
