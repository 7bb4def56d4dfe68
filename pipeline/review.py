"""Reviewing a run: tables and figures for the HTML report (``msmt report``) and the
review notebook (``notebooks/review_run.ipynb``).

Tables are pandas DataFrames, figures matplotlib Figures (the report renders them with
Agg; a notebook shows them inline).
"""

import base64
import html
import io
import json
import os
from typing import Dict, List, Optional

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.report import RunResult

SELECTION_OUTPUT = "FeatureSelector.feature_selection"
MODEL_RUN_OUTPUT = "MSMTTrainer.model_run"
EVALUATION_OUTPUT = "Evaluator.evaluation"


def metrics_frame(result: RunResult) -> pd.DataFrame:
    """One row per scenario x task (overall first): AUC, logloss, calibration, examples."""
    rows = [dict(scenario=s, task=t, auc=m.get("auc"), logloss=m.get("binary_crossentropy"),
                 calibration=m.get("calibration"), examples=int(m.get("example_count") or 0))
            for (s, t), m in result.metrics.items()]
    frame = pd.DataFrame(rows, columns=["scenario", "task", "auc", "logloss", "calibration",
                                        "examples"])
    frame["order"] = frame["scenario"] != "overall"
    return frame.sort_values(["order", "scenario", "task"]).drop(columns="order").reset_index(drop=True)


def validation_frame(result: RunResult) -> pd.DataFrame:
    """The thresholds the candidate missed: slice, task, value, floor or baseline and bound."""
    return pd.DataFrame([dict(slice=f.slice, task=f.task, metric=f.metric, value=f.value,
                              floor=f.floor, baseline=f.baseline, max_regression=f.max_regression)
                         for f in result.gate_failures],
                        columns=["slice", "task", "metric", "value", "floor", "baseline",
                                 "max_regression"])


def components_frame(result: RunResult) -> pd.DataFrame:
    return pd.DataFrame(sorted(result.component_states.items()), columns=["component", "state"])


def compare_runs(a: RunResult, b: RunResult, names=("a", "b")) -> pd.DataFrame:
    """AUC per scenario x task of two runs side by side, with ``b - a``."""
    left = metrics_frame(a)[["scenario", "task", "auc"]].rename(columns={"auc": f"auc_{names[0]}"})
    right = metrics_frame(b)[["scenario", "task", "auc"]].rename(columns={"auc": f"auc_{names[1]}"})
    frame = left.merge(right, on=["scenario", "task"], how="outer")
    frame["delta"] = frame[f"auc_{names[1]}"] - frame[f"auc_{names[0]}"]
    return frame


def feature_selection(result: RunResult):
    """The run's FeatureSelection (``Selection``), or None if the run has none."""
    from components.feature_selector.artifact import Selection
    uri = result.artifacts.get(SELECTION_OUTPUT)
    return Selection.read(uri) if uri else None


def training_history(result: RunResult) -> Dict[str, List[float]]:
    """Keras' per-epoch history the Trainer saved (``data_info.json``); empty if absent."""
    from models.training import DATA_INFO_FILE
    uri = result.artifacts.get(MODEL_RUN_OUTPUT)
    path = os.path.join(uri, DATA_INFO_FILE) if uri else ""
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("history", {})


def selection_heatmap(selection) -> plt.Figure:
    """Saliency scores, a panel per task: scenarios x fields, selected cells outlined."""
    num_tasks = len(selection.tasks)
    fig, axes = plt.subplots(num_tasks, 1, figsize=(max(6, 0.45 * len(selection.fields)),
                                                    1.2 + 0.5 * len(selection.scenarios) * num_tasks),
                             squeeze=False)
    for j, task in enumerate(selection.tasks):
        ax = axes[j, 0]
        scores = selection.scores[:, j, :]
        image = ax.imshow(scores, aspect="auto", cmap="viridis")
        rows, cols = np.nonzero(selection.mask[:, j, :] > 0)
        ax.scatter(cols, rows, marker="s", s=30, facecolors="none", edgecolors="white",
                   linewidths=0.8, label="selected")
        ax.set_yticks(range(len(selection.scenarios)), selection.scenarios)
        ax.set_xticks(range(len(selection.fields)), selection.fields, rotation=90, fontsize=7)
        ax.set_title(f"{task}: field saliency per scenario ({selection.method}; outlined = kept)",
                     fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.02)
    fig.tight_layout()
    return fig


def auc_bars(result: RunResult, floor: Optional[float] = None) -> plt.Figure:
    """AUC per scenario, a bar per task, with the blessing floor as a line."""
    frame = metrics_frame(result).pivot(index="scenario", columns="task", values="auc")
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(frame)), 3.2))
    frame.plot.bar(ax=ax, rot=0)
    lowest = min([0.4, float(np.nanmin(frame.to_numpy()))] + ([floor] if floor is not None else []))
    ax.set_ylim(lowest - 0.05, 1.0)
    ax.set_ylabel("AUC (eval)")
    ax.set_title("Evaluator AUC per scenario x task")
    if floor is not None:
        ax.axhline(floor, color="red", linestyle="--", linewidth=1, label="floor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def training_curves(history: Dict[str, List[float]]) -> plt.Figure:
    """Loss and per-task AUC per epoch, train and eval."""
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(9, 3))
    for name, values in sorted(history.items()):
        epochs = range(1, len(values) + 1)
        if name in ("loss", "val_loss"):
            loss_ax.plot(epochs, values, marker="o", label=name)
        elif name.endswith("auc"):
            auc_ax.plot(epochs, values, marker="o", label=name)
    loss_ax.set_title("loss")
    auc_ax.set_title("AUC per task")
    for ax in (loss_ax, auc_ax):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def png_base64(fig: plt.Figure) -> str:
    """The figure as a base64 PNG (and closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#eee}.bad{color:#b00;font-weight:bold}.good{color:#070;font-weight:bold}"""


def html_report(result: RunResult, run_dir: str, floor: Optional[float] = None,
                oracle_auc: Optional[Dict] = None) -> str:
    """One self-contained HTML page: tables, validation, components, figures inlined as PNG."""
    from pipeline.report import metrics_table

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="",
                             border=0)

    def image(fig: plt.Figure, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{png_base64(fig)}">'

    parts = [f"<h1>MSMT run {html.escape(result.run_id)}</h1>",
             f"<p>Run directory: <code>{html.escape(run_dir)}</code></p>"]
    if result.blessed:
        parts.append('<p class="good">Blessed: every slice x task cleared its AUC floor and '
                     "regression bound.</p>")
    elif result.blessed is False:
        parts.append('<p class="bad">NOT blessed. Failed thresholds:</p><ul>'
                     + "".join(f"<li>{html.escape(f.text)}</li>" for f in result.gate_failures)
                     + "</ul>" + table(validation_frame(result)))
    parts.append("<p>Baseline: " + html.escape(result.baseline_model or "none other than the "
                                               "candidate (only the AUC floors bind)") + "</p>")
    parts.append("<p>Pushed: " + html.escape(result.pushed_destination if result.pushed
                                             else "no (only blessed models are pushed)") + "</p>")
    if result.metrics:
        parts += ["<h2>Evaluator metrics per scenario x task (eval split, TFMA)</h2>",
                  table(metrics_frame(result)),
                  image(auc_bars(result, floor), "AUC per scenario x task")]
    if oracle_auc:
        parts.append("<h3>Next to the oracle AUC of the synthetic data</h3><pre>"
                     + html.escape(metrics_table(result, oracle_auc)) + "</pre>")
    selection = feature_selection(result)
    if selection is not None:
        parts += ["<h2>Feature selection</h2>",
                  image(selection_heatmap(selection), "feature selection heatmap")]
    history = training_history(result)
    if history:
        parts += ["<h2>Training curves</h2>", image(training_curves(history), "training curves")]
    parts += ["<h2>Components</h2>", table(components_frame(result))]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>MSMT run "
            f"{html.escape(result.run_id)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>")


def tfma_slice_frame(eval_result, metrics=("auc", "binary_crossentropy", "calibration",
                                           "example_count")) -> pd.DataFrame:
    """TFMA's ``EvalResult`` as a table: one row per slice (overall, each hierarchy level,
    each scenario) x task; ``<metric>_diff`` columns when a baseline was evaluated."""
    rows = []
    for slice_key, outputs in eval_result.slicing_metrics:
        name = "/".join(str(v.decode() if isinstance(v, bytes) else v) for _, v in slice_key)
        level = "+".join(c for c, _ in slice_key) or "overall"
        for task, sub_keys in outputs.items():
            values = sub_keys.get("", {})
            row = dict(slice=name or "overall", level=level, task=task)
            for metric in metrics:
                for key in (metric, f"{metric}_diff"):
                    if key in values and "doubleValue" in values[key]:
                        row[key] = values[key]["doubleValue"]
            rows.append(row)
    return pd.DataFrame(rows).sort_values(["level", "slice", "task"]).reset_index(drop=True)


def metric_bars(frame: pd.DataFrame, metric: str, title: str) -> plt.Figure:
    """A bar per slice x task of one column of ``tfma_slice_frame``."""
    pivot = frame.pivot_table(index="slice", columns="task", values=metric)
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(pivot)), 3))
    pivot.plot.bar(ax=ax, rot=45)
    ax.set_title(title)
    ax.axhline(0 if metric.endswith("_diff") else (1 if metric == "calibration" else 0),
               color="grey", linewidth=0.8)
    fig.tight_layout()
    return fig


def comparison_plot(frame: pd.DataFrame, names=("a", "b")) -> plt.Figure:
    """``compare_runs``' AUC of both runs per scenario x task, side by side."""
    cells = frame["scenario"] + "\n" + frame["task"]
    x = np.arange(len(frame))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(frame)), 3.2))
    ax.bar(x - 0.2, frame[f"auc_{names[0]}"], width=0.4, label=names[0])
    ax.bar(x + 0.2, frame[f"auc_{names[1]}"], width=0.4, label=names[1])
    ax.set_xticks(x, cells, fontsize=7)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("AUC (eval)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
