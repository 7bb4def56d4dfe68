"""The torch-rechub side of ``benchmarks/train_throughput.py`` (runs in benchmarks/.venv-torch).

A server driven by the parent over stdin/stdout, one JSON object a line, so that the
parent can interleave torch-rechub's timing rounds with its own (slow drifts in the
machine's load then hit both sides alike):

- ``{"cmd": "build", "models": [...], "precision": p}``: builds torch-rechub 0.9.0's
  SharedBottom, MMOE and PLE at the parent's widths on the arrays the parent wrote
  (``field_ids`` ``[N, 79]``, ``labels`` ``[N, 2]``, ``vocab_sizes``), each with its own
  ``MTLTrainer`` (Adam, lr 1e-3, no weight decay, the same optimizer as ours), runs
  ``warmup`` steps, counts FLOPs. ``precision`` is ``float32`` (the default) or
  ``mixed_bfloat16``: the model's forward pass runs under ``torch.autocast("cpu",
  torch.bfloat16)`` and returns float32 probabilities, so the loss, the gradients' dtype
  rules and Adam are autocast's usual mixed precision (torch-rechub's trainer has no
  precision option; this is the standard way to add it around a model).
- ``{"cmd": "round", "model": m, "precision": p, "steps": n}``: ``n`` steps of the model's real
  ``MTLTrainer.train_one_epoch`` (``model(x)``, per-task BCE, the regularisation pass,
  ``zero_grad``, ``backward``, ``optimizer.step``, the ``.item()`` loss bookkeeping) over
  pre-built in-memory batches; replies with the per-step wall times (each step is the time
  between two consecutive batches the trainer asks for).
- ``{"cmd": "gemm", "n": 4096}``: seconds of one ``n^3`` fp32 ``torch.matmul``.
- ``{"cmd": "quit"}``.

torch-rechub's MLPs always have BatchNorm after each linear layer (not configurable); our
models have none. FLOPs are those ``torch.utils.flop_counter.FlopCounterMode`` counts for
one forward + backward step (matmuls only).
"""

import argparse
import io
import json
import sys
import tempfile
import time
from contextlib import redirect_stdout
from importlib.metadata import version

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torch_rechub.basic.features import SparseFeature
from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom
from torch_rechub.trainers import MTLTrainer

EMBEDDING_DIM = 16
EXPERT = {"dims": [256, 128]}
TOWERS = [{"dims": [64]}, {"dims": [64]}]
TASK_TYPES = ["classification", "classification"]
PRECISIONS = ("float32", "mixed_bfloat16")


def build(name, features):
    if name == "shared_bottom":
        return SharedBottom(features, TASK_TYPES, bottom_params=EXPERT, tower_params_list=TOWERS)
    if name == "mmoe":
        return MMOE(features, TASK_TYPES, n_expert=8, expert_params=EXPERT,
                    tower_params_list=TOWERS)
    if name == "ple":
        return PLE(features, TASK_TYPES, n_level=1, n_expert_specific=4, n_expert_shared=4,
                   expert_params=EXPERT, tower_params_list=TOWERS)
    raise ValueError(f"unknown model {name!r}")


def with_bfloat16_autocast(model):
    """The model's forward pass under CPU autocast to bfloat16, float32 probabilities out."""
    forward = model.forward

    def autocast_forward(*args, **kwargs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs).float()

    model.forward = autocast_forward
    return model


class TimedBatches:
    """An iterable of ``n`` batches recording when the trainer asks for each one."""

    def __init__(self, batches, n):
        self.batches, self.n, self.stamps = batches, n, []

    def __len__(self):
        return self.n

    def __iter__(self):
        for i in range(self.n):
            self.stamps.append(time.perf_counter())
            yield self.batches[i % len(self.batches)]


def run_steps(trainer, batches, n):
    """``n`` steps of ``trainer.train_one_epoch``; per-step wall seconds."""
    timed = TimedBatches(batches, n)
    with redirect_stdout(io.StringIO()):  # its per-epoch loss print
        trainer.train_one_epoch(timed)
    end = time.perf_counter()
    stamps = timed.stamps + [end]
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arrays = np.load(args.data)
    ids, labels = arrays["field_ids"], arrays["labels"].astype(np.float32)
    sizes = arrays["vocab_sizes"].tolist()
    names = [f"f{i:02d}" for i in range(ids.shape[1])]
    features = [SparseFeature(n, int(v), embed_dim=EMBEDDING_DIM) for n, v in zip(names, sizes)]
    b = args.batch_size
    batches = [({n: torch.from_numpy(ids[i:i + b, j].copy()) for j, n in enumerate(names)},
                torch.from_numpy(labels[i:i + b].copy()))
               for i in range(0, len(ids) - b + 1, b)]
    trainers, rows = {}, {}
    tmp = tempfile.mkdtemp()
    versions = {"torch": torch.__version__, "torch-rechub": version("torch-rechub"),
                "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads()}

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "build":
            precision = command.get("precision", "float32")
            if precision not in PRECISIONS:
                raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
            for name in command["models"]:
                model = build(name, features)
                if precision == "mixed_bfloat16":
                    model = with_bfloat16_autocast(model)
                trainer = MTLTrainer(model, TASK_TYPES,
                                     optimizer_params={"lr": 1e-3, "weight_decay": 0.0},
                                     n_epoch=1, device="cpu", model_path=tmp)
                counter = FlopCounterMode(display=False)
                with counter:
                    run_steps(trainer, batches, 1)
                run_steps(trainer, batches, args.warmup)
                trainers[name, precision] = trainer
                rows[name, precision] = {
                    "model": name, "side": "torch-rechub", "scenarios": 1, "policy": precision,
                    "train_flops_per_example": counter.get_total_flops() / b,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "versions": versions}
            reply({"rows": {name: rows[name, precision] for name in command["models"]}})
        elif command["cmd"] == "round":
            trainer = trainers[command["model"], command.get("precision", "float32")]
            reply({"step_s": run_steps(trainer, batches, command["steps"])})
        elif command["cmd"] == "gemm":
            n = command["n"]
            x, y = torch.randn(n, n), torch.randn(n, n)
            torch.matmul(x, y)
            start = time.perf_counter()
            torch.matmul(x, y)
            reply({"seconds": time.perf_counter() - start})
        elif command["cmd"] == "quit":
            break


if __name__ == "__main__":
    main()
