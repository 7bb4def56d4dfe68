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


@dataclasses.dataclass(frozen=True)
class GateFailure:
    """One blessing threshold a slice x task missed (TFMA's validation result)."""

    slice: str  # "overall", a hierarchy level ("ch0") or a scenario ("ch0/s1")
    task: str
    metric: str  # e.g. "auc"
    value: float  # the candidate's value
    floor: Optional[float] = None  # set when the absolute floor was missed
    baseline: Optional[float] = None  # the latest blessed model's value (regression failures)
    max_regression: Optional[float] = None  # set when the no-regression bound was missed

    @property
    def text(self) -> str:
        where = f"{self.slice} / {self.task}: {self.metric.upper()} {self.value:.4f}"
        if self.max_regression is None:
            return f"{where} is below the floor {self.floor:.4f}"
        baseline = "?" if self.baseline is None else f"{self.baseline:.4f}"
        drop = "?" if self.baseline is None else f"{self.baseline - self.value:.4f}"
        return (f"{where} fell {drop} below the baseline's {baseline} (latest blessed model; "
                f"at most {self.max_regression:.4f} allowed)")


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
    gate_failures: List[GateFailure] = dataclasses.field(default_factory=list)
    # (slice, task) -> metric -> value for every slice, coarser hierarchy levels included.
    all_metrics: Dict[Tuple[str, str], Dict[str, float]] = dataclasses.field(default_factory=dict)
    auc_floor: Optional[float] = None  # The Evaluator config's AUC floor.

    @property
    def baseline_model(self) -> Optional[str]:
        """The Evaluator's baseline (latest blessed model), when it had one other than the candidate."""
        return self.inputs.get("Evaluator.baseline_model")

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


def run_ids(metadata_path: str) -> List[str]:
    """The pipeline runs recorded in the store, oldest first."""
    runs = _store(metadata_path).get_contexts_by_type("pipeline_run")
    return [c.name for c in sorted(runs, key=lambda c: c.create_time_since_epoch)]


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
    all_metrics: Dict[Tuple[str, str], Dict[str, float]] = {}
    validation_ok, failures, auc_floor = None, [], None
    evaluation = by_type.get("ModelEvaluation")
    if evaluation is not None:
        result = tfma.load_eval_result(evaluation.uri)
        for slice_key, outputs in result.slicing_metrics:
            for task, sub_keys in outputs.items():
                values = sub_keys.get("", {})
                cell = {m: v.get("doubleValue") for m, v in values.items()
                        if isinstance(v, dict) and "doubleValue" in v}
                all_metrics[(_slice_name(slice_key), task)] = cell
                if not slice_key or [c for c, _ in slice_key] == list(spec.scenario_columns):
                    metrics[(_slice_name(slice_key), task)] = {
                        m: cell[m] for m in METRICS if m in cell}
        auc_floor = _auc_floor(result.config)
        validation = tfma.load_validation_result(evaluation.uri)
        validation_ok = validation.validation_ok
        failures = gate_failures(validation, all_metrics)
    blessing, pushed = by_type.get("ModelBlessing"), by_type.get("PushedModel")
    blessed = (bool(blessing.custom_properties["blessed"].int_value)
               if blessing is not None and "blessed" in blessing.custom_properties else None)
    was_pushed = (bool(pushed.custom_properties["pushed"].int_value)
                  if pushed is not None and "pushed" in pushed.custom_properties else None)
    destination = (pushed.custom_properties["pushed_destination"].string_value
                   if was_pushed else None)
    return RunResult(run.name, states, artifacts, inputs, metrics, validation_ok,
                     [f.text for f in failures], blessed, was_pushed, destination,
                     failures, all_metrics, auc_floor)


def _auc_floor(config) -> Optional[float]:
    for metrics_spec in config.metrics_specs:
        for metric in metrics_spec.metrics:
            for per_slice in metric.per_slice_thresholds:
                if metric.class_name == "AUC" and per_slice.threshold.HasField("value_threshold"):
                    return per_slice.threshold.value_threshold.lower_bound.value
    return None


def write_html(result: RunResult, run_dir: str, path: str, oracle_auc: Optional[Dict] = None) -> str:
    """Writes the self-contained HTML report (``pipeline/review.py``) to ``path``."""
    import matplotlib
    matplotlib.use("Agg")  # Files only, no display.
    from pipeline import review  # matplotlib and pandas: only when a report is written.
    page = review.html_report(result, run_dir, result.auc_floor, oracle_auc)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(page)
    return path


def gate_failures(validation, metrics: Dict[Tuple[str, str], Dict[str, float]]) -> List[GateFailure]:
    """The failed thresholds of a TFMA ``ValidationResult``, with the candidate's and the
    baseline's values (``metrics``: the candidate's, ``<name>_diff`` included, by slice x task)."""
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        name = _slice_name([(k.column, k.bytes_value or k.int64_value or k.float_value)
                            for k in per_slice.slice_key.single_slice_keys])
        for failure in per_slice.failures:
            key, threshold = failure.metric_key, failure.metric_threshold
            observed = failure.metric_value.double_value.value
            task, metric = key.output_name, key.name
            if key.is_diff:
                value = metrics.get((name, task), {}).get(metric)
                baseline = None if value is None else value - observed
                failures.append(GateFailure(
                    name, task, metric, observed if value is None else value, baseline=baseline,
                    max_regression=-threshold.change_threshold.absolute.value))
            else:
                failures.append(GateFailure(name, task, metric, observed,
                                            floor=threshold.value_threshold.lower_bound.value))
    return sorted(failures, key=lambda f: (f.slice != "overall", f.slice, f.task))


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
    if result.validation_ok is not None:
        lines.append("Baseline: " + (f"the latest blessed model, {result.baseline_model}"
                                     if result.baseline_model else
                                     "the candidate itself or none (only the AUC floors bind)"))
    if result.blessed:
        lines.append("Blessed: yes (every scenario x task cleared its AUC floor and regression bound)")
    elif result.blessed is False:
        lines.append("Blessed: NO. Failed thresholds (slice / task):")
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
