"""run_fn's work: build the model from the specs, train it, export the serving model."""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras as keras
from absl import logging

from components.feature_selector.artifact import Selection, SelectionMismatchError
from components.trainer.component import FEATURE_SELECTION_URI
from models import data, diagnostics, distribute, factory, features, tuning
from models.optimizers import adam
from pipeline.specs import DatasetSpec, ModelSpec

SERVING_SIGNATURE = "serving_default"
TRANSFORMED_SIGNATURE = "predict_transformed"  # Not TFMA's reserved "transformed_features".
SCENARIO_KNOWN = "scenario_known"
DATA_INFO_FILE = "data_info.json"


def _serving_feature_spec(tft_output: tft.TFTransformOutput, spec: DatasetSpec,
                          fields: Optional[Sequence[str]] = None) -> Dict:
    """Raw feature spec for requests, labels dropped, with defaults for absent features.

    An absent categorical value or scenario becomes "" (an out-of-vocabulary id,
    so an unseen scenario), an absent number NaN (the missing bucket). Only
    ``fields`` (default: all) are parsed: a field the feature selection dropped
    is not read at all.
    """
    raw_spec = tft_output.raw_feature_spec()
    result = {}
    wanted = set(spec.field_names if fields is None else fields) | set(spec.scenario_columns)
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


def _absent_feature(feature, batch: tf.Tensor):
    """The parsed form of a feature absent from every example of a ``[batch]`` request."""
    if isinstance(feature, tf.io.FixedLenFeature):
        default = tf.constant(feature.default_value, feature.dtype)
        return tf.broadcast_to(default, tf.concat([batch, tf.shape(default)], 0))
    return tf.sparse.SparseTensor(tf.zeros([0, 2], tf.int64), tf.zeros([0], feature.dtype),
                                  tf.concat([tf.cast(batch, tf.int64), [1]], 0))


class ServingModule(tf.Module):
    """The exported signatures around a trained Keras model and the Transform graph."""

    def __init__(self, model: keras.Model, tft_output: tft.TFTransformOutput, spec: DatasetSpec,
                 model_inputs: Sequence[str], num_scenarios: int):
        super().__init__()
        self.model = model
        self.tft_layer = tft_output.transform_features_layer()
        kept = [f for f in spec.field_names if f in set(model_inputs)]
        self._feature_spec = _serving_feature_spec(tft_output, spec, kept)
        # A dropped field is not parsed, but the Transform graph may still compute it
        # (e.g. numericals bucketized together): it gets its "missing" value.
        self._dropped_spec = {
            name: feature for name, feature in _serving_feature_spec(tft_output, spec).items()
            if name not in self._feature_spec}
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
        batch = tf.shape(serialized)[:1]
        for name, feature in self._dropped_spec.items():
            parsed[name] = _absent_feature(feature, batch)
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


def compile_model(model: keras.Model, spec: DatasetSpec, training: Mapping[str, Any]) -> None:
    """Adam, binary cross-entropy and AUC per task output; ``training``: the model spec's
    training block (``learning_rate``, ``steps_per_execution``)."""
    model.compile(
        optimizer=adam(training["learning_rate"]),
        loss={t: keras.losses.BinaryCrossentropy() for t in spec.task_names},
        metrics={t: [keras.metrics.AUC(name="auc")] for t in spec.task_names},
        steps_per_execution=training["steps_per_execution"])


def training_inputs(fn_args, spec: DatasetSpec, model_spec: ModelSpec):
    """``(tft_output, DataInfo, train_ds, eval_ds)`` for the Trainer's (or Tuner's) fn_args.

    Honours the FeatureSelection passed in ``custom_config`` and the spec's
    scenario loss weights.
    """
    config = fn_args.custom_config or {}
    training = model_spec.training_dict
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    batch_size = training["batch_size"]
    num_scenarios = len(data.scenario_names(tft_output))
    counts = data.count_scenarios(data.make_dataset(fn_args.train_files, tft_output, spec, 8192),
                                  num_scenarios)
    info = data.data_info(tft_output, spec, counts)
    if config.get(FEATURE_SELECTION_URI):
        selection = Selection.read(config[FEATURE_SELECTION_URI])
        selection.check_matches(fn_args.transform_graph_path, spec.field_names, info.vocab_sizes)
        info = selected_data_info(info, selection)
        logging.info("Feature selection (%s): the model reads %d of %d fields (%s dropped)%s",
                     selection.method, len(info.field_names), len(spec.field_names),
                     sorted(set(spec.field_names) - set(info.field_names)) or "none",
                     ", values masked per scenario" if info.value_masks else "")
    weights = scenario_loss_weights(training["scenario_loss_weights"], info.scenario_prior)
    # A fixed number of steps per epoch reads the data as a stream; else one pass per epoch.
    train_ds = data.make_dataset(fn_args.train_files, tft_output, spec, batch_size, shuffle=True,
                                 seed=training["seed"], scenario_weights=weights,
                                 num_epochs=None if training["steps_per_epoch"] else 1)
    eval_ds = data.make_dataset(fn_args.eval_files, tft_output, spec, batch_size,
                                scenario_weights=weights,
                                num_epochs=None if training["eval_steps"] else 1)
    logging.info("Data for %s on %d scenarios %s (train examples per scenario %s)",
                 model_spec.architecture, num_scenarios, info.scenario_names, counts.tolist())
    return tft_output, info, train_ds, eval_ds


def selected_data_info(info: factory.DataInfo, selection: Selection) -> factory.DataInfo:
    """``info`` restricted to the fields some path uses, with the selection's masks.

    Fields no (scenario, task) path uses are dropped (no embedding rows, not a
    model input); over the rest, ``scenario_field_mask`` ``[S, F]`` is every
    field some path of the scenario reads (union over its tasks),
    ``shared_field_mask`` the scenario's shared set when the method chose a
    narrower one (MultiSFS ``shared: intersection``), ``head_field_mask``
    ``[S * T, F]`` each path's own fields and ``value_masks`` the per-scenario
    value masks (MultiFS).
    """
    if list(selection.scenarios) != list(info.scenario_names):
        raise SelectionMismatchError(
            f"the feature selection covers scenarios {selection.scenarios}, the data has "
            f"{list(info.scenario_names)}")
    keep = np.flatnonzero(selection.union_mask)
    if keep.size == 0:
        raise SelectionMismatchError(
            f"the feature selection ({selection.method}) keeps no field for any path")

    def rows(array):  # None where the mask keeps everything: no layer for a no-op.
        array = np.asarray(array)
        return None if np.all(array > 0) else tuple(tuple(float(v) for v in row) for row in array)

    head = selection.mask[:, :, keep].reshape(-1, keep.size)
    shared = selection.scenario_mask[:, keep]
    union = np.maximum(selection.mask[:, :, keep].max(axis=1), shared)
    value_masks = None
    if selection.value_masks is not None and any(
            np.any(selection.value_masks[f] <= 0) for f in keep):
        value_masks = tuple(tuple(tuple(float(v) for v in row) for row in selection.value_masks[f])
                            for f in keep)
    return dataclasses.replace(
        info, field_names=tuple(info.field_names[f] for f in keep),
        vocab_sizes=tuple(info.vocab_sizes[f] for f in keep), field_mask=None,
        scenario_field_mask=rows(union),
        shared_field_mask=None if np.array_equal(shared, union) else rows(shared),
        head_field_mask=rows(head), value_masks=value_masks)


def selection_savings(model_spec: ModelSpec, model: keras.Model, info: factory.DataInfo,
                      tft_output: tft.TFTransformOutput, spec: DatasetSpec, eval_ds,
                      repeats: int = 20) -> Dict:
    """Parameters and model time per batch saved by the selection vs the same model on every field.

    The model without selection is built (untrained: only its size and speed
    matter) from the same spec on all fields. Time: median of ``repeats`` calls
    on one eval batch of transformed features (Transform and parsing excluded).
    """
    import time
    full_info = dataclasses.replace(
        info, field_names=tuple(spec.field_names),
        vocab_sizes=tuple(data.field_vocab_sizes(tft_output, spec)), field_mask=None,
        scenario_field_mask=None, shared_field_mask=None, head_field_mask=None, value_masks=None)
    full = factory.build_model(model_spec, full_info)
    batch = next(iter(eval_ds))[0]

    def median_ms(m):
        inputs = {k: batch[k] for k in factory.model_input_names(
            info if m is model else full_info)}
        call = tf.function(lambda x: m(x, training=False))
        call(inputs)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call(inputs)
            times.append(1000.0 * (time.perf_counter() - start))
        return float(np.median(times))

    full_ms, selected_ms = median_ms(full), median_ms(model)
    return {"fields_dropped": len(spec.field_names) - len(info.field_names),
            "parameters_without_selection": int(full.count_params()),
            "parameters": int(model.count_params()),
            "parameters_saved": int(full.count_params() - model.count_params()),
            "batch_size": int(batch[features.SCENARIO_ID].shape[0]),
            "model_ms_without_selection": full_ms, "model_ms": selected_ms,
            "model_ms_saved": full_ms - selected_ms}


def run(fn_args) -> None:
    """The body of run_fn (see models/module.py)."""
    config = fn_args.custom_config or {}
    spec = DatasetSpec.from_json(config["dataset_spec"])
    model_spec = tuning.apply_hyperparameters(ModelSpec.from_json(config["model_spec"]),
                                              getattr(fn_args, "hyperparameters", None))
    training = model_spec.training_dict
    # First: a multi-worker strategy configures collective ops before any TF op runs.
    strategy = distribute.make_strategy(training.get("strategy", "mirrored"))
    keras.utils.set_random_seed(training["seed"])
    tft_output, info, train_ds, eval_ds = training_inputs(fn_args, spec, model_spec)
    train_ds, eval_ds = (distribute.shard_by_example(d, strategy) for d in (train_ds, eval_ds))
    # Non-chief workers write logs and the SavedModel to temporary directories.
    run_dir = distribute.write_dir(fn_args.model_run_dir, strategy)
    num_scenarios = info.num_scenarios
    model_spec = factory.prepare_spec(model_spec, info, train_ds, eval_ds, fn_args.model_run_dir)

    with strategy.scope():
        model = factory.build_model(model_spec, info)
        compile_model(model, spec, training)
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=run_dir, update_freq="epoch"),
        diagnostics.MSMTDiagnostics(
            run_dir, eval_ds, info, eval_steps=training["eval_steps"],
            selection=(Selection.read(config[FEATURE_SELECTION_URI])
                       if config.get(FEATURE_SELECTION_URI) else None)),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training["early_stopping_patience"],
                                      restore_best_weights=True),
    ]
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Its chief-only gate sub-model creates variables (a collective broadcast each) that
        # the other workers do not, which breaks the workers' lock-step: skip it.
        logging.info("Multi-worker training: MSMT diagnostics are not written")
        callbacks = [c for c in callbacks if not isinstance(c, diagnostics.MSMTDiagnostics)]
    history = model.fit(train_ds, validation_data=eval_ds, epochs=training["epochs"],
                        steps_per_epoch=training["steps_per_epoch"],
                        validation_steps=training["eval_steps"], callbacks=callbacks, verbose=2)

    savings = {}
    if info.field_names != tuple(spec.field_names) or info.scenario_field_mask is not None:
        savings = selection_savings(model_spec, model, info, tft_output, spec, eval_ds)
        logging.info("Feature selection saves %d of %d parameters (%.1f%%) and %.3f of %.3f ms per "
                     "batch of %d in the model (%d fields dropped)", savings["parameters_saved"],
                     savings["parameters_without_selection"],
                     100.0 * savings["parameters_saved"] / savings["parameters_without_selection"],
                     savings["model_ms_saved"], savings["model_ms_without_selection"],
                     savings["batch_size"], savings["fields_dropped"])
    serving = ServingModule(model, tft_output, spec, factory.model_input_names(info), num_scenarios)
    signatures = {SERVING_SIGNATURE: serving.serve_examples.get_concrete_function(),
                  TRANSFORMED_SIGNATURE: serving.transformed_signature()}
    serving_dir = distribute.write_dir(fn_args.serving_model_dir, strategy)
    tf.saved_model.save(serving, serving_dir, signatures=signatures)  # Every worker saves.
    distribute.remove_if_temporary(serving_dir, fn_args.serving_model_dir)
    distribute.remove_if_temporary(run_dir, fn_args.model_run_dir)
    if not distribute.is_chief(strategy):
        return
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, DATA_INFO_FILE), "w") as f:
        json.dump({"data_info": {k: v for k, v in info.__dict__.items() if k != "value_masks"},
                   "selection_savings": savings,
                   "model_spec": json.loads(model_spec.to_json()),
                   "history": {k: [float(v) for v in vs] for k, vs in history.history.items()}},
                  f, indent=1, default=list)
