"""Training-step throughput on the CPU: our models vs torch-rechub's, next to a GEMM roofline.

One run, one machine, the same in-memory data for both sides (the issue's shape): 79
categorical fields (16 vocabularies of 10 to 2,000 values, 63 bucketized numericals of 21
ids), embedding 16, 2 tasks, batch 2048, Adam; MMoE with 8 experts [256, 128] and towers
[64], PLE with 1 level of 4 shared + 4 specific experts, Shared-Bottom [256, 128]. Ours are
built by ``models.factory.build_model`` from a ``ModelSpec`` (the real model library) and
trained by Keras ``fit``; torch-rechub's run in ``benchmarks/.venv-torch``
(``benchmarks/setup_torch_env.sh``) in a persistent subprocess (``benchmarks/torch_side.py``)
that reads the same arrays and answers the parent's timing requests.

On a shared machine, ``--threads 1`` is the comparison that holds up: with 2 threads a
side's steps slow down far more when another process takes one of its threads (torch's
OpenMP steps most of all).

torch-rechub's models are multi-task only, so the side-by-side uses 1 scenario; ours are
also measured at 5 scenarios (a gate and tower per scenario x task).

Methodology (so that the ratio is fair in both directions):

- Same work: the same arrays, batch, widths, Adam (lr 1e-3, no weight decay) and 2 intra-op
  threads on both sides (TF ``set_intra_op_parallelism_threads``, ``torch.set_num_threads``;
  ``--threads``). Each side runs its own trainer's step: ours a Keras ``fit`` step with the
  Trainer's ``steps_per_execution`` (``--steps-per-execution``) and Adam (tf_keras' legacy
  Adam, one fused kernel per variable; ``--keras-adam`` adds every model again with
  ``keras.optimizers.Adam``, side "ours, Keras Adam"), torch-rechub's a step of its
  ``MTLTrainer.train_one_epoch``. ``--policies`` times every model under each Keras dtype
  policy; under ``mixed_bfloat16`` torch-rechub's models run their forward pass under
  ``torch.autocast`` (bfloat16), so each ratio compares like precision with like.
- Interleaved rounds: every model (ours and torch-rechub's, in a persistent subprocess) is
  built and warmed up once; then ``--rounds`` rounds, each running every model for
  ``--steps`` timed steps (after one untimed step), in alternating order (forward, then
  reverse), with one 4096^3 GEMM per side per round. A slow drift in the machine's load then
  hits every model alike. Figures are the median over rounds of each round's examples/s
  (mean step time of the round); ``spread`` gives the slowest and fastest round.
- FLOPs: the dense matmul FLOPs of one forward pass, counted from the traced forward graph
  of each model (``matmul_flops``: ``2 M K N`` per MatMul, ``2 x`` the product of all index
  sizes per two-operand Einsum, ``2 x`` output size x kernel window x input channels per
  convolution), times 3 for forward + backward (the backward pass is two matmuls per
  forward matmul). Embedding lookups, element-wise ops and the optimizer are not counted.
  The torch side counts the same with ``torch.utils.flop_counter`` (forward + backward
  measured).
- Roofline: a 4096^3 fp32 ``tf.linalg.matmul`` timed once per round in the same process and
  thread pool; the median over rounds (the same statistic as the models).

    .venv/bin/python benchmarks/train_throughput.py            # everything, ~15 min idle
    .venv/bin/python benchmarks/train_throughput.py --models mmoe --no-torch --rounds 3
    .venv/bin/python benchmarks/train_throughput.py --models mmoe ple --keras-adam --no-torch
    .venv/bin/python benchmarks/train_throughput.py --strategy mirrored   # on GPUs, if any
    .venv/bin/python benchmarks/train_throughput.py --strategy mirrored --logical-devices 2

``--logical-devices N`` splits the first GPU into N logical GPUs (``--gpu-memory-mib`` each)
and mirrors over them, as issue #7 asks for one and two; without a GPU it splits the CPU
instead, which runs the same code path (and is how it is checked on CPU-only machines).

Prints a table and writes ``benchmarks/results/train_throughput.json`` and a section of
``benchmarks/RESULTS.md``.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import reporting  # noqa: E402
from pipeline.specs import TRAINING_DEFAULTS  # noqa: E402 (no TensorFlow import)

TORCH_PYTHON = os.path.join(HERE, ".venv-torch", "bin", "python")
TASKS = ("click", "conversion")
NUM_CATEGORICAL, NUM_NUMERICAL, NUMERICAL_IDS = 16, 63, 21
EMBEDDING_DIM = 16

# Our models at the benchmark's widths (the shape; same widths as torch-rechub's).
MODELS: Dict[str, Dict] = {
    "shared_bottom": dict(bottom_units=[256, 128], tower_units=[64]),
    "mmoe": dict(num_experts=8, expert_units=[256, 128], tower_units=[64]),
    "ple": dict(num_levels=1, num_specific_experts=4, num_shared_experts=4,
                expert_units=[256, 128], tower_units=[64]),
    "star": dict(units=[256, 128], aux_units=[64]),
    "aesm2": dict(num_experts=8, expert_units=[256, 128], top_k_specific=2, top_k_shared=1,
                  tower_units=[64]),
    "hinet": dict(num_sub_experts=5, sub_expert_units=[256, 128], num_shared_experts=2,
                  num_specific_experts=2, expert_units=[128], tower_units=[64], san_dim=16),
    "automtl_derived": dict(interaction_op="cross_2", expert_dim=128, tower_units=[64]),
}
TORCH_MODELS = ("shared_bottom", "mmoe", "ple")
# Our Keras policies the torch side can match: mixed_bfloat16 runs torch-rechub's forward
# pass under torch.autocast(bfloat16) (benchmarks/torch_side.py).
TORCH_PRECISIONS = ("float32", "mixed_bfloat16")
# Run each example's own scenario only (models.layers.routing); --every-scenario also times
# them computing every scenario for every example.
ROUTED_MODELS = ("ple", "star", "hinet")


def vocab_sizes() -> List[int]:
    """16 vocabularies from 10 to 2,000 ids (geometric), then 63 fields of 21 bucket ids."""
    categorical = np.geomspace(10, 2000, NUM_CATEGORICAL).round().astype(int).tolist()
    return categorical + [NUMERICAL_IDS] * NUM_NUMERICAL


def make_data(num_examples: int, num_scenarios: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """Field ids ``[N, 79]`` (Zipf-like), scenario ids ``[N]`` and labels ``[N, 2]``."""
    rng = np.random.default_rng(seed)
    sizes = vocab_sizes()
    ids = np.stack([np.minimum(rng.zipf(1.3, num_examples) - 1, v - 1) for v in sizes], axis=1)
    share = np.arange(num_scenarios, 0, -1, dtype=np.float64)
    scenario = rng.choice(num_scenarios, num_examples, p=share / share.sum())
    # Labels with signal from a few fields (the benchmark measures speed, not quality).
    score = (ids[:, 0] % 7 - 3) * 0.3 + (ids[:, 20] - 10) * 0.1 + scenario * 0.2
    click = (rng.random(num_examples) < 1 / (1 + np.exp(-score))).astype(np.float32)
    conversion = click * (rng.random(num_examples) < 0.3).astype(np.float32)
    return {"field_ids": ids.astype(np.int64), "scenario_id": scenario.astype(np.int64),
            "labels": np.stack([click, conversion], axis=1)}


# --------------------------------------------------------------------------- FLOP counting


def matmul_flops(graph, unknown_dim: int = 0) -> Dict[str, int]:
    """Dense matmul FLOPs of a forward graph, per op type (see the module docstring).

    ``unknown_dim``: the size taken for a dimension unknown when tracing. The backbones
    that group the batch by scenario (``models.layers.routing``) run each scenario's
    path on a group of dynamic size ``n_s``; every such op's FLOPs are linear in
    ``n_s`` and the paths are alike, so taking ``n_s = batch / S`` gives the exact total
    for any split of the batch (without unseen scenarios).
    """
    import tensorflow as tf  # noqa: F401
    flops: Dict[str, int] = {}

    def _static(shape) -> List[int]:
        if shape.rank is None:
            raise ValueError("a matmul operand of unknown rank")
        return [unknown_dim if d is None else int(d) for d in shape.as_list()]

    def add(kind, value):
        flops[kind] = flops.get(kind, 0) + int(value)

    for op in graph.get_operations():
        if op.type == "MatMul":
            a, b = _static(op.inputs[0].shape), _static(op.inputs[1].shape)
            m = a[1] if op.get_attr("transpose_a") else a[0]
            k = a[0] if op.get_attr("transpose_a") else a[1]
            n = b[0] if op.get_attr("transpose_b") else b[1]
            add("MatMul", 2 * m * k * n)
        elif op.type in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
            out = _static(op.outputs[0].shape)
            a = _static(op.inputs[0].shape)
            k = a[-2] if op.get_attr("adj_x") else a[-1]
            add("BatchMatMul", 2 * int(np.prod(out)) * k)
        elif op.type == "Einsum" and len(op.inputs) == 2:
            equation = op.get_attr("equation").decode()
            lhs = equation.split("->")[0].split(",")
            sizes = {}
            for term, tensor in zip(lhs, op.inputs):
                for letter, size in zip(term.replace("...", ""), _static(tensor.shape)):
                    sizes[letter] = size
            add("Einsum", 2 * int(np.prod(list(sizes.values()))))
        elif op.type in ("Conv2D", "Conv1D"):
            out = _static(op.outputs[0].shape)
            kernel = _static(op.inputs[1].shape)  # [..., in, out]
            add("Conv", 2 * int(np.prod(out)) * int(np.prod(kernel[:-1])))
    return flops


def forward_flops(model, batch_size: int, num_scenarios: int = 1) -> Dict[str, int]:
    import tensorflow as tf
    specs = {name: tf.TensorSpec([batch_size], tf.int64, name=name) for name in model.input_names}
    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(specs).graph
    return matmul_flops(graph, unknown_dim=batch_size // num_scenarios)


# --------------------------------------------------------------------------- our side


def configure_threads(intra: int, inter: int) -> None:
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def gemm_seconds(n: int = 4096, dtype: str = "float32") -> float:
    """Wall seconds of one ``n x n x n`` matmul in TensorFlow (traced and warm), in ``dtype``
    (``float32``, or ``bfloat16``: the matmuls of a ``mixed_bfloat16`` step)."""
    import tensorflow as tf
    if (n, dtype) not in _GEMM:
        a, b = (tf.cast(tf.random.normal([n, n]), dtype) for _ in range(2))
        matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y),
                                                                 tf.float32)))
        matmul(a, b).numpy()
        _GEMM[n, dtype] = (matmul, a, b)
    matmul, a, b = _GEMM[n, dtype]
    start = time.perf_counter()
    matmul(a, b).numpy()
    return time.perf_counter() - start


_GEMM: Dict = {}


def build_ours(architecture: str, num_scenarios: int, batch_size: int, hparams: Dict,
               learning_rate: float = 1e-3, jit_compile: bool = False,
               steps_per_execution: int = 1, every_scenario: bool = False,
               precision: str = "float32", keras_adam: bool = False):
    import tf_keras as keras
    from models import factory, optimizers
    from pipeline.specs import ModelSpec
    sizes = vocab_sizes()
    names = tuple(f"f{i:02d}" for i in range(len(sizes)))
    share = np.arange(num_scenarios, 0, -1, dtype=np.float64)
    info = factory.DataInfo(
        field_names=names, vocab_sizes=tuple(sizes), task_names=TASKS,
        scenario_names=tuple(f"s{i}" for i in range(num_scenarios)),
        scenario_prior=tuple((share / share.sum()).tolist()))
    spec = ModelSpec(name=architecture, source="benchmarks/train_throughput.py",
                     architecture=architecture, embedding_dim=EMBEDDING_DIM,
                     hparams=tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                                          for k, v in hparams.items())),
                     training=(("precision", precision),))
    model = factory.build_model(spec, info, own_scenario=not every_scenario)
    # The Trainer's fused Adam, or (keras_adam) Keras' own, for the comparison.
    optimizer = (keras.optimizers.Adam(learning_rate) if keras_adam
                 else optimizers.adam(learning_rate))
    model.compile(optimizer=optimizer,
                  loss={t: keras.losses.BinaryCrossentropy() for t in TASKS},
                  jit_compile=jit_compile, steps_per_execution=steps_per_execution)
    return model, names


def in_memory_dataset(data: Dict[str, np.ndarray], names, batch_size: int):
    """The arrays as tensors already batched, cycled forever (no input pipeline cost)."""
    import tensorflow as tf
    from models import features
    n = len(data["scenario_id"]) // batch_size
    batches = []
    for i in range(n):
        rows = slice(i * batch_size, (i + 1) * batch_size)
        x = {name: tf.constant(data["field_ids"][rows, j]) for j, name in enumerate(names)}
        x[features.SCENARIO_ID] = tf.constant(data["scenario_id"][rows])
        y = {t: tf.constant(data["labels"][rows, k:k + 1]) for k, t in enumerate(TASKS)}
        batches.append((x, y))
    return tf.data.Dataset.from_tensor_slices(
        tf.nest.map_structure(lambda *t: tf.stack(t), *batches)).cache().repeat()


def step_timer(warmup: int):
    """A Keras callback recording each training batch's wall time after ``warmup`` batches.

    Keras converts the step's logs to numbers before ``on_train_batch_end`` (this callback
    does not take tensor logs), so a recorded time covers the finished step.
    """
    import tf_keras as keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times: List[float] = []
            self._start = 0.0

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch >= warmup:
                self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def mirrored_strategy(logical_devices: int, gpu_memory_mib: int):
    """MirroredStrategy over every GPU, or over ``logical_devices`` logical devices carved
    out of the first GPU (the CPU where there is none). Must run before TF starts."""
    import tensorflow as tf
    if not logical_devices:
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    kind = "GPU" if gpus else "CPU"
    physical = gpus[0] if gpus else tf.config.list_physical_devices("CPU")[0]
    memory = gpu_memory_mib if gpus else None
    tf.config.set_logical_device_configuration(
        physical, [tf.config.LogicalDeviceConfiguration(memory_limit=memory)] * logical_devices)
    return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices(kind)])


class OursRunner:
    """One of our models, built, traced and warmed up once; ``round`` times Keras ``fit`` steps."""

    def __init__(self, architecture: str, num_scenarios: int, data, batch_size: int,
                 warmup: int, policy: str = "float32", strategy=None,
                 every_scenario: bool = False, **compile_options):
        self.architecture, self.num_scenarios, self.policy = architecture, num_scenarios, policy
        self.batch_size, self.options = batch_size, compile_options
        self.spe = compile_options.get("steps_per_execution", 1)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            self.model, names = build_ours(architecture, num_scenarios, batch_size,
                                           MODELS[architecture], every_scenario=every_scenario,
                                           precision=policy, **compile_options)
        self.flops = forward_flops(self.model, batch_size, num_scenarios)
        self.dataset = in_memory_dataset(data, names, batch_size)
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=max(warmup, 1) * self.spe,
                       verbose=0)
        self.side = ("ours, every scenario" if every_scenario
                     else "ours, Keras Adam" if compile_options.get("keras_adam") else "ours")
        self.label = f"{self.side} {architecture} S={num_scenarios} {policy}"

    def round(self, steps: int) -> List[float]:
        """Wall seconds of ``steps`` training steps (after one untimed step)."""
        timer = step_timer(1)
        self.model.fit(self.dataset, epochs=1, steps_per_epoch=(steps + 1) * self.spe,
                       verbose=0, callbacks=[timer])
        return [t / self.spe for t in timer.times]

    def row(self) -> Dict:
        forward = sum(self.flops.values()) / self.batch_size
        return {"model": self.architecture, "side": self.side, "scenarios": self.num_scenarios,
                "policy": self.policy, "train_flops_per_example": 3 * forward,
                "forward_flops_by_op": self.flops,
                "parameters": int(self.model.count_params()), "options": dict(self.options)}


class TorchRunner:
    """torch-rechub's models in a persistent ``torch_side.py`` subprocess (see its docstring)."""

    def __init__(self, python: str, data_file: str, models, batch_size: int, warmup: int,
                 threads: int, log_file, policies=("float32",)):
        command = [python, os.path.join(HERE, "torch_side.py"), "--data", data_file,
                   "--batch-size", str(batch_size), "--warmup", str(warmup),
                   "--threads", str(threads)]
        self._log = log_file
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log_file, text=True, bufsize=1)
        self.rows = {}
        for policy in policies:
            built = self._ask({"cmd": "build", "models": list(models), "precision": policy})
            self.rows.update({(m, policy): row for m, row in built["rows"].items()})

    def _ask(self, command: Dict) -> Dict:
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            self._log.flush()
            self._log.seek(0)
            raise RuntimeError(f"torch side ({TORCH_PYTHON}) failed:\n{self._log.read()[-3000:]}")
        return json.loads(line)

    def runner(self, model: str, policy: str = "float32"):
        parent = self

        class _Model:
            label = f"torch-rechub {model} S=1 {policy}"

            def round(self, steps: int) -> List[float]:
                command = {"cmd": "round", "model": model, "precision": policy,
                           "steps": steps + 1}
                return parent._ask(command)["step_s"][1:]

            def row(self) -> Dict:
                return dict(parent.rows[model, policy])

        return _Model()

    def gemm_seconds(self, n: int = 4096) -> float:
        return self._ask({"cmd": "gemm", "n": n})["seconds"]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self._process.stdin.flush()
            self._process.wait(timeout=60)


def summarize(row: Dict, rounds: List[List[float]], batch_size: int) -> Dict:
    """Median over rounds of each round's examples/s (batch / mean step time)."""
    rates = [batch_size / float(np.mean(steps)) for steps in rounds]
    rate = float(np.median(rates))
    flops = row["train_flops_per_example"]
    return {**row, "examples_per_s": rate, "step_ms": 1e3 * batch_size / rate,
            "gflops_per_s": flops * rate / 1e9, "round_examples_per_s": rates,
            "spread": [min(rates), max(rates)],
            "step_ms_all": [round(1e3 * t, 2) for steps in rounds for t in steps]}


def run_interleaved(runners, rounds: int, steps: int, batch_size: int, torch_runner=None,
                    bfloat16: bool = False):
    """``rounds`` rounds of every runner (alternating order) and one GEMM per side per round
    (with ``bfloat16``, also a bfloat16 GEMM on our side: the mixed-precision roofline)."""
    times = {id(r): [] for r in runners}
    gemm_tf, gemm_bf16, gemm_torch = [], [], []
    for i in range(rounds):
        order = runners if i % 2 == 0 else runners[::-1]
        for runner in order:
            times[id(runner)].append(runner.round(steps))
        gemm_tf.append(gemm_seconds())
        if bfloat16:
            gemm_bf16.append(gemm_seconds(dtype="bfloat16"))
        if torch_runner is not None:
            gemm_torch.append(torch_runner.gemm_seconds())
        print(f"round {i + 1}/{rounds}: " + ", ".join(
            f"{r.label} {batch_size / np.mean(times[id(r)][-1]):,.0f}/s" for r in runners)
            + f"; GEMM {2 * 4096 ** 3 / gemm_tf[-1] / 1e9:.0f} GFLOP/s; load "
            f"{os.getloadavg()[0]:.1f}", flush=True)
    rows = [summarize(r.row(), times[id(r)], batch_size) for r in runners]
    flops = 2 * 4096 ** 3 / 1e9
    roofline = {"tensorflow_gflops": flops / float(np.median(gemm_tf)),
                "tensorflow_rounds": [flops / t for t in gemm_tf]}
    if gemm_bf16:
        roofline.update(tensorflow_bfloat16_gflops=flops / float(np.median(gemm_bf16)),
                        tensorflow_bfloat16_rounds=[flops / t for t in gemm_bf16])
    if gemm_torch:
        roofline.update(torch_gflops=flops / float(np.median(gemm_torch)),
                        torch_rounds=[flops / t for t in gemm_torch])
    return rows, roofline


# --------------------------------------------------------------------------- report


def table(rows: List[Dict], roofline: Dict) -> str:
    """The results table; each row's % is of the GEMM roofline in its own precision (the
    bfloat16 GEMM for ``mixed_bfloat16`` rows, where it was measured)."""
    def row_roofline(policy):
        if policy == "mixed_bfloat16" and "tensorflow_bfloat16_gflops" in roofline:
            return roofline["tensorflow_bfloat16_gflops"]
        return roofline["tensorflow_gflops"]

    torch_rate = {(r["model"], r.get("policy", "float32")): r["examples_per_s"]
                  for r in rows if r["side"] == "torch-rechub"}
    lines = ["| model | side | scenarios | examples/s (median of rounds) | slowest - fastest round "
             "| step ms | train MFLOP/example | GFLOP/s | % of GEMM roofline | ours / torch-rechub |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        ratio = ""
        policy = r.get("policy", "float32")
        if r["side"] == "ours" and r["scenarios"] == 1 and (r["model"], policy) in torch_rate:
            ratio = f"{r['examples_per_s'] / torch_rate[r['model'], policy]:.2f}x"
        name = r["model"] if policy == "float32" else f"{r['model']} ({policy})"
        low, high = r["spread"]
        lines.append(f"| {name} | {r['side']} | {r['scenarios']} | "
                     f"{r['examples_per_s']:,.0f} | {low:,.0f} - {high:,.0f} | {r['step_ms']:.1f} | "
                     f"{r['train_flops_per_example'] / 1e6:.2f} | {r['gflops_per_s']:.0f} | "
                     f"{100 * r['gflops_per_s'] / row_roofline(policy):.0f}% | {ratio} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--scenarios", type=int, nargs="+", default=[1, 5],
                        help="scenario counts for our models (1 is the torch-rechub comparison)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per model per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after building")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads for both sides (0: each library's default)")
    parser.add_argument("--inter-op-threads", type=int, default=0)
    parser.add_argument("--jit-compile", action="store_true", help="XLA (measured slower here)")
    parser.add_argument("--steps-per-execution", type=int,
                        default=TRAINING_DEFAULTS["steps_per_execution"],
                        help="Keras steps per compiled call (default: the Trainer's)")
    parser.add_argument("--policies", nargs="+", default=["float32"],
                        help="Keras dtype policies to time each model under, e.g. float32 "
                             "mixed_bfloat16 (measured: see RESULTS.md)")
    parser.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                        help="mirrored: tf.distribute.MirroredStrategy over the visible GPUs")
    parser.add_argument("--logical-devices", type=int, default=0,
                        help="with --strategy mirrored: split the first GPU (else the CPU) into "
                             "N logical devices and mirror over them")
    parser.add_argument("--gpu-memory-mib", type=int, default=16384,
                        help="memory of each logical GPU with --logical-devices")
    parser.add_argument("--every-scenario", action="store_true",
                        help="also time the models that compute only each example's own "
                             f"scenario ({', '.join(ROUTED_MODELS)}) computing every scenario "
                             "for every example (the computation before routing), same run")
    parser.add_argument("--keras-adam", action="store_true",
                        help="also train each of our models with keras.optimizers.Adam instead "
                             "of the Trainer's fused legacy Adam (models/optimizers.py)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-python", default=TORCH_PYTHON)
    parser.add_argument("--output-json", default=os.path.join(HERE, "results",
                                                              "train_throughput.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"),
                        help="append a section here ('' to skip)")
    args = parser.parse_args(argv)

    configure_threads(args.threads, args.inter_op_threads)
    strategy = None
    if args.logical_devices and args.strategy != "mirrored":
        parser.error("--logical-devices needs --strategy mirrored")
    if args.strategy == "mirrored":
        strategy = mirrored_strategy(args.logical_devices, args.gpu_memory_mib)
        print(f"MirroredStrategy over {strategy.extended.worker_devices}")

    load_start = os.getloadavg()
    options = dict(jit_compile=args.jit_compile, steps_per_execution=args.steps_per_execution)
    batches = 8
    runners = []
    torch_runner = None
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "torch.log"), "w+") as log:
        for num_scenarios in args.scenarios:
            data = make_data(batches * args.batch_size, num_scenarios)
            for architecture in args.models:
                for policy in args.policies:
                    runners.append(OursRunner(architecture, num_scenarios, data, args.batch_size,
                                              args.warmup, policy, strategy, **options))
                    print(f"built {runners[-1].label}", flush=True)
                    if args.keras_adam:
                        runners.append(OursRunner(architecture, num_scenarios, data,
                                                  args.batch_size, args.warmup, policy, strategy,
                                                  **options, keras_adam=True))
                        print(f"built {runners[-1].label}", flush=True)
                    if (args.every_scenario and num_scenarios > 1
                            and architecture in ROUTED_MODELS):
                        runners.append(OursRunner(architecture, num_scenarios, data,
                                                  args.batch_size, args.warmup, policy, strategy,
                                                  every_scenario=True, **options))
                        print(f"built {runners[-1].label}", flush=True)
            wanted = [m for m in TORCH_MODELS if m in args.models]
            if num_scenarios == 1 and wanted and not args.no_torch:
                if os.path.exists(args.torch_python):
                    path = os.path.join(tmp, "data.npz")
                    np.savez(path, vocab_sizes=np.asarray(vocab_sizes()), **data)
                    torch_policies = [p for p in args.policies if p in TORCH_PRECISIONS]
                    torch_runner = TorchRunner(args.torch_python, path, wanted, args.batch_size,
                                               args.warmup, args.threads, log, torch_policies)
                    runners += [torch_runner.runner(m, p) for m in wanted for p in torch_policies]
                    print(f"built torch-rechub {' '.join(wanted)} ({', '.join(torch_policies)})",
                          flush=True)
                else:
                    print(f"no {args.torch_python}: run benchmarks/setup_torch_env.sh "
                          "for the torch-rechub side")
        bfloat16 = "mixed_bfloat16" in args.policies
        gemm_seconds()  # trace and warm the roofline's matmuls
        if bfloat16:
            gemm_seconds(dtype="bfloat16")
        try:
            rows, roofline_info = run_interleaved(runners, args.rounds, args.steps,
                                                  args.batch_size, torch_runner, bfloat16)
        finally:
            if torch_runner is not None:
                torch_runner.close()
    info = reporting.machine()
    info["load_average_1m_start"] = round(load_start[0], 2)
    info["gemm_roofline"] = roofline_info
    info["devices"] = (list(strategy.extended.worker_devices) if strategy is not None
                       else "default (no tf.distribute strategy)")
    roofline = roofline_info["tensorflow_gflops"]
    if any(r["side"] == "torch-rechub" for r in rows):
        info["torch"] = next(r["versions"] for r in rows if r["side"] == "torch-rechub")
    text = table(rows, roofline_info)
    other_gemms = (f", torch {roofline_info['torch_gflops']:.0f}" if "torch_gflops" in roofline_info
                  else "")
    if "tensorflow_bfloat16_gflops" in roofline_info:
        other_gemms += (f", TensorFlow bfloat16 {roofline_info['tensorflow_bfloat16_gflops']:.0f} "
                       "(the roofline of the mixed_bfloat16 rows)")
    print(f"\nGEMM roofline (4096^3 fp32, median of {args.rounds} rounds): TensorFlow "
          f"{roofline:.0f} GFLOP/s{other_gemms}; load average {info['load_average_1m_start']} at "
          f"the start, {info['load_average_1m']} at the end\n")
    print(text)

    reporting.save_json(args.output_json, {"machine": info, "args": vars(args), "rows": rows})
    torch_note = (f"torch {info['torch']['torch']}, torch-rechub {info['torch']['torch-rechub']}"
                  if "torch" in info else "torch side not run")
    reporting.append_section(
        args.results_md, "Training throughput",
        f"`benchmarks/train_throughput.py {' '.join(argv or sys.argv[1:])}` on "
        f"{reporting.machine_line(info)}, {torch_note}; {args.threads or 'default'} intra-op "
        f"threads on both sides. Batch {args.batch_size}, Adam, data in memory; {args.rounds} "
        f"interleaved rounds of {args.steps} steps per model after {args.warmup} warm-up steps, "
        f"median of the rounds. GEMM roofline {roofline:.0f} GFLOP/s (4096^3 fp32 matmul in TF, "
        f"once per round, median{other_gemms.replace(', torch', '; torch')}). Load average "
        f"{info['load_average_1m_start']} at the start, {info['load_average_1m']} at the end: "
        f"the machine was shared with other jobs, so absolute figures are noisy; the same-run "
        f"ratios are the figures to read. Devices: {info['devices']}.\n\n{text}", info["date"])


if __name__ == "__main__":
    main()
