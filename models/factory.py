"""Builds any MSMT model from a model spec and what Transform learnt about the data.

Every architecture is a *backbone* layer registered in ``ARCHITECTURES``:

- constructor: ``num_scenarios``, ``num_tasks``, the data-derived context
  arguments it declares (``Architecture.context``: any of ``num_fields``,
  ``embedding_dim``, ``scenario_level_sizes``, ``scenario_prior``) and its
  hyper-parameters from the model spec;
- ``call(inputs, training)`` with ``inputs`` a dict of
  ``embedded`` ``[batch, num_fields, embedding_dim]`` (field embeddings, masked
  by the feature selection), ``scenario_id`` ``[batch]`` (``num_scenarios`` for
  a scenario unseen in training) and ``scenario_levels`` ``[batch, levels]``
  (ids of the coarser levels of a scenario hierarchy, coarse to fine; zero
  columns without a hierarchy);
- returns ``task_logits`` ``[batch, num_scenarios, num_tasks]``, auxiliary losses
  via ``add_loss``. A backbone whose ``call`` takes ``all_scenarios`` (default True)
  is called with ``all_scenarios=False`` and then computes only each example's own
  scenario row (every row for an unseen scenario; the others are 0, which
  ``ScenarioSelect`` weighs by 0); see ``models.layers.routing`` and
  ``all_scenario_model``.

The model around it is the same for all: one fused embedding table, the
backbone, ``TaskProbabilities`` (ESMM composition when the spec asks for it)
and ``ScenarioSelect`` (each example's own scenario; outputs ``{task: [batch, 1]}``).
"""

import dataclasses
import inspect
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from models import automtl_search, features
from models.layers import FieldEmbedding, MultiScenarioMMoE, ScenarioSelect, TaskProbabilities
from models.layers.aesm2 import AESM2
from models.layers.automtl import AutoMTLDerived
from models.layers.hinet import HiNet
from models.layers.ple import CGC, PLE
from models.layers.selection import ScenarioFieldMask, ValueMask
from models.layers.shared_bottom import SharedBottom
from models.layers.star import STAR
from pipeline.specs import ModelSpec, SpecError, _suggest

CONTEXT_ARGUMENTS = ("num_fields", "embedding_dim", "scenario_level_sizes", "scenario_prior",
                     "head_field_mask")
BACKBONE_LAYER = "backbone"
PROBABILITIES_LAYER = "task_probabilities"


@dataclasses.dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the transformed data."""

    field_names: Tuple[str, ...]
    vocab_sizes: Tuple[int, ...]  # Per field, OOV and missing ids included.
    task_names: Tuple[str, ...]
    scenario_names: Tuple[str, ...]  # In scenario-id order; id len(...) is "unseen".
    scenario_prior: Tuple[float, ...]  # Each scenario's share of the training data.
    field_mask: Optional[Tuple[float, ...]] = None  # 1 keeps a field, 0 drops it.
    task_parents: Tuple[Optional[str], ...] = ()  # depends_on per task (None: independent).
    scenario_level_sizes: Tuple[int, ...] = ()  # Id range of each coarser hierarchy level.
    # Feature selection (models.training.selected_data_info), over the fields above:
    scenario_field_mask: Optional[Tuple[Tuple[float, ...], ...]] = None  # [S, F]: all its paths read
    shared_field_mask: Optional[Tuple[Tuple[float, ...], ...]] = None  # [S, F]: its shared parts read
    head_field_mask: Optional[Tuple[Tuple[float, ...], ...]] = None  # [S * T, F]
    value_masks: Optional[Tuple[Tuple[Tuple[float, ...], ...], ...]] = None  # F x [S, vocab_f]

    @property
    def num_scenarios(self) -> int:
        return len(self.scenario_names)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A registered backbone: its layer, hyper-parameters (type, default) and context."""

    layer: Callable[..., keras.layers.Layer]
    hparams: Mapping[str, Tuple[type, Any]]
    context: Tuple[str, ...] = ()
    # Optional step before building (e.g. an architecture search):
    # prepare(spec, data_info, train_dataset, eval_dataset, log_dir) -> ModelSpec to build.
    prepare: Optional[Callable[..., ModelSpec]] = None
    validate: Optional[Callable[[Dict[str, Any]], Optional[str]]] = None  # -> error or None


ARCHITECTURES: Dict[str, Architecture] = {}


def register(name: str, architecture: Architecture) -> None:
    for key in architecture.context:
        if key not in CONTEXT_ARGUMENTS:
            raise ValueError(f"{name}: unknown context argument {key!r}")
    ARCHITECTURES[name] = architecture


register("mmoe", Architecture(MultiScenarioMMoE, {
    "num_experts": (int, 4),
    "expert_units": (list, (128, 64)),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
}, context=("head_field_mask",)))

register("shared_bottom", Architecture(SharedBottom, {
    "bottom_units": (list, (128, 64)),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
}))

register("cgc", Architecture(CGC, {
    "num_specific_experts": (int, 2),
    "num_shared_experts": (int, 4),
    "expert_units": (list, (64,)),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
}, context=("head_field_mask",)))
register("ple", Architecture(PLE, {
    "num_levels": (int, 2),
    "num_specific_experts": (int, 2),
    "num_shared_experts": (int, 4),
    "expert_units": (list, (64,)),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
}, context=("head_field_mask",)))

register("star", Architecture(STAR, {
    "units": (list, (128, 64)),
    "dropout": (float, 0.0),
    "aux_units": (list, (32,)),
    "aux_features": (bool, True),
}, context=("embedding_dim",)))

register("aesm2", Architecture(AESM2, {
    "num_experts": (int, 6),
    "expert_units": (list, (64,)),
    "top_k_specific": (int, 2),
    "top_k_shared": (int, 1),
    "tower_units": (list, (32,)),
    "lambda_sp": (float, 0.01),
    "lambda_sh": (float, 0.01),
    "noise_scale": (float, 0.01),
    "dropout": (float, 0.0),
}, context=("embedding_dim", "scenario_level_sizes"), validate=AESM2.validate_hparams))

register("hinet", Architecture(HiNet, {
    "num_sub_experts": (int, 5),
    "sub_expert_units": (list, (128, 64)),
    "num_shared_experts": (int, 2),
    "num_specific_experts": (int, 2),
    "expert_units": (list, (128, 64)),
    "tower_units": (list, (128, 64)),
    "san_dim": (int, 16),
    "dropout": (float, 0.0),
}, validate=HiNet.validate_hparams))

# AutoMTL: the supernet, whose prepare step is the architecture search and returns an
# "automtl_derived" spec; the derived network is then built and trained from scratch.
register("automtl", Architecture(automtl_search.supernet_layer, automtl_search.SUPERNET_HPARAMS,
                                 prepare=automtl_search.search,
                                 validate=automtl_search.validate_supernet))
register("automtl_derived", Architecture(AutoMTLDerived, automtl_search.DERIVED_HPARAMS,
                                         validate=automtl_search.validate_derived))


def _positive_int_list(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _check_type(kind: type, value: Any) -> bool:
    if kind is list:
        return _positive_int_list(value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def resolve_hparams(spec: ModelSpec) -> Dict[str, Any]:
    """The architecture's hyper-parameters with defaults filled in, checked."""
    if spec.architecture not in ARCHITECTURES:
        raise SpecError(spec.source, "architecture",
                        f"unknown architecture {spec.architecture!r}"
                        f"{_suggest(spec.architecture, list(ARCHITECTURES))}; "
                        f"known: {', '.join(sorted(ARCHITECTURES))}")
    architecture = ARCHITECTURES[spec.architecture]
    known = architecture.hparams
    values = {name: (list(default) if kind is list else default)
              for name, (kind, default) in known.items()}
    for name, value in spec.hparams:
        if name not in known:
            raise SpecError(spec.source, f"hparams.{name}",
                            f"not a hyper-parameter of {spec.architecture}"
                            f"{_suggest(name, list(known))}; known: {', '.join(sorted(known))}")
        kind = known[name][0]
        if not _check_type(kind, value):
            want = "a non-empty list of positive integers" if kind is list else kind.__name__
            raise SpecError(spec.source, f"hparams.{name}", f"expected {want}, got {value!r}")
        values[name] = list(value) if kind is list else value
    for name, value in values.items():
        if name == "dropout" or name.endswith("_dropout"):
            if not 0.0 <= value < 1.0:
                raise SpecError(spec.source, f"hparams.{name}", f"must be in [0, 1), got {value}")
        elif known[name][0] is int and name.startswith("num_") and value < 1:
            raise SpecError(spec.source, f"hparams.{name}", f"must be >= 1, got {value}")
    if architecture.validate is not None:
        problem = architecture.validate(values)
        if problem:
            raise SpecError(spec.source, "hparams", problem)
    return values


def _context(data: DataInfo, embedding_dim: int) -> Dict[str, Any]:
    return {"num_fields": len(data.field_names), "embedding_dim": embedding_dim,
            "scenario_level_sizes": list(data.scenario_level_sizes),
            "scenario_prior": list(data.scenario_prior),
            "head_field_mask": (None if data.head_field_mask is None
                                else [list(row) for row in data.head_field_mask])}


def build_backbone(spec: ModelSpec, data: DataInfo) -> keras.layers.Layer:
    hparams = resolve_hparams(spec)
    architecture = ARCHITECTURES[spec.architecture]
    context = _context(data, spec.embedding_dim)
    return architecture.layer(num_scenarios=data.num_scenarios, num_tasks=len(data.task_names),
                              name=BACKBONE_LAYER,
                              **{k: context[k] for k in architecture.context}, **hparams)


def model_input_names(data: DataInfo) -> Tuple[str, ...]:
    levels = tuple(features.scenario_level_id(i) for i in range(len(data.scenario_level_sizes)))
    return tuple(data.field_names) + (features.SCENARIO_ID,) + levels


def build_model(spec: ModelSpec, data: DataInfo, own_scenario: bool = True) -> keras.Model:
    """A Keras model: transformed features + scenario ids in, own-scenario probabilities out.

    Inputs: one int64 ``[batch]`` tensor per field, ``scenario_id`` and, with a
    scenario hierarchy, ``scenario_level_<i>_id``. Outputs: ``{task: [batch, 1]}``,
    each task's probability for the example's own scenario. ``own_scenario=False``
    runs every scenario's path for every example also in backbones that can route
    (same outputs, more work; for benchmarks). The layers compute in the spec's
    ``training.precision`` (a Keras dtype policy; float32 by default).
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(spec.training_dict.get("precision", "float32"))
    try:
        return _build_model(spec, data, own_scenario)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_model(spec: ModelSpec, data: DataInfo, own_scenario: bool) -> keras.Model:
    inputs = {name: keras.Input(shape=(), dtype=tf.int64, name=name)
              for name in model_input_names(data)}
    field_ids = tf.stack([inputs[name] for name in data.field_names], axis=1)
    embedded = FieldEmbedding(data.vocab_sizes, spec.embedding_dim, field_mask=data.field_mask,
                              name="field_embedding")(field_ids)
    scenario_id = inputs[features.SCENARIO_ID]
    if data.value_masks is not None:  # MultiFS: dropped values read as zeros per scenario.
        embedded = ValueMask(data.value_masks, name="value_mask")(embedded, field_ids, scenario_id)
    backbone_inputs = {}
    if data.shared_field_mask is not None:  # What a scenario's shared parts read (MMoE/CGC/PLE).
        backbone_inputs["embedded_shared"] = ScenarioFieldMask(
            data.shared_field_mask, name="shared_field_mask")(embedded, scenario_id)
    if data.scenario_field_mask is not None:  # Every field some path of the scenario reads.
        embedded = ScenarioFieldMask(data.scenario_field_mask, name="scenario_field_mask")(
            embedded, scenario_id)
    levels = [inputs[features.scenario_level_id(i)] for i in range(len(data.scenario_level_sizes))]
    scenario_levels = (tf.stack(levels, axis=1) if levels
                       else tf.zeros_like(scenario_id)[:, None][:, :0])
    backbone = build_backbone(spec, data)
    routing = ({"all_scenarios": False} if own_scenario and _routes_by_scenario(backbone)
               else {})
    task_logits = backbone(
        {"embedded": embedded, "scenario_id": scenario_id, "scenario_levels": scenario_levels,
         **backbone_inputs}, **routing)
    parents = None
    if spec.esmm:
        parents = [None if p is None else data.task_names.index(p) for p in data.task_parents]
        if all(p is None for p in parents):
            raise SpecError(spec.source, "esmm", "no task of this dataset depends on another "
                            "(tasks[].depends_on), so there is nothing to compose")
    # Probabilities in float32 also under a mixed-precision policy (bf16 sigmoid and log loss
    # lose the tails).
    probabilities = TaskProbabilities(parents, name=PROBABILITIES_LAYER, dtype="float32")(
        task_logits)
    own = ScenarioSelect(data.scenario_prior, name="scenario_select", dtype="float32")(
        probabilities, scenario_id)
    outputs = {task: keras.layers.Identity(name=task, dtype="float32")(own[:, i:i + 1])
               for i, task in enumerate(data.task_names)}
    return keras.Model(inputs, outputs, name=spec.name)


def _routes_by_scenario(backbone: keras.layers.Layer) -> bool:
    """Whether the backbone can compute each example's own scenario only."""
    return "all_scenarios" in inspect.signature(backbone.call).parameters


def all_scenario_model(model: keras.Model) -> keras.Model:
    """Diagnostics: every scenario's probability per task, ``[batch, scenarios, tasks]``.

    A backbone that the model runs on each example's own scenario only
    (``all_scenarios=False``, ``models.layers.routing``) is called once more with
    ``all_scenarios=True``, sharing its weights.
    """
    probabilities = model.get_layer(PROBABILITIES_LAYER)
    backbone = model.get_layer(BACKBONE_LAYER)
    if not _routes_by_scenario(backbone):
        return keras.Model(model.inputs, probabilities.get_output_at(0))
    logits = backbone(backbone.get_input_at(0), all_scenarios=True)
    return keras.Model(model.inputs, probabilities(logits))


def prepare_spec(spec: ModelSpec, data: DataInfo, train_dataset, eval_dataset,
                 log_dir: str) -> ModelSpec:
    """Runs the architecture's preparation step (e.g. AutoMTL's search), if it has one."""
    resolve_hparams(spec)
    architecture = ARCHITECTURES[spec.architecture]
    if architecture.prepare is None:
        return spec
    return architecture.prepare(spec, data, train_dataset, eval_dataset, log_dir)
