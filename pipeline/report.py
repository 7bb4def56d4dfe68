"""What a finished run produced, read back from ML Metadata and the Evaluator's output."""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tabulate import tabulate

from pipeline.specs import DatasetSpec

METRICS = ("auc", "binary_crossentropy", "calibration", "example_count")
EXECUTION_STATES = {metadata_store_pb2.Execution.COMPLETE: "ran",
                    metadata_store_pb2.Execution.CACHED: "cached",
                    metadata_store_pb2.Execution.FAILED: "FAILED",
                    metadata_store_pb2.Execution.RUNNING: "running"}


@dataclasses.dataclass
class RunResult:
    run_id: str
    component_states: Dict[str, str]  # component id -> ran / cached / FAILED
    artifacts: Dict[str, str]  # "component.output" -> uri
    inputs: Dict[str, str]  # "component.input" -> uri (the first artifact of each input)
    metrics: Dict[Tuple[str, str], Dict[str, float]]  # (scenario slice, task) -> metric -> value
    validation_ok: Optional[bool]
    validation_failures: List[str]
    blessed: Optional[bool]
    pushed: Optional[bool]
    pushed_destination: Optional[str]

    def uri(self, key: str) -> str:
        return self.artifacts[key]


def _store(metadata_path: str) -> metadata_store.MetadataStore:
    if not os.path.exists(metadata_path):
        raise FileNotFoundError(f"no ML Metadata store at {metadata_path}: has the pipeline run?")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def _slice_name(slice_key) -> str:
    if not slice_key:
        return "overall"
    return "/".join(v.decode() if isinstance(v, bytes) else str(v) for _, v in slice_key)


def load_run(metadata_path: str, spec: DatasetSpec, run_id: Optional[str] = None) -> RunResult:
    """The latest (or the named) pipeline run recorded in the store."""
    import tensorflow_model_analysis as tfma  # Heavy: only when a report is made.

    store = _store(metadata_path)
    runs = sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    if run_id:
        runs = [c for c in runs if c.name == run_id]
    if not runs:
        raise ValueError(f"no pipeline run {run_id or ''} in {metadata_path}")
    run = runs[-1]
    types = {t.id: t.name for t in store.get_artifact_types()}
    node_type = store.get_context_type("node").id
    states, artifacts, inputs, by_type = {}, {}, {}, {}
    for execution in store.get_executions_by_context(run.id):
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id)
                 if c.type_id == node_type]
        component = nodes[0].split(".", 1)[-1] if nodes else execution.type
        states[component] = EXECUTION_STATES.get(execution.last_known_state, "other")
        events = store.get_events_by_execution_ids([execution.id])
        outputs = [e for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,
                                                   metadata_store_pb2.Event.DECLARED_OUTPUT)]
        found = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
        for event in events:
            artifact = found[event.artifact_id]
            key = event.path.steps[0].key if event.path.steps else types[artifact.type_id]
            if event.type == metadata_store_pb2.Event.INPUT:
                inputs.setdefault(f"{component}.{key}", artifact.uri)
            elif event in outputs:
                artifacts[f"{component}.{key}"] = artifact.uri
                by_type[types[artifact.type_id]] = artifact

    metrics: Dict[Tuple[str, str], Dict[str, float]] = {}
    validation_ok, failures = None, []
    evaluation = by_type.get("ModelEvaluation")
    if evaluation is not None:
        result = tfma.load_eval_result(evaluation.uri)
        for slice_key, outputs in result.slicing_metrics:
            if slice_key and [c for c, _ in slice_key] != list(spec.scenario_columns):
                continue  # Coarser hierarchy levels are in the Evaluator output.
            for task, sub_keys in outputs.items():
                values = sub_keys.get("", {})
                metrics[(_slice_name(slice_key), task)] = {
                    m: values[m].get("doubleValue") for m in METRICS if m in values}
        validation = tfma.load_validation_result(evaluation.uri)
        validation_ok = validation.validation_ok
        for per_slice in validation.metric_validations_per_slice:
            name = _slice_name([(k.column, k.bytes_value or k.int64_value or k.float_value)
                                for k in per_slice.slice_key.single_slice_keys])
            for failure in per_slice.failures:
                failures.append(f"{name} {failure.metric_key.output_name} "
                                f"{failure.metric_key.name}={failure.metric_value.double_value.value:.4f}"
                                f" violates {_threshold_text(failure.metric_threshold)}")
    blessing, pushed = by_type.get("ModelBlessing"), by_type.get("PushedModel")
    blessed = (bool(blessing.custom_properties["blessed"].int_value)
               if blessing is not None and "blessed" in blessing.custom_properties else None)
    was_pushed = (bool(pushed.custom_properties["pushed"].int_value)
                  if pushed is not None and "pushed" in pushed.custom_properties else None)
    destination = (pushed.custom_properties["pushed_destination"].string_value
                   if was_pushed else None)
    return RunResult(run.name, states, artifacts, inputs, metrics, validation_ok, failures, blessed,
                     was_pushed, destination)


def _threshold_text(threshold) -> str:
    parts = []
    if threshold.HasField("value_threshold"):
        parts.append(f"floor {threshold.value_threshold.lower_bound.value}")
    if threshold.HasField("change_threshold"):
        parts.append(f"max regression {-threshold.change_threshold.absolute.value} vs baseline")
    return " / ".join(parts)


def metrics_table(result: RunResult, oracle_auc: Optional[Dict] = None) -> str:
    rows = []
    for (scenario, task), values in sorted(result.metrics.items(),
                                           key=lambda kv: (kv[0][0] != "overall", kv[0])):
        row = [scenario, task, values.get("auc"), values.get("binary_crossentropy"),
               values.get("calibration"), int(values.get("example_count") or 0)]
        if oracle_auc is not None:
            leaf = scenario.split("/")[-1]
            row.append(oracle_auc.get(leaf, {}).get(task))
        rows.append(row)
    headers = ["scenario", "task", "AUC", "logloss", "calibration", "examples"]
    if oracle_auc is not None:
        headers.append("oracle AUC")
    return tabulate(rows, headers=headers, floatfmt=".4f")


def summary(result: RunResult, run_dir: str, oracle_auc: Optional[Dict] = None) -> str:
    lines = [f"Run {result.run_id}",
             "Components: " + ", ".join(f"{c} ({s})" for c, s in sorted(result.component_states.items())),
             "", "Evaluator metrics on the eval split (TFMA), per scenario x task:",
             metrics_table(result, oracle_auc), ""]
    if result.blessed:
        lines.append("Blessed: yes (every scenario x task cleared its AUC floor and regression bound)")
    elif result.blessed is False:
        lines.append("Blessed: NO. Failed thresholds:")
        lines += [f"  - {f}" for f in result.validation_failures] or ["  (see the Evaluator output)"]
    if result.pushed:
        lines.append(f"Pushed: yes, to {result.pushed_destination}")
    else:
        lines.append("Pushed: no (only blessed models are pushed)")
    lines.append(f"TensorBoard: msmt tensorboard {run_dir}")
    return "\n".join(lines)


def read_oracle_auc(spec: DatasetSpec) -> Optional[Dict]:
    """The synthetic generator's oracle AUC table, if the data has one beside it."""
    for f in spec.files:
        for path in f.matches():
            truth = os.path.join(os.path.dirname(path), "ground_truth.json")
            if os.path.exists(truth):
                with open(truth) as handle:
                    return json.load(handle).get("oracle_auc")
    return None
