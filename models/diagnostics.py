"""MSMT diagnostics for TensorBoard: per scenario x task metrics, expert utilisation, selections.

The Trainer adds ``MSMTDiagnostics`` to its callbacks; it writes into
``<model_run_dir>/diagnostics`` (one TensorBoard run beside Keras' ``train`` and
``validation``), at step = epoch (0-based, as Keras' epoch summaries):

- ``eval_by_scenario/<scenario>/<task>/auc`` and ``.../logloss``: one pass over the eval
  data with the model's own-scenario outputs, grouped by the examples' scenario ids;
- for every gate a backbone's ``diagnostics(inputs)`` returns as ``gate_weights/<gate>``
  ``[batch, rows, experts]`` (on at most ``max_gate_batches`` eval batches), with rows
  grouped by the examples' own scenario (see ``rows_by_scenario``):
  ``gate_weights/<gate>/<row>`` histograms, ``gate_heatmap/<gate>`` (mean weight, rows x
  experts) and ``gate_entropy/<gate>/<row>`` scalars (mean entropy in nats, ``log(E)``
  for a uniform gate);
- ``expert_selection_frequency/<gate>`` images for ``expert_selection/<gate>``
  (AESM², AutoMTL's derived network) and ``san_attention`` (HiNet, scenario x scenario);
- ``feature_selection/heatmap`` once (step 0): the Trainer's ``Selection``, rows
  scenario/task, columns fields.

AutoMTL's search writes ``automtl/...`` into ``<model_run_dir>/automtl_search`` with
``write_automtl_search``. Heatmaps are rendered with matplotlib (Agg, no display).
"""

import io
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging
from matplotlib.figure import Figure
from scipy import stats
from sklearn import metrics

from models import features

SUMMARY_DIR = "diagnostics"
GATE_WEIGHTS = "gate_weights/"
EXPERT_SELECTION = "expert_selection/"
SAN_ATTENTION = "san_attention"
FEATURE_SELECTION_TAG = "feature_selection/heatmap"


# --------------------------------------------------------------------------- computations


def gate_entropy(weights: np.ndarray) -> np.ndarray:
    """Entropy in nats of each gate distribution (last axis): ``[..., E] -> [...]``."""
    return stats.entropy(np.asarray(weights, np.float64), axis=-1)


def head_names(scenarios: Sequence[str], tasks: Sequence[str]) -> List[str]:
    """``<scenario>/<task>`` in head order (``k = s * T + t``)."""
    return [f"{s}/{t}" for s in scenarios for t in tasks]


def rows_by_scenario(weights: np.ndarray, scenario_ids: np.ndarray, scenarios: Sequence[str],
                     tasks: Sequence[str]) -> Dict[str, np.ndarray]:
    """A gate's weights ``[N, rows, E]`` as ``{row label: [n, E]}``, on the examples it serves.

    ``S * T`` rows (one per head ``(s, t)``) and ``S`` rows (one per scenario ``s``): row
    ``s`` on the examples of scenario ``s``; one row (a gate every example reads): its
    weights on the examples of each scenario, one label per scenario; otherwise every
    row on every example (``row_<r>``). Examples of an unseen scenario are left out.
    """
    num_rows = weights.shape[1]
    S, T = len(scenarios), len(tasks)
    own = {s: scenario_ids == s for s in range(S)}
    if num_rows == S * T:
        return {name: weights[own[k // T], k]
                for k, name in enumerate(head_names(scenarios, tasks))}
    if num_rows == S:
        return {name: weights[own[s], s] for s, name in enumerate(scenarios)}
    if num_rows == 1:
        return {name: weights[own[s], 0] for s, name in enumerate(scenarios)}
    return {f"row_{r}": weights[:, r] for r in range(num_rows)}


def scenario_task_metrics(predictions: np.ndarray, labels: np.ndarray, scenario_ids: np.ndarray,
                          scenarios: Sequence[str], tasks: Sequence[str]
                          ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{scenario: {task: {auc, logloss, count}}}`` of own-scenario predictions ``[N, T]``.

    AUC (scikit-learn's) is NaN where a scenario's labels have a single class; logloss
    (binary cross-entropy, predictions clipped to float32 eps) is NaN for a scenario
    without examples.
    """
    eps = np.finfo(np.float32).eps
    result = {}
    for s, scenario in enumerate(scenarios):
        rows = scenario_ids == s
        result[scenario] = {}
        for t, task in enumerate(tasks):
            y, p = labels[rows, t], predictions[rows, t]
            auc = metrics.roc_auc_score(y, p) if len(np.unique(y)) == 2 else float("nan")
            # As sklearn's log_loss, without its per-call input validation (slow here).
            y, p = y.astype(np.float64), np.clip(p.astype(np.float64), eps, 1.0 - eps)
            logloss = -np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)) if len(y) else np.nan
            result[scenario][task] = {"auc": float(auc), "logloss": float(logloss),
                                      "count": int(rows.sum())}
    return result


# --------------------------------------------------------------------------- images


def heatmap_png(matrix: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str],
                title: str, vmin: float = 0.0, vmax: Optional[float] = None,
                marks: Optional[np.ndarray] = None, annotate: bool = True) -> bytes:
    """A labelled heatmap of ``matrix`` ``[rows, columns]`` as PNG bytes (NaN cells blank).

    ``marks`` (same shape, boolean) draws a dot in the marked cells; ``annotate`` writes
    the values when the matrix is small enough to read them.
    """
    matrix = np.asarray(matrix, np.float64)
    rows, columns = matrix.shape
    figure = Figure(figsize=(min(2.0 + 0.45 * columns, 16.0), min(1.4 + 0.32 * rows, 14.0)),
                    dpi=100, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap="viridis",
                        vmin=vmin, vmax=vmax, interpolation="nearest")
    figure.colorbar(image, ax=axes, fraction=0.04)
    axes.set_xticks(range(columns), labels=list(column_labels), rotation=60, ha="right",
                    fontsize=7)
    axes.set_yticks(range(rows), labels=list(row_labels), fontsize=7)
    axes.set_title(title, fontsize=9)
    if marks is not None:
        r, c = np.nonzero(np.asarray(marks))
        axes.scatter(c, r, s=8, c="white", edgecolors="black", linewidths=0.5)
    elif annotate and rows * columns <= 150:
        top = np.nanmax(matrix) if np.isfinite(matrix).any() else 0.0
        for (r, c), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6,
                          color="black" if value > 0.6 * (vmax or top) else "white")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_heatmap(tag: str, matrix: np.ndarray, row_labels: Sequence[str],
                  column_labels: Sequence[str], description: str = "", **kwargs) -> None:
    """``tf.summary.image`` of ``heatmap_png`` into the default writer at its step."""
    png = heatmap_png(matrix, row_labels, column_labels, tag, **kwargs)
    tf.summary.image(tag, tf.io.decode_png(png, channels=4)[None], description=description)


def feature_selection_heatmap(selection) -> Dict:
    """Heatmap arguments of a ``Selection``: saliency scores (each row over its maximum),
    rows ``<scenario>/<task>``, columns fields, selected fields marked."""
    scores = np.asarray(selection.scores, np.float64)
    S, T, F = scores.shape
    scores = scores.reshape(S * T, F)
    top = np.max(np.abs(scores), axis=1, keepdims=True)
    return {"matrix": np.abs(scores) / np.where(top > 0, top, 1.0),
            "row_labels": head_names(selection.scenarios, selection.tasks),
            "column_labels": list(selection.fields),
            "marks": np.asarray(selection.mask).reshape(S * T, F) > 0, "vmax": 1.0}


def write_feature_selection(selection) -> None:
    """The feature selection as one scenario/task x field image (default writer, its step)."""
    write_heatmap(FEATURE_SELECTION_TAG, description=(
        f"{selection.method}: |score| / row max per (scenario, task) and field; "
        "dots mark the selected fields."), **feature_selection_heatmap(selection))


def write_gate_summaries(name: str, weights: np.ndarray, scenario_ids: np.ndarray,
                         scenarios: Sequence[str], tasks: Sequence[str]) -> None:
    """Histograms, entropy scalars and the mean-weight heatmap of one gate ``[N, rows, E]``."""
    rows = rows_by_scenario(weights, scenario_ids, scenarios, tasks)
    num_experts = weights.shape[-1]
    uniform = float(np.log(num_experts))
    means = []
    for label, samples in rows.items():
        if len(samples):
            tf.summary.histogram(f"{GATE_WEIGHTS}{name}/{label}", samples.reshape(-1))
            tf.summary.scalar(f"gate_entropy/{name}/{label}", float(gate_entropy(samples).mean()),
                              description=f"nats; a uniform gate has log({num_experts}) = "
                                          f"{uniform:.3f}")
        means.append(samples.mean(axis=0) if len(samples) else np.full(num_experts, np.nan))
    write_heatmap(f"gate_heatmap/{name}", np.stack(means), list(rows),
                  [f"expert {e}" for e in range(num_experts)], vmax=1.0,
                  description="mean gate weight on the examples each row serves")


def write_selection_summaries(name: str, selection: np.ndarray, scenario_ids: np.ndarray,
                              scenarios: Sequence[str], tasks: Sequence[str]) -> None:
    """How often each expert is selected, per row (``[N, rows, E]`` of 0/1)."""
    rows = rows_by_scenario(selection, scenario_ids, scenarios, tasks)
    num_experts = selection.shape[-1]
    frequency = np.stack([s.mean(axis=0) if len(s) else np.full(num_experts, np.nan)
                          for s in rows.values()])
    write_heatmap(f"expert_selection_frequency/{name}", frequency, list(rows),
                  [f"expert {e}" for e in range(num_experts)], vmax=1.0,
                  description="share of the examples each row serves that select the expert")


def write_backbone_diagnostics(values: Mapping[str, np.ndarray], scenario_ids: np.ndarray,
                               scenarios: Sequence[str], tasks: Sequence[str]) -> None:
    """Everything a backbone's ``diagnostics()`` returned (concatenated over batches)."""
    for key, value in sorted(values.items()):
        if key.startswith(GATE_WEIGHTS):
            write_gate_summaries(key[len(GATE_WEIGHTS):], value, scenario_ids, scenarios, tasks)
        elif key.startswith(EXPERT_SELECTION):
            write_selection_summaries(key[len(EXPERT_SELECTION):], value, scenario_ids,
                                      scenarios, tasks)
        elif key == SAN_ATTENTION:
            write_heatmap(SAN_ATTENTION, value, list(scenarios), list(scenarios), vmax=1.0,
                          description="HiNet SAN g_a (eq. 5): row i's attention over the other "
                                      "scenarios")
        else:
            raise ValueError(f"unknown diagnostic {key!r}: expected {GATE_WEIGHTS}<name>, "
                             f"{EXPERT_SELECTION}<name> or {SAN_ATTENTION}")


# --------------------------------------------------------------------------- the callback


class MSMTDiagnostics(keras.callbacks.Callback):
    """Writes the MSMT diagnostics (see the module doc) to TensorBoard after every epoch.

    Args:
        log_dir: the Trainer's ``model_run_dir``; summaries go to ``<log_dir>/diagnostics``.
        eval_dataset: ``(features, labels[, weights])`` batches (``models.data.make_dataset``).
        data_info: the ``DataInfo`` the model was built with (scenario and task names).
        eval_steps: batches per pass (required when ``eval_dataset`` repeats forever).
        max_gate_batches: eval batches the gate diagnostics read per epoch.
        selection: the Trainer's feature ``Selection``, written once, or None.
    """

    def __init__(self, log_dir: str, eval_dataset: tf.data.Dataset, data_info,
                 eval_steps: Optional[int] = None, max_gate_batches: int = 8,
                 selection=None):
        super().__init__()
        if not eval_steps and eval_dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
            raise ValueError("the eval dataset repeats forever: give eval_steps")
        self.log_dir = log_dir
        self.eval_dataset = eval_dataset.take(eval_steps) if eval_steps else eval_dataset
        self.data_info = data_info
        self.max_gate_batches = int(max_gate_batches)
        self.selection = selection
        self.writer = None
        self.last_metrics: Dict[str, Dict[str, Dict[str, float]]] = {}

    def on_train_begin(self, logs=None):
        from models import factory  # Not at import: factory -> automtl_search -> this module.

        # Multi-worker training: the chief alone writes (as it alone saves the model).
        if not self.model.distribute_strategy.extended.should_checkpoint:
            return
        self.writer = tf.summary.create_file_writer(os.path.join(self.log_dir, SUMMARY_DIR))
        input_names = factory.model_input_names(self.data_info)
        model = self.model
        backbone = model.get_layer(factory.BACKBONE_LAYER)

        def predict(batch):
            return model({k: batch[k] for k in input_names}, training=False)

        self._predict = tf.function(predict, reduce_retracing=True)
        self._gates = None
        if hasattr(backbone, "diagnostics"):
            backbone_inputs = keras.Model(model.inputs, backbone.input)

            def gates(batch):
                inputs = backbone_inputs({k: batch[k] for k in input_names}, training=False)
                return backbone.diagnostics(inputs, training=False)

            self._gates = tf.function(gates, reduce_retracing=True)
        if self.selection is not None:
            with self.writer.as_default(step=0):
                write_feature_selection(self.selection)
            self.writer.flush()

    def collect(self):
        """One pass: ``(predictions [N, T], labels [N, T], scenario_ids [N], diagnostics,
        diagnostics' scenario_ids)``, the diagnostics from the first batches only."""
        tasks = self.data_info.task_names
        predictions, labels, ids, gates, gate_ids = [], [], [], [], []
        for i, batch in enumerate(self.eval_dataset):
            inputs, targets = batch[0], batch[1]
            outputs = self._predict(inputs)
            predictions.append(np.concatenate([outputs[t].numpy().reshape(-1, 1) for t in tasks],
                                              axis=1))
            labels.append(np.concatenate([targets[features.label_key(t)].numpy().reshape(-1, 1)
                                          for t in tasks], axis=1))
            ids.append(inputs[features.SCENARIO_ID].numpy())
            if self._gates is not None and i < self.max_gate_batches:
                gates.append({k: v.numpy() for k, v in self._gates(inputs).items()})
                gate_ids.append(ids[-1])
        if not predictions:
            raise ValueError("the eval dataset is empty")
        diagnostics = {}
        for key in (gates[0] if gates else {}):
            if key == SAN_ATTENTION:  # Not per example.
                diagnostics[key] = gates[-1][key]
            else:
                diagnostics[key] = np.concatenate([g[key] for g in gates])
        return (np.concatenate(predictions), np.concatenate(labels), np.concatenate(ids),
                diagnostics, np.concatenate(gate_ids) if gate_ids else np.zeros([0], np.int64))

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None:
            return
        info = self.data_info
        predictions, labels, ids, diagnostics, gate_ids = self.collect()
        self.last_metrics = scenario_task_metrics(predictions, labels, ids, info.scenario_names,
                                                  info.task_names)
        with self.writer.as_default(step=epoch):
            for scenario, by_task in self.last_metrics.items():
                for task, values in by_task.items():
                    for metric in ("auc", "logloss"):
                        if np.isfinite(values[metric]):
                            tf.summary.scalar(f"eval_by_scenario/{scenario}/{task}/{metric}",
                                              values[metric])
            write_backbone_diagnostics(diagnostics, gate_ids, info.scenario_names,
                                       info.task_names)
        self.writer.flush()
        logging.info("Epoch %d eval AUC per scenario x task: %s", epoch, {
            s: {t: round(v["auc"], 4) for t, v in by_task.items()}
            for s, by_task in self.last_metrics.items()})

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- AutoMTL search


def write_automtl_search(backbone, head_labels: Sequence[str]) -> None:
    """An ``AutoMTLSupernet``'s architecture and expert-selection parameters (default writer).

    ``automtl/alpha/interaction/<op>`` scalars, ``automtl/alpha_entropy/<block>`` scalars and
    ``automtl/alpha/<block>`` histograms of ``softmax(alpha)``; images
    ``automtl/interaction_weights`` (the interaction block), ``automtl/expert_op_weights``
    (rows ``expert_<i>/block_<j>``, columns expert operations) and
    ``automtl/expert_selection`` (rows heads, columns experts: ``softmax(beta)``).
    """
    interaction = backbone.interaction.mixture_weights().numpy()
    for op, weight in zip(backbone.interaction.candidates, interaction):
        tf.summary.scalar(f"automtl/alpha/interaction/{op}", float(weight))
    tf.summary.histogram("automtl/alpha/interaction", interaction)
    tf.summary.scalar("automtl/alpha_entropy/interaction", float(gate_entropy(interaction)))
    write_heatmap("automtl/interaction_weights", interaction[None], ["interaction"],
                  backbone.interaction.candidates, vmax=None)
    blocks = [block.mixture_weights().numpy() for block in backbone.experts.blocks]  # [E, ops]
    for j, weights in enumerate(blocks):
        tf.summary.histogram(f"automtl/alpha/expert_block_{j}", weights)
        tf.summary.scalar(f"automtl/alpha_entropy/expert_block_{j}",
                          float(gate_entropy(weights).mean()))
    rows = [f"expert_{i}/block_{j}" for i in range(backbone.num_experts)
            for j in range(len(blocks))]
    matrix = np.stack([blocks[j][i] for i in range(backbone.num_experts)
                       for j in range(len(blocks))])
    write_heatmap("automtl/expert_op_weights", matrix, rows, backbone.expert_ops, vmax=None)
    beta = backbone.expert_distributions().numpy()
    tf.summary.histogram("automtl/beta", beta)
    write_heatmap("automtl/expert_selection", beta, list(head_labels),
                  [f"expert {e}" for e in range(beta.shape[1])], vmax=None,
                  description="softmax(beta) per (scenario, task) head")
