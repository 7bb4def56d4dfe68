"""Seconds from a fresh process to a model's first training step, on a run's artifacts.

Each model is measured in its own Python process, as the Trainer meets it: import, read the
Transform output (``models.training.training_inputs``), build and compile, then the first
``fit`` step (the train step's trace) and the first ``evaluate`` (its trace). With
``--compare-autograph`` each model is measured again with AutoGraph's default rules, which
convert tf_keras' own code (``models/autograph.py`` adds the rule that leaves it unconverted).

    .venv/bin/msmt run --output-dir /tmp/runs
    .venv/bin/python benchmarks/startup_time.py /tmp/runs/msmt-synthetic-mmoe --compare-autograph
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PHASES = ("import", "read inputs", "build and compile", "first fit step", "first evaluate")


def measure(run_dir: str, model: str, dataset: str, autograph_default: bool) -> Dict[str, float]:
    """One fresh process's phase seconds (this script run with ``--child``)."""
    command = [sys.executable, os.path.abspath(__file__), run_dir, "--child", model,
               "--dataset", dataset] + (["--autograph-default"] if autograph_default else [])
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{model}: the measuring process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(run_dir: str, model_name: str, dataset: str, autograph_default: bool) -> None:
    """Runs in the fresh process: times each phase and prints them as one JSON line."""
    seconds: Dict[str, float] = {}
    start = time.perf_counter()
    sys.path.insert(0, os.path.dirname(HERE))
    sys.path.insert(0, HERE)
    from input_throughput import fn_args_of
    from models import factory, training
    from pipeline import specs
    if autograph_default:
        from tensorflow.python.autograph.core import config
        from models import autograph
        config.CONVERSION_RULES = tuple(r for r in config.CONVERSION_RULES
                                        if not autograph.is_tf_keras_rule(r))
    seconds["import"] = time.perf_counter() - start

    start = time.perf_counter()
    spec = specs.load_dataset_spec(dataset)
    model_spec = specs.load_model_spec(model_name)
    _, info, train_ds, eval_ds = training.training_inputs(fn_args_of(run_dir, True), spec,
                                                          model_spec)
    seconds["read inputs"] = time.perf_counter() - start

    start = time.perf_counter()
    model = factory.build_model(model_spec, info)
    training.compile_model(model, spec, model_spec.training_dict)
    seconds["build and compile"] = time.perf_counter() - start

    start = time.perf_counter()
    model.fit(train_ds.take(1), epochs=1, verbose=0)
    seconds["first fit step"] = time.perf_counter() - start

    start = time.perf_counter()
    model.evaluate(eval_ds.take(1), verbose=0)
    seconds["first evaluate"] = time.perf_counter() - start
    print(json.dumps(seconds))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a pipeline's directory under `msmt run --output-dir`")
    parser.add_argument("--models", nargs="+", default=["mmoe", "ple", "hinet"])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--repeats", type=int, default=3, help="processes per model; medians")
    parser.add_argument("--compare-autograph", action="store_true",
                        help="also measure with AutoGraph's default rules (tf_keras converted)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--autograph-default", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output-json", default=os.path.join(HERE, "results",
                                                              "startup_time.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    if args.child:
        child(run_dir, args.child, args.dataset, args.autograph_default)
        return

    variants = [("tf_keras left unconverted (models/autograph.py)", False)]
    if args.compare_autograph:
        variants.append(("AutoGraph's default rules (tf_keras converted)", True))
    rows = []
    for _ in range(args.repeats):  # Alternating, so drift hits every variant alike.
        for model in args.models:
            for label, autograph_default in variants:
                rows.append({"model": model, "autograph": label,
                             **measure(run_dir, model, args.dataset, autograph_default)})
    lines = ["| model | AutoGraph | " + " | ".join(f"{p} s" for p in PHASES) +
             " | build to first step s |", "|:--|:--|" + "--:|" * (len(PHASES) + 1)]
    summary = []
    for model in args.models:
        for label, _ in variants:
            mine = [r for r in rows if r["model"] == model and r["autograph"] == label]
            median = {p: float(np.median([r[p] for r in mine])) for p in PHASES}
            to_step = float(np.median([r["build and compile"] + r["first fit step"]
                                       for r in mine]))
            summary.append({"model": model, "autograph": label, **median,
                            "build_to_first_step": to_step})
            lines.append(f"| {model} | {label} | " + " | ".join(f"{median[p]:.2f}"
                                                               for p in PHASES) +
                         f" | {to_step:.2f} |")
    text = "\n".join(lines)
    print(text)

    sys.path.insert(0, HERE)
    import reporting
    machine = reporting.machine()
    reporting.save_json(args.output_json, {
        "date": machine["date"], "machine": machine, "run_dir": run_dir,
        "repeats": args.repeats, "rows": rows, "medians": summary})
    reporting.append_section(
        args.results_md, "Startup time",
        f"`benchmarks/startup_time.py` on `{os.path.basename(run_dir)}`: one fresh process per "
        f"measurement, medians of {args.repeats} alternating processes per row, on "
        f"{reporting.machine_line(machine)}. Load average {machine['load_average_1m']:.1f} at "
        f"the end.\n\n{text}", machine["date"])

if __name__ == "__main__":
    main()
