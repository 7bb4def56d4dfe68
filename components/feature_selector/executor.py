"""FeatureSelector executor: anomaly gate, then a selection per (scenario, task) by the chosen method.

Methods (``METHODS``; each ``fn(batches_fn, vocab_sizes, num_scenarios, num_tasks, params)
-> SelectorResult``, see ``result.py``):

- ``multisfs``: MultiSFS (single-shot saliency merged by the task-relation GNN), ``multisfs.select``;
- ``saliency``: MultiSFS without the GNN (the saliency alone);
- ``multifs``: MultiFS hierarchical value gating search, ``multifs.search``;
- the scikit-learn baselines of ``baselines.REGISTRY``: ``mi`` (mutual information),
  ``chi2``, ``lasso`` (L1 logistic regression);
- ``none``: every field on every path.

The executor reads Transform's train split once into a ``batches_fn`` (a fresh
shuffled pass, same order on every run for a seed), times the method and writes
the artifact.
"""

import importlib
import json
import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.feature_selector.artifact import Selection, vocabulary_fingerprint
from components.feature_selector.result import BatchesFn, SelectorResult
from models import data, features
from pipeline.specs import DatasetSpec

ANOMALIES_FILE = "SchemaDiff.pb"
# Method name -> (module, entry point, parameters forced on top of the user's).
_ENTRY_POINTS = {
    "multisfs": ("components.feature_selector.multisfs", "select", {}),
    "saliency": ("components.feature_selector.multisfs", "select", {"gnn": False}),
    "multifs": ("components.feature_selector.multifs", "search", {}),
}
BASELINE_METHODS = ("mi", "chi2", "lasso")  # components/feature_selector/baselines.py
METHODS = ("multisfs", "multifs") + BASELINE_METHODS + ("saliency", "none")
# Read by the executor itself, not by the method: rows per batch handed to the method.
EXECUTOR_PARAMS = {"batch_size": 2048}


class AnomaliesFoundError(RuntimeError):
    """ExampleValidator found anomalies: training must not start."""


def check_anomalies(anomalies: types.Artifact) -> None:
    """Raises, naming every anomalous feature, if any split has anomalies."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(anomalies.uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            continue
        result = anomalies_pb2.Anomalies()
        result.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(result.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            problems.append(f"split {split!r}, feature {feature!r}: {info.short_description} "
                            f"({reasons})")
        if result.HasField("dataset_anomaly_info"):
            problems.append(f"split {split!r}: {result.dataset_anomaly_info.short_description}")
    if problems:
        raise AnomaliesFoundError(
            "ExampleValidator found anomalies, so the run stops before training:\n  "
            + "\n  ".join(problems)
            + "\nFix the data, or update the schema if the change is expected.")


def _select_none(batches_fn, vocab_sizes, num_scenarios, num_tasks, params):
    if params:
        raise ValueError(f"none: takes no parameters, got {sorted(params)}")
    shape = (num_scenarios, num_tasks, len(vocab_sizes))
    return SelectorResult(scores=np.ones(shape), mask=np.ones(shape, np.float32), params={})


def selector_function(method: str) -> Callable[..., SelectorResult]:
    """The method's ``fn(batches_fn, vocab_sizes, num_scenarios, num_tasks, params)``."""
    if method not in METHODS:
        raise ValueError(f"FeatureSelector: unknown method {method!r}; known: {', '.join(METHODS)}")
    if method == "none":
        return _select_none
    if method in BASELINE_METHODS:
        baselines = importlib.import_module("components.feature_selector.baselines")
        return baselines.REGISTRY[method]
    module, name, forced = _ENTRY_POINTS[method]
    function = getattr(importlib.import_module(module), name)

    def run(batches_fn, vocab_sizes, num_scenarios, num_tasks, params):
        overridden = sorted(k for k in forced if k in params and params[k] != forced[k])
        if overridden:
            raise ValueError(f"{method}: parameter(s) {overridden} are fixed by this method "
                             f"({forced}); use multisfs to change them")
        return function(batches_fn, vocab_sizes, num_scenarios, num_tasks, {**params, **forced})
    return run


def split_params(method: str, params: Optional[Mapping[str, Any]]):
    """``(executor params with defaults, the method's params)``."""
    params = dict(params or {})
    own = {k: params.pop(k) for k in list(params) if k in EXECUTOR_PARAMS}
    own = {**EXECUTOR_PARAMS, **own}
    size = own["batch_size"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"{method}: parameter 'batch_size' must be a positive integer, got {size!r}")
    return own, params


def validate_params(method: str, params: Optional[Mapping[str, Any]]) -> None:
    """Checks ``params`` for ``method`` without data: ValueError naming the bad key.

    Runs the method's own parameter resolution (no data read, nothing trained).
    """
    _, params = split_params(method, params)
    if method == "none":
        _select_none(None, [1], 1, 1, params)
        return
    if method in BASELINE_METHODS:
        from components.feature_selector import baselines, saliency
        defaults, checks = ((baselines.LASSO_DEFAULTS, baselines.LASSO_CHECKS) if method == "lasso"
                            else (baselines.COMMON_DEFAULTS, baselines.COMMON_CHECKS))
        saliency.resolve_params(method, params, defaults, checks)
        return
    module, _, forced = _ENTRY_POINTS[method]
    module = importlib.import_module(module)
    overridden = sorted(k for k in forced if k in params and params[k] != forced[k])
    if overridden:
        raise ValueError(f"{method}: parameter(s) {overridden} are fixed by this method ({forced})")
    if hasattr(module, "CHECKS"):  # multisfs
        from components.feature_selector import saliency
        saliency.resolve_params(module.METHOD, {**params, **forced}, module.DEFAULT_PARAMS,
                                module.CHECKS)
    else:  # multifs
        module.resolve_params({**params, **forced})


def make_batches_fn(examples_uri: str, tft_output: tft.TFTransformOutput, spec: DatasetSpec,
                    batch_size: int, seed: int) -> BatchesFn:
    """A fresh shuffled pass over Transform's train split per call (the same order for a seed).

    The shuffle's order depends on TensorFlow's global seed when the dataset is built, so it
    is set to ``seed`` first (as every selector then does): the passes depend on ``seed``
    alone, not on what ran earlier in the process (the local runner runs the components in
    one process; a benchmark trains models before it selects).
    """
    tf.random.set_seed(seed)
    dataset = data.make_dataset(data.transformed_files(examples_uri, "train"), tft_output, spec,
                                batch_size, shuffle=True, seed=seed)
    fields, tasks = spec.field_names, spec.task_names

    def batches():
        for feats, labels in dataset:
            yield (tf.stack([feats[f] for f in fields], axis=1), feats[features.SCENARIO_ID],
                   tf.concat([labels[t] for t in tasks], axis=1))
    return batches


def run_method(method: str, batches_fn: BatchesFn, vocab_sizes: Sequence[int],
               num_scenarios: int, num_tasks: int, params: Mapping[str, Any]):
    """``(SelectorResult, seconds)``."""
    function = selector_function(method)
    start = time.perf_counter()
    result = function(batches_fn, list(vocab_sizes), num_scenarios, num_tasks, dict(params))
    return result, time.perf_counter() - start


def to_selection(result: SelectorResult, method: str, seconds: float, scenarios: List[str],
                 tasks: List[str], fields: List[str], vocab_sizes: Sequence[int],
                 fingerprint: str) -> Selection:
    diagnostics = dict(result.diagnostics)
    shared = diagnostics.pop("shared_mask", None)  # MultiSFS: union or intersection per scenario.
    return Selection(method, dict(result.params), scenarios, tasks, fields, result.scores,
                     result.mask, fingerprint, shared_mask=shared, value_masks=result.value_masks,
                     diagnostics=diagnostics, seconds=seconds,
                     vocab_sizes=[int(v) for v in vocab_sizes])


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        if input_dict.get("anomalies"):
            check_anomalies(artifact_utils.get_single_instance(input_dict["anomalies"]))
        spec = DatasetSpec.from_json(exec_properties["dataset_spec"])
        method = exec_properties["method"]
        if method not in METHODS:
            raise ValueError(f"FeatureSelector: unknown method {method!r}; known: {', '.join(METHODS)}")
        own, params = split_params(method, json.loads(exec_properties.get("params") or "{}"))
        transform_uri = artifact_utils.get_single_uri(input_dict["transform_graph"])
        examples_uri = artifact_utils.get_single_uri(input_dict["transformed_examples"])
        tft_output = tft.TFTransformOutput(transform_uri)
        scenarios = data.scenario_names(tft_output)
        fields, tasks = list(spec.field_names), list(spec.task_names)
        vocab_sizes = data.field_vocab_sizes(tft_output, spec)

        batches_fn = make_batches_fn(examples_uri, tft_output, spec, own["batch_size"],
                                     int(params.get("seed", 0)))
        result, seconds = run_method(method, batches_fn, vocab_sizes, len(scenarios), len(tasks),
                                     params)
        selection = to_selection(result, method, seconds, scenarios, tasks, fields, vocab_sizes,
                                 vocabulary_fingerprint(transform_uri))
        selection.params = {**selection.params, **own}
        output = artifact_utils.get_single_instance(output_dict["feature_selection"])
        selection.write(output.uri)
        output.set_string_custom_property("method", method)
        output.set_int_custom_property("num_fields_used", int(selection.union_mask.sum()))
        output.set_float_custom_property("seconds", float(seconds))
        logging.info("FeatureSelector (%s): %d of %d fields used by some path; %.1f s",
                     method, int(selection.union_mask.sum()), len(fields), seconds)
