"""Hyper-parameter search for the TFX Tuner: KerasTuner over the model spec's ``tuning`` block.

``tuner_fn`` (models/module.py) returns a KerasTuner tuner (random search or
Bayesian optimisation) whose trials build the spec's model with the sampled
values, train it on the transformed train split (with the FeatureSelection the
Trainer uses) and score it by the mean over tasks of the eval AUC. The Trainer
then reads the best values (``fn_args.hyperparameters``) and
``apply_hyperparameters`` lays them over the spec.
"""

import dataclasses
from typing import Any, Dict, List, Optional

import keras_tuner
import numpy as np
import tf_keras as keras
from absl import logging

from pipeline.specs import DatasetSpec, ModelSpec

TUNING_CONFIG_KEY = "tuning"  # custom_config key of the pipeline's TuningConfig (a dict).
OBJECTIVE = "val_mean_auc"


def apply_hyperparameters(model_spec: ModelSpec, hyperparameters: Optional[Dict[str, Any]]) -> ModelSpec:
    """The spec with the Tuner's values over its own.

    ``hyperparameters``: KerasTuner's ``HyperParameters.get_config()`` (what the
    Trainer reads from the Tuner's ``best_hyperparameters``), or ``{name: value}``.
    """
    if not hyperparameters:
        return model_spec
    values = hyperparameters.get("values", hyperparameters)
    training, hparams = model_spec.training_dict, model_spec.hparams_dict
    embedding_dim = model_spec.embedding_dim
    for name, value in values.items():
        if name == "embedding_dim":
            embedding_dim = int(value)
        elif name in training:
            training[name] = value
        elif name in hparams:
            hparams[name] = value
        else:
            raise ValueError(f"hyper-parameter {name!r} is neither a training key, embedding_dim "
                             f"nor a hyper-parameter of model spec {model_spec.source}")
    return dataclasses.replace(model_spec, embedding_dim=embedding_dim,
                               hparams=tuple(sorted(hparams.items())),
                               training=tuple(sorted(training.items())))


def declare(hp: keras_tuner.HyperParameters, model_spec: ModelSpec) -> Dict[str, Any]:
    """Declares the spec's search space on ``hp``; returns this trial's values."""
    values = {}
    for name, space in model_spec.search_space.items():
        if "values" in space:
            values[name] = hp.Choice(name, list(space["values"]))
        elif all(isinstance(space[k], int) for k in ("min", "max")) and isinstance(
                space.get("step", 1), int):
            values[name] = hp.Int(name, space["min"], space["max"], step=space.get("step", 1),
                                  sampling=space["sampling"])
        else:
            values[name] = hp.Float(name, float(space["min"]), float(space["max"]),
                                    step=space.get("step"), sampling=space["sampling"])
    return values


def mean_eval_auc(history: Dict[str, List[float]], tasks: List[str]) -> List[float]:
    """Per epoch, the mean over tasks of ``val_<task>_auc``: the search's objective."""
    return [float(np.mean(values)) for values in zip(*(history[f"val_{t}_auc"] for t in tasks))]


class MSMTTuner(keras_tuner.Tuner):
    """KerasTuner's search loop, each trial training the spec's model with its values.

    ``run_trial`` is ours: KerasTuner's own build/fit path expects Keras 3 models
    and callbacks, the models here are tf_keras (Keras 2, as TFX 1.16 needs).
    A trial's score is the best epoch's mean eval AUC over tasks.
    """

    def __init__(self, fn_args, spec: DatasetSpec, model_spec: ModelSpec, epochs: int, oracle,
                 **kwargs):
        super().__init__(oracle=oracle, **kwargs)
        self.fn_args, self.spec, self.model_spec, self.epochs = fn_args, spec, model_spec, epochs
        self._inputs = {}  # batch size -> training.training_inputs(...)

    def _training_inputs(self, model_spec: ModelSpec):
        from models import training  # training imports this module.
        batch_size = model_spec.training_dict["batch_size"]
        if batch_size not in self._inputs:
            self._inputs[batch_size] = training.training_inputs(self.fn_args, self.spec, model_spec)
        return self._inputs[batch_size]

    def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
        from models import factory, training
        model_spec = apply_hyperparameters(self.model_spec, declare(trial.hyperparameters,
                                                                    self.model_spec))
        factory.resolve_hparams(model_spec)
        settings = model_spec.training_dict
        keras.utils.set_random_seed(settings["seed"])
        _, info, train_ds, eval_ds = self._training_inputs(model_spec)
        model = factory.build_model(model_spec, info)
        training.compile_model(model, self.spec, settings)
        history = model.fit(train_ds, validation_data=eval_ds, epochs=self.epochs,
                            steps_per_epoch=settings["steps_per_epoch"],
                            validation_steps=settings["eval_steps"], verbose=2).history
        scores = mean_eval_auc(history, list(self.spec.task_names))
        best = int(np.argmax(scores))
        logging.info("Trial %s %s: mean eval AUC per epoch %s", trial.trial_id,
                     trial.hyperparameters.values, scores)
        return {OBJECTIVE: scores[best], "val_loss": float(history["val_loss"][best])}


def tuner_fn(fn_args):
    """TFX Tuner: a KerasTuner tuner over the model spec's ``tuning`` search space."""
    from tfx import v1 as tfx
    from models import factory
    config = fn_args.custom_config or {}
    spec = DatasetSpec.from_json(config["dataset_spec"])
    model_spec = ModelSpec.from_json(config["model_spec"])
    settings = config.get(TUNING_CONFIG_KEY) or {}
    if not model_spec.search_space:
        raise ValueError(f"model spec {model_spec.source} has no tuning: block (the search space)")
    if factory.ARCHITECTURES[model_spec.architecture].prepare is not None:
        raise ValueError(f"architecture {model_spec.architecture!r} runs its own search in the "
                         "Trainer; tune it without the Tuner")
    space = keras_tuner.HyperParameters()
    declare(space, model_spec)
    oracles = {"random": keras_tuner.oracles.RandomSearchOracle,
               "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}
    algorithm = settings.get("algorithm", "random")
    if algorithm not in oracles:
        raise ValueError(f"tuning algorithm must be one of {sorted(oracles)}, got {algorithm!r}")
    oracle = oracles[algorithm](
        objective=keras_tuner.Objective(OBJECTIVE, direction="max"),
        max_trials=int(settings.get("max_trials", 4)), seed=model_spec.training_dict["seed"],
        hyperparameters=space)
    tuner = MSMTTuner(fn_args, spec, model_spec, int(settings.get("epochs", 1)), oracle,
                      directory=fn_args.working_dir, project_name=model_spec.name, overwrite=True)
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs={})
