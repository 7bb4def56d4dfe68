"""run_fn's work: build the model from the specs, train it, export the serving model."""

import json
import os
from typing import Dict, Optional, List, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging

from components.feature_selector.artifact import Selection
from components.trainer.component import FEATURE_SELECTION_URI
from models import data, factory, features
from pipeline.specs import DatasetSpec, ModelSpec

SERVING_SIGNATURE = "serving_default"
TRANSFORMED_SIGNATURE = "predict_transformed"  # Not TFMA's reserved "transformed_features".
SCENARIO_KNOWN = "scenario_known"
DATA_INFO_FILE = "data_info.json"


def _serving_feature_spec(tft_output: tft.TFTransformOutput, spec: DatasetSpec) -> Dict:
    """Raw feature spec for requests, labels dropped, with defaults for absent features.

    An absent categorical value or scenario becomes "" (an out-of-vocabulary id,
    so an unseen scenario), an absent number NaN (the missing bucket).
    """
    raw_spec = tft_output.raw_feature_spec()
    result = {}
    wanted = set(spec.field_names) | set(spec.scenario_columns)
    for name, feature in raw_spec.items():
        if name not in wanted:
            continue
        if isinstance(feature, tf.io.FixedLenFeature):
            default = "" if feature.dtype == tf.string else float("nan")
            if feature.dtype == tf.int64:
                default = 0
            shape = list(feature.shape)
            size = int(np.prod(shape)) if shape else 1
            feature = tf.io.FixedLenFeature(shape, feature.dtype, default_value=[default] * size
                                            if shape else default)
        result[name] = feature
    return result


class ServingModule(tf.Module):
    """The exported signatures around a trained Keras model and the Transform graph."""

    def __init__(self, model: keras.Model, tft_output: tft.TFTransformOutput, spec: DatasetSpec,
                 model_inputs: Sequence[str], num_scenarios: int):
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        self._feature_spec = _serving_feature_spec(tft_output, spec)
        self._tasks = list(spec.task_names)
        self._model_inputs = list(model_inputs)
        self._num_scenarios = num_scenarios

    def _predict(self, transformed):
        inputs = {k: transformed[k] for k in self._model_inputs}
        outputs = self.model(inputs, training=False)
        result = {t: tf.reshape(outputs[t], [-1]) for t in self._tasks}
        result[SCENARIO_KNOWN] = tf.cast(
            transformed[features.SCENARIO_ID] < self._num_scenarios, tf.float32)
        return result

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, serialized):
        """Serialized raw tf.Examples -> each task's probability in the example's own scenario."""
        parsed = tf.io.parse_example(serialized, self._feature_spec)
        return self._predict(self.tft_layer(parsed))

    def transformed_signature(self):
        specs = {k: tf.TensorSpec([None], tf.int64, name=k) for k in self._model_inputs}
        return tf.function(self._predict, input_signature=[specs]).get_concrete_function()


def scenario_loss_weights(method: str, prior: Sequence[float]) -> Optional[List[float]]:
    """Per scenario id (unseen last) example weights; ``inverse_share`` is HiNet's.

    Normalised so that the weighted mean over the training data is 1, which
    keeps the learning rate's meaning.
    """
    if method == "none":
        return None
    prior = np.asarray(prior, np.float64)
    inverse = np.where(prior > 0, 1.0 / np.maximum(prior, 1e-12), 0.0)
    inverse /= float((prior * inverse).sum())
    return inverse.tolist() + [1.0]


def run(fn_args) -> None:
    """The body of run_fn (see models/module.py)."""
    config = fn_args.custom_config or {}
    spec = DatasetSpec.from_json(config["dataset_spec"])
    model_spec = ModelSpec.from_json(config["model_spec"])
    training = model_spec.training_dict
    keras.utils.set_random_seed(training["seed"])
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)

    field_mask = None
    if config.get(FEATURE_SELECTION_URI):
        selection = Selection.read(config[FEATURE_SELECTION_URI])
        selection.check_matches(fn_args.transform_graph_path, spec.field_names)
        field_mask = selection.union_mask
        logging.info("Feature selection (%s): training on %d of %d fields", selection.method,
                     int(field_mask.sum()), len(field_mask))

    batch_size = training["batch_size"]
    num_scenarios = len(data.scenario_names(tft_output))
    counts = data.count_scenarios(data.make_dataset(fn_args.train_files, tft_output, spec, 8192),
                                  num_scenarios)
    info = data.data_info(tft_output, spec, counts, field_mask)
    weights = scenario_loss_weights(training["scenario_loss_weights"], info.scenario_prior)
    # A fixed number of steps per epoch reads the data as a stream; else one pass per epoch.
    train_ds = data.make_dataset(fn_args.train_files, tft_output, spec, batch_size, shuffle=True,
                                 seed=training["seed"], scenario_weights=weights,
                                 num_epochs=None if training["steps_per_epoch"] else 1)
    eval_ds = data.make_dataset(fn_args.eval_files, tft_output, spec, batch_size,
                                scenario_weights=weights,
                                num_epochs=None if training["eval_steps"] else 1)
    logging.info("Training %s on %d scenarios %s (train examples per scenario %s)",
                 model_spec.architecture, num_scenarios, info.scenario_names, counts.tolist())
    model_spec = factory.prepare_spec(model_spec, info, train_ds, eval_ds, fn_args.model_run_dir)

    strategy = tf.distribute.MirroredStrategy()
    with strategy.scope():
        model = factory.build_model(model_spec, info)
        model.compile(
            optimizer=keras.optimizers.Adam(training["learning_rate"]),
            loss={t: keras.losses.BinaryCrossentropy() for t in spec.task_names},
            metrics={t: [keras.metrics.AUC(name="auc")] for t in spec.task_names})
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training["early_stopping_patience"],
                                      restore_best_weights=True),
    ]
    history = model.fit(train_ds, validation_data=eval_ds, epochs=training["epochs"],
                        steps_per_epoch=training["steps_per_epoch"],
                        validation_steps=training["eval_steps"], callbacks=callbacks, verbose=2)

    serving = ServingModule(model, tft_output, spec, factory.model_input_names(info), num_scenarios)
    signatures = {SERVING_SIGNATURE: serving.serve_examples.get_concrete_function(),
                  TRANSFORMED_SIGNATURE: serving.transformed_signature()}
    tf.saved_model.save(serving, fn_args.serving_model_dir, signatures=signatures)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, DATA_INFO_FILE), "w") as f:
        json.dump({"data_info": info.__dict__, "model_spec": json.loads(model_spec.to_json()),
                   "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}},
                  f, indent=1, default=list)
