"""Training-step throughput on the CPU: our models vs torch-rechub's, next to a GEMM roofline.

One run, one machine, the same in-memory data for both sides (the issue's shape): 79
categorical fields (16 vocabularies of 10 to 2,000 values, 63 bucketized numericals of 21
ids), embedding 16, 2 tasks, batch 2048, Adam; MMoE with 8 experts [256, 128] and towers
[64], PLE with 1 level of 4 shared + 4 specific experts, Shared-Bottom [256, 128]. Ours are
built by ``models.factory.build_model`` from a ``ModelSpec`` (the real model library) and
trained by Keras ``fit``; torch-rechub's run in ``benchmarks/.venv-torch``
(``benchmarks/setup_torch_env.sh``) as a subprocess (``benchmarks/torch_side.py``) that
reads the same arrays and prints JSON.

torch-rechub's models are multi-task only, so the side-by-side uses 1 scenario; ours are
also measured at 5 scenarios (a gate and tower per scenario x task).

FLOPs: the dense matmul FLOPs of one forward pass, counted from the traced forward graph
of each model (``matmul_flops``: ``2 M K N`` per MatMul, ``2 x`` the product of all index
sizes per two-operand Einsum, ``2 x`` output size x kernel window x input channels per
convolution), times 3 for forward + backward (the backward pass is two matmuls per forward
matmul). Embedding lookups, element-wise ops and the optimizer are not counted. The
torch side counts the same with ``torch.utils.flop_counter`` (forward + backward measured).
The roofline is a 4096^3 fp32 ``tf.linalg.matmul`` timed in the same run.

    .venv/bin/python benchmarks/train_throughput.py            # everything, ~10 min
    .venv/bin/python benchmarks/train_throughput.py --models mmoe --no-torch --steps 10
    .venv/bin/python benchmarks/train_throughput.py --strategy mirrored   # on GPUs, if any

Prints a table and writes ``benchmarks/results/train_throughput.json`` and a section of
``benchmarks/RESULTS.md``.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
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


def _static(shape) -> List[int]:
    return [int(d) for d in shape]


def matmul_flops(graph) -> Dict[str, int]:
    """Dense matmul FLOPs of a forward graph, per op type (see the module docstring)."""
    import tensorflow as tf  # noqa: F401
    flops: Dict[str, int] = {}

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


def forward_flops(model, batch_size: int) -> Dict[str, int]:
    import tensorflow as tf
    specs = {name: tf.TensorSpec([batch_size], tf.int64, name=name) for name in model.input_names}
    graph = tf.function(lambda x: model(x, training=True)).get_concrete_function(specs).graph
    return matmul_flops(graph)


# --------------------------------------------------------------------------- our side


def configure_threads(intra: int, inter: int) -> None:
    import tensorflow as tf
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def gemm_roofline(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an ``n x n x n`` fp32 matmul in TensorFlow, best of ``repeats``."""
    import tensorflow as tf
    a = tf.random.normal([n, n])
    b = tf.random.normal([n, n])
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))
    matmul(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def build_ours(architecture: str, num_scenarios: int, batch_size: int, hparams: Dict,
               learning_rate: float = 1e-3, jit_compile: bool = False,
               steps_per_execution: int = 1):
    import tf_keras as keras
    from models import factory
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
                     training=())
    model = factory.build_model(spec, info)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
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
    """A Keras callback recording each training batch's wall time after ``warmup`` batches."""
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


def time_ours(architecture: str, num_scenarios: int, data, batch_size: int, steps: int,
              warmup: int, strategy=None, **compile_options) -> Dict:
    import tensorflow as tf
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model, names = build_ours(architecture, num_scenarios, batch_size,
                                  MODELS[architecture], **compile_options)
    flops = forward_flops(model, batch_size)
    dataset = in_memory_dataset(data, names, batch_size)
    timer = step_timer(warmup)
    spe = compile_options.get("steps_per_execution", 1)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=(warmup + steps) * spe, verbose=0,
              callbacks=[timer])
    total = time.perf_counter() - start
    step_s = float(np.median(timer.times)) / spe
    forward = sum(flops.values()) / batch_size
    return {"model": architecture, "side": "ours", "scenarios": num_scenarios,
            "examples_per_s": batch_size / step_s, "step_ms": 1e3 * step_s,
            "train_flops_per_example": 3 * forward, "forward_flops_by_op": flops,
            "gflops_per_s": 3 * forward * batch_size / step_s / 1e9,
            "parameters": int(model.count_params()), "wall_s": total,
            "options": {k: v for k, v in compile_options.items()}}



# --------------------------------------------------------------------------- torch side


def time_torch(data_file: str, models, batch_size: int, steps: int, warmup: int,
               threads: int, python: str) -> List[Dict]:
    command = [python, os.path.join(HERE, "torch_side.py"), "--data", data_file,
               "--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup),
               "--threads", str(threads), "--models", *models]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"torch side failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def machine() -> Dict:
    import tensorflow as tf
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                     if line.startswith("model name"))
        flags = "AVX-512" if "avx512f" in info else ("AVX2" if "avx2" in info else "")
    except (OSError, StopIteration):
        model = platform.processor()
    load = os.getloadavg()
    return {"cpu": model, "isa": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "load_average_1m": round(load[0], 2),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def table(rows: List[Dict], roofline: float) -> str:
    torch_rate = {r["model"]: r["examples_per_s"] for r in rows if r["side"] == "torch-rechub"}
    lines = ["| model | side | scenarios | examples/s | step ms | train MFLOP/example | "
             "GFLOP/s | % of GEMM roofline | ours / torch-rechub |",
             "|:--|:--|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        ratio = ""
        policy = r.get("policy", "float32")
        if (r["side"] == "ours" and r["scenarios"] == 1 and r["model"] in torch_rate
                and policy == "float32"):
            ratio = f"{r['examples_per_s'] / torch_rate[r['model']]:.2f}x"
        name = r["model"] if policy == "float32" else f"{r['model']} ({policy})"
        lines.append(f"| {name} | {r['side']} | {r['scenarios']} | "
                     f"{r['examples_per_s']:,.0f} | {r['step_ms']:.1f} | "
                     f"{r['train_flops_per_example'] / 1e6:.2f} | {r['gflops_per_s']:.0f} | "
                     f"{100 * r['gflops_per_s'] / roofline:.0f}% | {ratio} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--scenarios", type=int, nargs="+", default=[1, 5],
                        help="scenario counts for our models (1 is the torch-rechub comparison)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for both sides (0: all cores)")
    parser.add_argument("--inter-op-threads", type=int, default=0)
    parser.add_argument("--jit-compile", action="store_true", help="XLA (measured slower here)")
    parser.add_argument("--steps-per-execution", type=int, default=1)
    parser.add_argument("--policies", nargs="+", default=["float32"],
                        help="Keras dtype policies to time each model under, e.g. float32 "
                             "mixed_bfloat16 (measured: see RESULTS.md)")
    parser.add_argument("--strategy", choices=["default", "mirrored"], default="default",
                        help="mirrored: tf.distribute.MirroredStrategy over the visible GPUs")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-python", default=TORCH_PYTHON)
    parser.add_argument("--output-json", default=os.path.join(HERE, "results",
                                                              "train_throughput.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"),
                        help="append a section here ('' to skip)")
    args = parser.parse_args(argv)

    import tensorflow as tf
    import tf_keras as keras
    configure_threads(args.threads, args.inter_op_threads)
    strategy = None
    if args.strategy == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)")

    roofline = gemm_roofline()
    print(f"GEMM roofline (4096^3 fp32 matmul, TF): {roofline:.0f} GFLOP/s")
    rows: List[Dict] = []
    options = dict(jit_compile=args.jit_compile, steps_per_execution=args.steps_per_execution)
    batches = 8
    with tempfile.TemporaryDirectory() as tmp:
        for num_scenarios in args.scenarios:
            data = make_data(batches * args.batch_size, num_scenarios)
            for architecture in args.models:
                for policy in args.policies:
                    keras.mixed_precision.set_global_policy(policy)
                    row = time_ours(architecture, num_scenarios, data, args.batch_size,
                                    args.steps, args.warmup, strategy, **options)
                    keras.mixed_precision.set_global_policy("float32")
                    row["policy"] = policy
                    rows.append(row)
                    print(f"ours {architecture:16s} S={num_scenarios} {policy}: "
                          f"{row['examples_per_s']:9,.0f} examples/s, "
                          f"{row['gflops_per_s']:5.0f} GFLOP/s", flush=True)
            if num_scenarios == 1 and not args.no_torch:
                wanted = [m for m in TORCH_MODELS if m in args.models]
                if wanted and os.path.exists(args.torch_python):
                    path = os.path.join(tmp, "data.npz")
                    np.savez(path, **data)
                    for row in time_torch(path, wanted, args.batch_size, args.steps, args.warmup,
                                          args.threads, args.torch_python):
                        rows.append(row)
                        print(f"torch-rechub {row['model']:8s} S=1: "
                              f"{row['examples_per_s']:9,.0f} examples/s, "
                              f"{row['gflops_per_s']:5.0f} GFLOP/s", flush=True)
                elif wanted:
                    print(f"no {args.torch_python}: run benchmarks/setup_torch_env.sh "
                          "for the torch-rechub side")
        roofline_after = gemm_roofline()
    info = machine()
    info["gemm_roofline_gflops"] = {"before": roofline, "after": roofline_after}
    roofline = max(roofline, roofline_after)
    if any(r["side"] == "torch-rechub" for r in rows):
        info["torch"] = next(r["versions"] for r in rows if r["side"] == "torch-rechub")
    text = table(rows, roofline)
    print(f"\nGEMM roofline {roofline:.0f} GFLOP/s (before {info['gemm_roofline_gflops']['before']:.0f},"
          f" after {roofline_after:.0f}); load average {info['load_average_1m']}\n")
    print(text)

    os.makedirs(os.path.dirname(args.output_json), exist_ok=True)
    with open(args.output_json, "w") as f:
        json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=1)
    if args.results_md:
        torch_note = (f"torch {info['torch']['torch']}, torch-rechub {info['torch']['torch-rechub']}"
                      if "torch" in info else "torch side not run")
        with open(args.results_md, "a") as f:
            f.write(f"\n## Training throughput ({info['date']})\n"
                    f"`benchmarks/train_throughput.py {' '.join(argv or sys.argv[1:])}` on "
                    f"{info['cpu']} ({info['cores']} cores, {info['isa']}), TF {info['tensorflow']}, "
                    f"{torch_note}. Batch {args.batch_size}, Adam, data in memory, median of "
                    f"{args.steps} steps after {args.warmup} warm-up steps. GEMM roofline "
                    f"{roofline:.0f} GFLOP/s (4096^3 fp32 matmul in TF, same run). Load average "
                    f"at the end {info['load_average_1m']}: the machine was shared with other "
                    f"jobs, so absolute figures are noisy; the same-run ratios are the figures "
                    f"to read. No GPU on this machine (`--strategy mirrored` uses GPUs where "
                    f"there are).\n\n{text}\n")


if __name__ == "__main__":
    main()
