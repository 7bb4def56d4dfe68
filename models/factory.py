"""Builds any MSMT model from a model spec and what Transform learnt about the data."""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras

from models import features
from models.layers import FieldEmbedding, MultiScenarioMMoE, ScenarioSelect
from pipeline.specs import ModelSpec, SpecError, _suggest


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the transformed data."""

    field_names: Tuple[str, ...]
    vocab_sizes: Tuple[int, ...]  # Per field, OOV and missing ids included.
    task_names: Tuple[str, ...]
    scenario_names: Tuple[str, ...]  # In scenario-id order; id len(...) is "unseen".
    scenario_prior: Tuple[float, ...]  # Each scenario's share of the training data.
    field_mask: Optional[Tuple[float, ...]] = None  # 1 keeps a field, 0 drops it.

    @property
    def num_scenarios(self) -> int:
        return len(self.scenario_names)


@dataclasses.dataclass(frozen=True)
class Architecture:
    layer: Callable[..., keras.layers.Layer]
    hparams: Mapping[str, Tuple[type, Any]]  # name -> (type, default)


def _positive_int_list(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, int) and v > 0 for v in value))


ARCHITECTURES: Dict[str, Architecture] = {
    "mmoe": Architecture(MultiScenarioMMoE, {
        "num_experts": (int, 4),
        "expert_units": (list, (128, 64)),
        "tower_units": (list, (32,)),
        "dropout": (float, 0.0),
    }),
}


def resolve_hparams(spec: ModelSpec) -> Dict[str, Any]:
    """The architecture's hyper-parameters with defaults filled in, checked."""
    if spec.architecture not in ARCHITECTURES:
        raise SpecError(spec.source, "architecture",
                        f"unknown architecture {spec.architecture!r}"
                        f"{_suggest(spec.architecture, list(ARCHITECTURES))}; "
                        f"known: {', '.join(sorted(ARCHITECTURES))}")
    known = ARCHITECTURES[spec.architecture].hparams
    values = {name: default for name, (_, default) in known.items()}
    for name, value in spec.hparams:
        if name not in known:
            raise SpecError(spec.source, f"hparams.{name}",
                            f"not a hyper-parameter of {spec.architecture}"
                            f"{_suggest(name, list(known))}; known: {', '.join(sorted(known))}")
        kind = known[name][0]
        if kind is list:
            ok = _positive_int_list(value)
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            want = "a non-empty list of positive integers" if kind is list else kind.__name__
            raise SpecError(spec.source, f"hparams.{name}", f"expected {want}, got {value!r}")
        values[name] = list(value) if kind is list else value
    if values.get("dropout") is not None and not 0.0 <= values["dropout"] < 1.0:
        raise SpecError(spec.source, "hparams.dropout", f"must be in [0, 1), got {values['dropout']}")
    for name in ("num_experts",):
        if name in values and values[name] < 1:
            raise SpecError(spec.source, f"hparams.{name}", f"must be >= 1, got {values[name]}")
    return values


BACKBONE_LAYER = "backbone"


def build_model(spec: ModelSpec, data: DataInfo) -> keras.Model:
    """A Keras model: transformed features + ``scenario_id`` in, own-scenario task probabilities out.

    Inputs: one int64 ``[batch]`` tensor per field (transformed ids) and
    ``scenario_id`` int64 ``[batch]``. Outputs: ``{task: [batch, 1]}``, each task's
    probability for the example's own scenario.
    """
    hparams = resolve_hparams(spec)
    inputs = {name: keras.Input(shape=(), dtype=tf.int64, name=name) for name in data.field_names}
    inputs[features.SCENARIO_ID] = keras.Input(shape=(), dtype=tf.int64, name=features.SCENARIO_ID)
    field_ids = tf.stack([inputs[name] for name in data.field_names], axis=1)
    embedded = FieldEmbedding(data.vocab_sizes, spec.embedding_dim, field_mask=data.field_mask,
                              name="field_embedding")(field_ids)
    x = keras.layers.Flatten(name="flatten")(embedded)
    backbone = ARCHITECTURES[spec.architecture].layer(
        num_scenarios=data.num_scenarios, num_tasks=len(data.task_names), name=BACKBONE_LAYER,
        **hparams)
    task_logits = backbone(x, inputs[features.SCENARIO_ID])
    probabilities = ScenarioSelect(data.scenario_prior, name="scenario_select")(
        task_logits, inputs[features.SCENARIO_ID])
    outputs = {task: keras.layers.Identity(name=task)(probabilities[:, i:i + 1])
               for i, task in enumerate(data.task_names)}
    return keras.Model(inputs, outputs, name=spec.name)


def all_scenario_model(model: keras.Model) -> keras.Model:
    """Diagnostics: every scenario's probability per task, ``[batch, scenarios, tasks]``."""
    logits = model.get_layer(BACKBONE_LAYER).output
    return keras.Model(model.inputs, tf.sigmoid(logits))
