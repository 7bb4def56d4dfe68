"""The TFX module file: ``preprocessing_fn`` for Transform, ``tuner_fn`` for the Tuner and
``run_fn`` for the Trainer.

Both read the dataset spec (and run_fn the model spec) from ``custom_config``, so
one module serves every dataset and architecture.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from models import preprocessing, training, tuning  # noqa: E402
from pipeline.specs import DatasetSpec  # noqa: E402


def preprocessing_fn(inputs, custom_config):
    """tf.Transform: raw features -> field ids, scenario ids and float labels."""
    return preprocessing.transform(inputs, DatasetSpec.from_json(custom_config["dataset_spec"]))


def run_fn(fn_args):
    """TFX Trainer: trains the spec's model and exports the serving SavedModel."""
    training.run(fn_args)


def tuner_fn(fn_args):
    """TFX Tuner: a KerasTuner search over the model spec's ``tuning`` block."""
    return tuning.tuner_fn(fn_args)
