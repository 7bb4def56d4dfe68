"""The torch-rechub side of ``benchmarks/train_throughput.py`` (runs in benchmarks/.venv-torch).

Trains torch-rechub 0.9.0's SharedBottom, MMOE and PLE on the arrays the parent wrote
(``field_ids`` ``[N, 79]``, ``labels`` ``[N, 2]``) the way torch-rechub's ``MTLTrainer``
does (sum of the tasks' BCE, Adam, ``loss.backward(); optimizer.step()``), at the
parent's widths, and prints one JSON list of rows on its last line. torch-rechub's MLPs
always have BatchNorm after each linear layer (not configurable); our models have none.
FLOPs are those ``torch.utils.flop_counter.FlopCounterMode`` counts for one forward +
backward step (matmuls only).
"""

import argparse
import json
import time
from importlib.metadata import version

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from torch_rechub.basic.features import SparseFeature
from torch_rechub.models.multi_task import MMOE, PLE, SharedBottom

EMBEDDING_DIM = 16
EXPERT = {"dims": [256, 128]}
TOWERS = [{"dims": [64]}, {"dims": [64]}]


def build(name, features):
    tasks = ["classification", "classification"]
    if name == "shared_bottom":
        return SharedBottom(features, tasks, bottom_params=EXPERT, tower_params_list=TOWERS)
    if name == "mmoe":
        return MMOE(features, tasks, n_expert=8, expert_params=EXPERT, tower_params_list=TOWERS)
    if name == "ple":
        return PLE(features, tasks, n_level=1, n_expert_specific=4, n_expert_shared=4,
                   expert_params=EXPERT, tower_params_list=TOWERS)
    raise ValueError(f"unknown model {name!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--models", nargs="+", default=["shared_bottom", "mmoe", "ple"])
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    arrays = np.load(args.data)
    ids, labels = arrays["field_ids"], arrays["labels"].astype(np.float32)
    sizes = (ids.max(axis=0) + 1).tolist()
    names = [f"f{i:02d}" for i in range(ids.shape[1])]
    features = [SparseFeature(n, int(v), embed_dim=EMBEDDING_DIM) for n, v in zip(names, sizes)]
    b = args.batch_size
    batches = [({n: torch.from_numpy(ids[i:i + b, j]) for j, n in enumerate(names)},
                torch.from_numpy(labels[i:i + b]))
               for i in range(0, len(ids) - b + 1, b)]
    rows = []
    for name in args.models:
        model = build(name, features)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loss_fn = torch.nn.BCELoss()

        def step(x, y):
            prediction = model(x)
            loss = sum(loss_fn(prediction[:, t], y[:, t]) for t in range(y.shape[1]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        counter = FlopCounterMode(display=False)
        with counter:
            step(*batches[0])
        times = []
        for i in range(args.warmup + args.steps):
            x, y = batches[i % len(batches)]
            start = time.perf_counter()
            step(x, y)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        step_s = float(np.median(times))
        flops = counter.get_total_flops()
        rows.append({"model": name, "side": "torch-rechub", "scenarios": 1,
                     "examples_per_s": b / step_s, "step_ms": 1e3 * step_s,
                     "train_flops_per_example": flops / b,
                     "gflops_per_s": flops / step_s / 1e9,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "versions": {"torch": torch.__version__,
                                  "torch-rechub": version("torch-rechub"),
                                  "threads": torch.get_num_threads()}})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
