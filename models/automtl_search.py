"""AutoMTL's architecture search: the ``prepare`` step of the ``automtl`` architecture.

First-order DARTS-style search of the supernet (AutoMTL Sec. 3.4, Algorithm 1):

1. warm-up (``warmup_epochs``): only the network weights ``w`` train, on training
   batches; ``alpha`` and ``beta`` stay fixed so that every expert is trained alike;
2. search (``search_epochs``): every step first updates ``alpha`` on a validation
   batch (the eval split handed to ``prepare``) by ``grad_alpha L_val(w, beta, alpha)``
   (the first-order approximation of eq. 4, ``xi = 0``), then ``w`` and ``beta`` on a
   training batch by ``L_train + w_JSD L_JSD`` (eq. 3), ``w_JSD`` decaying linearly
   from ``jsd_weight`` to 0 over the search steps;
3. derive: the argmax operation of every choice block, the top-``num_chosen_experts``
   experts of every (scenario, task) head by ``beta``; experts no head keeps are
   dropped. The result goes to ``<log_dir>/derived_architecture.json`` (with the
   per-epoch ``softmax(alpha)``/``softmax(beta)`` trajectories), to the log and to
   TensorBoard (``<log_dir>/automtl_search``), and comes back as an
   ``automtl_derived`` model spec, which the Trainer builds and trains from scratch.

Network weights use Adam with the spec's learning rate, ``alpha`` and ``beta``
their own Adam optimizers with ``arch_learning_rate`` (the paper: SGD for the
weights, Adam 1e-3 for both architecture parameter groups, over full epochs; the
defaults here are sized for a CPU budget of about a minute).
"""

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras
from absl import logging

from models import diagnostics
from models.optimizers import adam
from models.layers.automtl import (DEFAULT_EXPERT_OPS, EXPERT_OPS, INTERACTION_OPS,
                                   AutoMTLSupernet, check_operation,
                                   jensen_shannon_loss)

DERIVED_ARCHITECTURE = "automtl_derived"
DERIVED_FILE = "derived_architecture.json"
SUMMARY_DIR = "automtl_search"

# Hyper-parameters of the search; the rest of SUPERNET_HPARAMS go to the layer.
SEARCH_HPARAMS = {
    "num_chosen_experts": (int, 2),  # c: experts kept per (scenario, task) head.
    "warmup_epochs": (int, 1),
    "search_epochs": (int, 3),
    "search_steps_per_epoch": (int, 40),  # 0: one pass over the training data per epoch.
    "arch_learning_rate": (float, 0.01),  # Adam, for alpha and for beta.
}
SUPERNET_HPARAMS = {
    "interaction_ops": (tuple, INTERACTION_OPS),
    "expert_ops": (tuple, EXPERT_OPS),
    "num_experts": (int, 4),
    "num_expert_blocks": (int, 2),
    "expert_dim": (int, 32),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
    "jsd_weight": (float, 1.0),  # Initial w_JSD (the paper: 1, decayed linearly to 0).
    **SEARCH_HPARAMS,
}
# What the derived network is built from: the search's result (or written by hand).
DERIVED_HPARAMS = {
    "interaction_op": (str, "cross_2"),
    "expert_ops": (tuple, DEFAULT_EXPERT_OPS),  # Per expert, its operation per block.
    "selected_experts": (tuple, ()),  # Per head (s * num_tasks + t) its experts; () = all.
    "expert_dim": (int, 32),
    "tower_units": (list, (32,)),
    "dropout": (float, 0.0),
}
_SHARED = ("expert_dim", "tower_units", "dropout")


def supernet_layer(**kwargs) -> AutoMTLSupernet:
    """The registered layer of ``automtl``: the supernet, without the search's knobs."""
    return AutoMTLSupernet(**{k: v for k, v in kwargs.items() if k not in SEARCH_HPARAMS})


def _check_ops(ops, family: str, key: str) -> Optional[str]:
    if not isinstance(ops, (list, tuple)) or not ops:
        return f"{key} must be a non-empty list of operation names, got {ops!r}"
    for op in ops:
        problem = check_operation(op, family)
        if problem:
            return f"{key}: {problem}"
    if len(set(ops)) != len(ops):
        return f"{key} lists an operation twice: {list(ops)}"
    return None


def validate_supernet(hparams: Dict[str, Any]) -> Optional[str]:
    """Checks the ``automtl`` hyper-parameters the factory's type checks do not cover."""
    problem = (_check_ops(hparams["interaction_ops"], "interaction", "interaction_ops")
               or _check_ops(hparams["expert_ops"], "expert", "expert_ops"))
    if problem:
        return problem
    if hparams["num_chosen_experts"] > hparams["num_experts"]:
        return (f"num_chosen_experts ({hparams['num_chosen_experts']}) must be <= "
                f"num_experts ({hparams['num_experts']})")
    for key in ("expert_dim", "search_epochs"):
        if hparams[key] < 1:
            return f"{key} must be >= 1, got {hparams[key]}"
    for key in ("warmup_epochs", "search_steps_per_epoch", "jsd_weight"):
        if hparams[key] < 0:
            return f"{key} must be >= 0, got {hparams[key]}"
    if hparams["arch_learning_rate"] <= 0:
        return f"arch_learning_rate must be > 0, got {hparams['arch_learning_rate']}"
    return None


def validate_derived(hparams: Dict[str, Any]) -> Optional[str]:
    """Checks the ``automtl_derived`` hyper-parameters (operation names, expert indices)."""
    problem = check_operation(hparams["interaction_op"], "interaction")
    if problem:
        return f"interaction_op: {problem}"
    experts = hparams["expert_ops"]
    if not isinstance(experts, (list, tuple)) or not experts:
        return f"expert_ops must be a non-empty list of per-expert operation lists, got {experts!r}"
    for i, ops in enumerate(experts):
        if not isinstance(ops, (list, tuple)) or not ops:
            return f"expert_ops[{i}] must be a non-empty list of operation names, got {ops!r}"
        for op in ops:
            problem = check_operation(op, "expert")
            if problem:
                return f"expert_ops[{i}]: {problem}"
    heads = hparams["selected_experts"]
    if not isinstance(heads, (list, tuple)):
        return f"selected_experts must be a list of per-head expert lists, got {heads!r}"
    for k, head in enumerate(heads):
        if (not isinstance(head, (list, tuple)) or not head
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(experts)
                           for i in head)):
            return (f"selected_experts[{k}] must be a non-empty list of expert indices in "
                    f"[0, {len(experts)}), got {head!r}")
    if len({len(head) for head in heads}) > 1:
        return "every head in selected_experts must select the same number of experts"
    if hparams["expert_dim"] < 1:
        return f"expert_dim must be >= 1, got {hparams['expert_dim']}"
    return None


# --------------------------------------------------------------------------- the search


def _head_names(data_info) -> List[str]:
    return [f"{s}/{t}" for s in data_info.scenario_names for t in data_info.task_names]


def _count_batches(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality == tf.data.INFINITE_CARDINALITY:
        raise ValueError("the training dataset repeats forever: set search_steps_per_epoch")
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


class SupernetSearch:
    """The bi-level optimisation of a supernet model (eq. 3), first-order (eq. 4 with xi = 0).

    ``model`` is a ``models.factory.build_model`` model whose backbone is an
    ``AutoMTLSupernet``. The steps take ``(features, labels, sample_weights)``
    batches (``sample_weights`` may be empty, see ``split``) and return the
    batch's data loss:

    - ``warmup_step``: the network weights ``w`` on a training batch;
    - ``train_step``: ``w`` and ``beta`` on a training batch, loss
      ``L_train + w_JSD L_JSD`` (the inner problem of eq. 3);
    - ``alpha_step``: ``alpha`` on a validation batch by ``grad_alpha L_val`` (eq. 4, xi = 0).

    The warm-up and training steps are one traced function (tracing a supernet
    takes long): the warm-up passes a zero gate on ``beta``'s gradient, which
    leaves ``beta`` and its fresh Adam state exactly unchanged, and ``run`` resets
    that Adam state when the search starts.
    """

    def __init__(self, model: keras.Model, data_info, learning_rate: float,
                 arch_learning_rate: float):
        from models import factory  # Not at import: the factory imports this module.

        self.model = model
        self.backbone: AutoMTLSupernet = model.get_layer(factory.BACKBONE_LAYER)
        self.input_names = list(factory.model_input_names(data_info))
        self.task_names = list(data_info.task_names)
        self.head_names = _head_names(data_info)
        self.alpha = self.backbone.architecture_variables()
        self.beta = self.backbone.expert_selection_variables()
        architecture = {v.ref() for v in self.alpha + self.beta}
        self.weights = [v for v in model.trainable_variables if v.ref() not in architecture]
        self.weight_optimizer = adam(learning_rate)
        self.beta_optimizer = adam(arch_learning_rate)
        self.alpha_optimizer = adam(arch_learning_rate)
        # Optimizer state created now: a function that creates variables is traced twice.
        for optimizer, variables in ((self.weight_optimizer, self.weights),
                                     (self.beta_optimizer, self.beta),
                                     (self.alpha_optimizer, self.alpha)):
            optimizer._create_all_weights(variables)
        self._bce = keras.losses.BinaryCrossentropy()
        self._train = tf.function(self._train_step, reduce_retracing=True, autograph=False)
        self._alpha = tf.function(self._alpha_step, reduce_retracing=True, autograph=False)

    def split(self, batch):
        """A dataset batch -> ``(model inputs, labels, sample weights or {})``."""
        features, labels = batch[0], batch[1]
        weights = batch[2] if len(batch) > 2 else {}
        return {k: features[k] for k in self.input_names}, labels, weights

    def trace(self, train_dataset: tf.data.Dataset, eval_dataset: tf.data.Dataset) -> None:
        """Traces the steps once for any batch size (no retrace for a last, smaller batch)."""
        train_spec = self.split(train_dataset.element_spec)
        self._train.get_concrete_function(*train_spec, tf.TensorSpec([], tf.float32))
        self._alpha.get_concrete_function(*self.split(eval_dataset.element_spec))

    def _losses(self, features, labels, weights):
        outputs = self.model(features, training=True)
        data_loss = tf.add_n([self._bce(labels[t], outputs[t], sample_weight=weights.get(t))
                              for t in self.task_names])
        auxiliary = tf.add_n(self.model.losses) if self.model.losses else tf.constant(0.0)
        return data_loss, auxiliary

    @staticmethod
    def _apply(optimizer, gradients, variables):
        pairs = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        if pairs:
            optimizer.apply_gradients(pairs)

    def _train_step(self, features, labels, weights, beta_gate):
        variables = self.weights + self.beta
        with tf.GradientTape() as tape:
            data_loss, auxiliary = self._losses(features, labels, weights)
            loss = data_loss + auxiliary
        gradients = tape.gradient(loss, variables)
        n = len(self.weights)
        self._apply(self.weight_optimizer, gradients[:n], self.weights)
        self._apply(self.beta_optimizer, [None if g is None else g * beta_gate
                                          for g in gradients[n:]], self.beta)
        return data_loss

    def _alpha_step(self, features, labels, weights):
        with tf.GradientTape() as tape:
            data_loss, _ = self._losses(features, labels, weights)
        self._apply(self.alpha_optimizer, tape.gradient(data_loss, self.alpha), self.alpha)
        return data_loss

    def warmup_step(self, features, labels, weights=None) -> float:
        """The network weights only, on a training batch (the warm-up stage)."""
        return float(self._train(features, labels, weights or {}, tf.constant(0.0)))

    def train_step(self, features, labels, weights=None) -> float:
        """``w`` and ``beta`` on a training batch, ``L_train + w_JSD L_JSD`` (eq. 3, inner)."""
        return float(self._train(features, labels, weights or {}, tf.constant(1.0)))

    def alpha_step(self, features, labels, weights=None) -> float:
        """``alpha`` on a validation batch, ``grad_alpha L_val(w, beta, alpha)`` (eq. 4, xi = 0)."""
        return float(self._alpha(features, labels, weights or {}))

    def reset_beta_optimizer(self) -> None:
        """A fresh Adam state for ``beta`` (its zero-gradient warm-up steps still counted)."""
        for variable in self.beta_optimizer.variables():
            variable.assign(tf.zeros_like(variable))

    def snapshot(self) -> Dict[str, Any]:
        """``softmax(alpha)`` per choice block and ``softmax(beta)`` per head, as lists."""
        beta = dict(zip(self.head_names,
                        [_floats(p) for p in self.backbone.expert_distributions()]))
        return {"alpha": alpha_weights(self.backbone), "beta": beta}

    def run(self, train_dataset: tf.data.Dataset, eval_dataset: tf.data.Dataset,
            warmup_epochs: int, search_epochs: int, steps_per_epoch: int = 0,
            jsd_weight: float = 1.0, writer=None) -> List[Dict[str, Any]]:
        """Warm-up then search; returns the per-epoch trajectory (epoch 0: the initial state).

        An epoch is ``steps_per_epoch`` training batches, or one pass over
        ``train_dataset`` when 0; a search step also takes one validation batch.
        ``w_JSD`` falls linearly from ``jsd_weight`` to 0 at the last search step.
        """
        steps = steps_per_epoch or _count_batches(train_dataset)
        total = search_epochs * steps
        self.trace(train_dataset, eval_dataset)
        train_batches = iter(train_dataset.repeat())
        val_batches = iter(eval_dataset.repeat())
        jsd = self.backbone.jsd_weight_variable
        jsd.assign(jsd_weight)
        trajectory = [{"epoch": 0, "phase": "initial", "jsd_weight": float(jsd.numpy()),
                       **self.snapshot()}]
        if writer is not None:
            with writer.as_default(step=0):
                diagnostics.write_automtl_search(self.backbone, self.head_names)
        step = 0
        for epoch in range(1, warmup_epochs + search_epochs + 1):
            warmup = epoch <= warmup_epochs
            if epoch == warmup_epochs + 1:
                self.reset_beta_optimizer()
            started = time.time()
            train_losses, val_losses = [], []
            for _ in range(steps):
                if warmup:
                    train_losses.append(self.warmup_step(*self.split(next(train_batches))))
                    continue
                jsd.assign(jsd_weight * (1.0 - step / (total - 1)) if total > 1 else 0.0)
                step += 1
                val_losses.append(self.alpha_step(*self.split(next(val_batches))))
                train_losses.append(self.train_step(*self.split(next(train_batches))))
            entry = {"epoch": epoch, "phase": "warmup" if warmup else "search",
                     "seconds": round(time.time() - started, 2),
                     "train_loss": float(np.mean(train_losses)),
                     "val_loss": float(np.mean(val_losses)) if val_losses else None,
                     "jsd_weight": float(jsd.numpy()), **self.snapshot()}
            trajectory.append(entry)
            logging.info("AutoMTL search epoch %d (%s, %d steps, %.1fs): train loss %.4f, "
                         "val loss %s, w_JSD %.3f", epoch, entry["phase"], steps, entry["seconds"],
                         entry["train_loss"], entry["val_loss"], entry["jsd_weight"])
            if writer is not None:
                with writer.as_default(step=epoch):
                    tf.summary.scalar("automtl/train_loss", entry["train_loss"])
                    if entry["val_loss"] is not None:
                        tf.summary.scalar("automtl/val_loss", entry["val_loss"])
                    tf.summary.scalar("automtl/jsd_weight", entry["jsd_weight"])
                    tf.summary.scalar("automtl/jsd", -float(
                        jensen_shannon_loss(self.backbone.expert_distributions())))
                    diagnostics.write_automtl_search(self.backbone, self.head_names)
        jsd.assign(0.0)
        return trajectory


def _floats(values) -> List[float]:
    return [round(float(v), 6) for v in np.asarray(values)]


def alpha_weights(backbone: AutoMTLSupernet) -> Dict[str, Dict[str, float]]:
    """``softmax(alpha)`` of every choice block: ``interaction``, ``expert_<i>/block_<j>``."""
    interaction = backbone.interaction
    result = {"interaction": dict(zip(interaction.candidates,
                                      _floats(interaction.mixture_weights())))}
    blocks = [block.mixture_weights().numpy() for block in backbone.experts.blocks]
    for i in range(backbone.num_experts):
        for j, weights in enumerate(blocks):
            result[f"expert_{i}/block_{j}"] = dict(zip(backbone.expert_ops, _floats(weights[i])))
    return result


# --------------------------------------------------------------------------- derivation


def derive(backbone: AutoMTLSupernet, num_chosen_experts: int) -> Dict[str, Any]:
    """The derived architecture (Alg. 1, lines 10-12) of a searched supernet.

    Returns ``interaction_op`` (argmax of the interaction block), ``expert_ops``
    (per kept expert, the argmax operation of each block), ``selected_experts``
    (per head, the top-``num_chosen_experts`` experts by ``beta``, renumbered over
    the kept experts), ``supernet_experts`` (the kept experts' supernet indices)
    and ``supernet_selected_experts`` (the selection in supernet numbering).
    """
    if not 1 <= num_chosen_experts <= backbone.num_experts:
        raise ValueError(f"num_chosen_experts must be in [1, {backbone.num_experts}], "
                         f"got {num_chosen_experts}")
    expert_ops = backbone.experts.chosen()
    beta = backbone.beta.numpy()
    selected = [sorted(int(i) for i in np.argsort(-row, kind="stable")[:num_chosen_experts])
                for row in beta]
    kept = sorted({i for head in selected for i in head})
    renumber = {old: new for new, old in enumerate(kept)}
    return {"interaction_op": backbone.interaction.chosen(),
            "expert_ops": [expert_ops[i] for i in kept],
            "selected_experts": [[renumber[i] for i in head] for head in selected],
            "supernet_experts": kept, "supernet_selected_experts": selected}


def derived_hparams(derivation: Dict[str, Any], hparams: Dict[str, Any]) -> Dict[str, Any]:
    """The ``automtl_derived`` hyper-parameters of a derivation (tuples, as in a spec)."""
    result = {"interaction_op": derivation["interaction_op"],
              "expert_ops": tuple(tuple(ops) for ops in derivation["expert_ops"]),
              "selected_experts": tuple(tuple(h) for h in derivation["selected_experts"])}
    for key in _SHARED:
        value = hparams[key]
        result[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return result


def _describe(backbone: AutoMTLSupernet, derivation, head_names) -> Dict[str, Any]:
    alpha = alpha_weights(backbone)
    experts = []
    for new, old in enumerate(derivation["supernet_experts"]):
        weights = [alpha[f"expert_{old}/block_{j}"] for j in range(backbone.num_expert_blocks)]
        experts.append({"index": new, "supernet_index": old,
                        "ops": derivation["expert_ops"][new], "block_weights": weights})
    p = backbone.expert_distributions().numpy()
    heads = {name: {"experts": derivation["selected_experts"][k],
                    "supernet_experts": derivation["supernet_selected_experts"][k],
                    "expert_distribution": _floats(p[k])}
             for k, name in enumerate(head_names)}
    return {"interaction": {"op": derivation["interaction_op"], "weights": alpha["interaction"]},
            "experts": experts, "heads": heads}


def search(spec, data_info, train_dataset: tf.data.Dataset, eval_dataset: tf.data.Dataset,
           log_dir: Optional[str]):
    """``Architecture.prepare`` of ``automtl``: search, derive, return the derived spec."""
    from models import factory

    hparams = factory.resolve_hparams(spec)
    training = spec.training_dict
    keras.utils.set_random_seed(training["seed"])
    model = factory.build_model(spec, data_info)
    searcher = SupernetSearch(model, data_info, training["learning_rate"],
                              hparams["arch_learning_rate"])
    writer = (tf.summary.create_file_writer(os.path.join(log_dir, SUMMARY_DIR))
              if log_dir else None)
    logging.info("AutoMTL search: %d warm-up + %d search epochs of %s steps, %d experts x %d "
                 "blocks, %d interaction and %d expert candidates", hparams["warmup_epochs"],
                 hparams["search_epochs"], hparams["search_steps_per_epoch"] or "one pass of",
                 hparams["num_experts"], hparams["num_expert_blocks"],
                 len(hparams["interaction_ops"]), len(hparams["expert_ops"]))
    started = time.time()
    trajectory = searcher.run(train_dataset, eval_dataset, hparams["warmup_epochs"],
                              hparams["search_epochs"], hparams["search_steps_per_epoch"],
                              hparams["jsd_weight"], writer)
    seconds = time.time() - started
    derivation = derive(searcher.backbone, hparams["num_chosen_experts"])
    result = derived_hparams(derivation, hparams)
    derived_spec = dataclasses.replace(spec, architecture=DERIVED_ARCHITECTURE,
                                       hparams=tuple(sorted(result.items())))
    factory.resolve_hparams(derived_spec)  # The derived spec must build.
    # The derived model's initialisation does not depend on how long the search ran.
    keras.utils.set_random_seed(training["seed"])

    report = {"architecture": DERIVED_ARCHITECTURE,
              "hparams": json.loads(json.dumps(result)),
              **_describe(searcher.backbone, derivation, searcher.head_names),
              "search": {"seconds": round(seconds, 2),
                         **{k: list(v) if isinstance(v, (list, tuple)) else v
                            for k, v in hparams.items()}},
              "trajectory": trajectory}
    summary = json.dumps({k: report[k] for k in ("architecture", "hparams")}, indent=1)
    logging.info("AutoMTL search done in %.1fs; derived architecture:\n%s", seconds, summary)
    if log_dir:
        tf.io.gfile.makedirs(log_dir)
        with tf.io.gfile.GFile(os.path.join(log_dir, DERIVED_FILE), "w") as f:
            json.dump(report, f, indent=1)
        with writer.as_default(step=len(trajectory) - 1):
            text = json.dumps({k: report[k] for k in ("architecture", "hparams", "interaction",
                                                     "experts", "heads")}, indent=1)
            tf.summary.text("automtl/derived_architecture",
                            "    " + text.replace("\n", "\n    "))  # Markdown code block.
        writer.flush()
    return derived_spec
