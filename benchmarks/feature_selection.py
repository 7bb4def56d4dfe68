"""Feature selection: every selector's fields against the planted ones, its time, and AUC.

For each dataset the data components run once (the real local pipeline up to
Transform, cached across invocations; ``model_quality.transformed_data``). Then
every method of the FeatureSelector runs on Transform's train split exactly as
the executor runs it (``executor.run_method``), and:

- on synthetic data: precision, recall and F1 of the selected fields of every
  (scenario, task) against ``ground_truth.json``'s ``relevant_fields`` (the fields
  that move that task's probability in that scenario);
- the seconds the method took;
- AUC per (scenario, task) on the eval split of the same model trained with the
  selection applied as the Trainer applies it (``model_quality.train_and_score``),
  next to no selection; parameters of each model;
- the parameters and the model's time per batch saved by dropping the fields no
  path uses (``training.selection_savings``, as the Trainer logs it).

    .venv/bin/python benchmarks/feature_selection.py [--datasets synthetic census]
        [--methods multisfs multifs mi ...] [--model mmoe] [--seeds 0] [--epochs 4]
        [--param multisfs.compress_ratio=0.3 ...]

Prints the tables, saves them as JSON (``--json``, by default beside RESULTS.md; a
dataset this run did not measure keeps its last run's entry) and appends them, with the
machine and date, to benchmarks/RESULTS.md; ``--no-write`` only prints.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

import model_quality  # noqa: E402
import reporting  # noqa: E402
from components.feature_selector import executor  # noqa: E402
from components.feature_selector.artifact import vocabulary_fingerprint  # noqa: E402
from models import data  # noqa: E402
from pipeline import configs, specs  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH_DIR, "RESULTS.md")
JSON_OUT = os.path.join(BENCH_DIR, "feature_selection.json")


def relevant_fields(truth_path: str):
    """``{(scenario, task): set of fields}`` from ground_truth.json (scenario = its own name)."""
    with open(truth_path) as f:
        truth = json.load(f)
    return {(s, t): set(fields) for s, per_task in truth["relevant_fields"].items()
            for t, fields in per_task.items()}


def precision_recall(selection, truth):
    """Rows of precision, recall, F1 per (scenario, task) against the planted fields."""
    rows = []
    for scenario in selection.scenarios:
        own = scenario.split(configs_separator())[-1]  # "ch0/s0" -> "s0"
        for task in selection.tasks:
            if (own, task) not in truth:
                continue
            chosen, planted = set(selection.selected(scenario, task)), truth[(own, task)]
            hit = len(chosen & planted)
            p = hit / len(chosen) if chosen else 0.0
            r = hit / len(planted) if planted else 1.0
            rows.append({"scenario": scenario, "task": task, "selected": len(chosen),
                         "relevant": len(planted), "precision": p, "recall": r,
                         "F1": 0.0 if p + r == 0 else 2 * p * r / (p + r)})
    return rows


def configs_separator():
    from models import features
    return features.SCENARIO_SEPARATOR


def select(method, spec, run, params):
    tft_output = tft.TFTransformOutput(run.uri("Transform.transform_graph"))
    own, method_params = executor.split_params(method, params)
    batches_fn = executor.make_batches_fn(run.uri("Transform.transformed_examples"), tft_output,
                                          spec, own["batch_size"],
                                          int(method_params.get("seed", 0)))
    scenarios = data.scenario_names(tft_output)
    vocab_sizes = data.field_vocab_sizes(tft_output, spec)
    result, seconds = executor.run_method(method, batches_fn, vocab_sizes, len(scenarios),
                                          len(spec.task_names), method_params)
    return executor.to_selection(result, method, seconds, scenarios, list(spec.task_names),
                                 list(spec.field_names), vocab_sizes,
                                 vocabulary_fingerprint(run.uri("Transform.transform_graph")))


def savings_of(spec, run, model_spec, selection):
    """Parameters and model ms per batch saved vs the same model on every field."""
    from models import factory
    from models.training import selected_data_info, selection_savings
    tft_output = tft.TFTransformOutput(run.uri("Transform.transform_graph"))
    files = data.transformed_files(run.uri("Transform.transformed_examples"), "eval")
    counts = data.count_scenarios(data.make_dataset(files, tft_output, spec, 8192),
                                  len(selection.scenarios))
    info = selected_data_info(data.data_info(tft_output, spec, counts), selection)
    model = factory.build_model(model_spec, info)
    batch = model_spec.training_dict["batch_size"]
    saved = selection_savings(model_spec, model, info, tft_output, spec,
                              data.make_dataset(files, tft_output, spec, batch), repeats=30)
    return {"parameters saved": saved["parameters_saved"],
            f"model ms/batch {batch} (all fields)": saved["model_ms_without_selection"],
            f"model ms/batch {batch}": saved["model_ms"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "census"])
    parser.add_argument("--methods", nargs="+", default=list(executor.METHODS))
    parser.add_argument("--model", default="mmoe", help="model spec trained with each selection")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rows", type=int, default=50_000, help="synthetic rows")
    parser.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                        help="a selector parameter (YAML value), repeatable")
    parser.add_argument("--no-auc", action="store_true", help="selection quality and time only")
    parser.add_argument("--json", default=JSON_OUT, help="where the JSON report goes")
    parser.add_argument("--no-write", action="store_true",
                        help="print only: neither the JSON report nor RESULTS.md")
    args = parser.parse_args(argv)
    method_params = {m: {} for m in args.methods}
    for item in args.param:
        method, _, pair = item.partition(".")
        method_params.setdefault(method, {}).update(dict(configs.parse_selector_params([pair])))
    for method in args.methods:
        configs.check_selector_params(method, method_params[method], "--param")

    model_spec = specs.load_model_spec(args.model)
    machine = reporting.machine()
    report = {"date": machine["date"], "machine": reporting.machine_line(machine),
              "args": vars(args), "load_before": os.getloadavg()[0], "datasets": {}}
    for dataset in args.datasets:
        spec, run = model_quality.transformed_data(dataset, args.rows)
        truth_path = os.path.join(os.path.dirname(spec.files[0].path), "ground_truth.json")
        truth = relevant_fields(truth_path) if os.path.exists(truth_path) else None
        summary, quality, aucs = [], [], []
        baseline_auc = None
        for method in args.methods:
            selection = select(method, spec, run, method_params[method])
            row = {"method": method, "seconds": selection.seconds,
                   "fields used": int(selection.union_mask.sum()),
                   "mean fields per path": float(selection.mask.sum(-1).mean())}
            for key in ("saliency_seconds", "gnn_seconds", "search_seconds"):
                if key in selection.diagnostics:
                    row[key.replace("_", " ")] = float(selection.diagnostics[key])
            if truth is not None:
                cells = precision_recall(selection, truth)
                quality += [{"method": method, **c} for c in cells]
                for key in ("precision", "recall", "F1"):
                    row[key] = float(np.mean([c[key] for c in cells]))
            if method != "none":
                row.update(savings_of(spec, run, model_spec, selection))
            print(f"[{dataset}] {method}: {json.dumps(row, default=float)}", flush=True)
            if not args.no_auc:
                per_seed, params = [], None
                for seed in args.seeds:
                    metrics, _, params = model_quality.train_and_score(
                        spec, run, model_spec, seed, args.epochs,
                        selection=None if method == "none" else selection)
                    per_seed.append(metrics)
                cells = [c for c in per_seed[0] if c[0] != "overall"]
                for cell in per_seed[0]:
                    aucs.append({"method": method, "scenario": cell[0], "task": cell[1],
                                 "AUC": float(np.mean([m[cell][0] for m in per_seed]))})
                row["mean AUC"] = float(np.mean([np.mean([m[c][0] for m in per_seed])
                                                 for c in cells]))
                row["parameters"] = int(params)
                if method == "none":
                    baseline_auc = row["mean AUC"]
                print(f"[{dataset}] {method}: mean AUC over scenario x task {row['mean AUC']:.4f}",
                      flush=True)
            summary.append(row)
        if baseline_auc is not None:
            for row in summary:
                row["AUC vs none"] = row["mean AUC"] - baseline_auc
        report["datasets"][dataset] = {"run": {k: report[k] for k in RUN_KEYS},
                                       "summary": summary, "quality": quality, "auc": aucs}
        print(pd.DataFrame(summary).to_string(index=False))
        if not args.no_write:  # After every dataset: a later one may fail.
            write_json(report, args.json)
    if not args.no_write:
        write_results(report)


RUN_KEYS = ("date", "machine", "args", "load_before")


def write_json(report, path: str) -> None:
    """Writes ``report`` to ``path``, keeping the datasets of the file's earlier runs that
    this run did not measure (each dataset's entry says which run it came from)."""
    earlier = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                previous = json.load(f)
            earlier = {name: {"run": {k: previous.get(k) for k in RUN_KEYS}, **entry}
                       for name, entry in previous.get("datasets", {}).items()}
        except (OSError, ValueError) as error:
            print(f"{path}: not valid JSON ({error}); rewritten with this run only")
    merged = {**report, "datasets": {**earlier, **report["datasets"]}}
    with open(path, "w") as f:
        json.dump(merged, f, indent=1, default=float)


def write_results(report):
    args = report["args"]
    lines = [f"`benchmarks/feature_selection.py --methods {' '.join(args['methods'])} --model "
             f"{args['model']} --seeds {' '.join(map(str, args['seeds']))} --epochs "
             f"{args['epochs']}` on {report['machine']}; load average (1 min) "
             f"{report['load_before']:.1f} as the run started (other work on the machine "
             "inflates the seconds). Selection on Transform's train split as the "
             "FeatureSelector runs it; precision/recall/F1 of each (scenario, task)'s selected "
             "fields against the planted `relevant_fields` of `ground_truth.json`, averaged over "
             "scenario x task; "
             "AUC on the eval split, mean over scenario x task (per cell below), the same model "
             "trained with the selection applied as the Trainer applies it.\n"]
    for dataset, result in report["datasets"].items():
        table = pd.DataFrame(result["summary"])
        lines.append(f"\n### {dataset}\n\n" + table.to_markdown(index=False, floatfmt=".4f") + "\n")
        if result["auc"]:
            auc = pd.DataFrame(result["auc"]).pivot_table(
                index=["scenario", "task"], columns="method", values="AUC").reset_index()
            lines.append(f"\n<details><summary>{dataset}: AUC per scenario x task</summary>\n\n"
                         + auc.to_markdown(index=False, floatfmt=".4f") + "\n\n</details>\n")
        if result["quality"]:
            quality = pd.DataFrame(result["quality"])
            lines.append(f"\n<details><summary>{dataset}: precision / recall / F1 per scenario x "
                         "task</summary>\n\n" + quality.to_markdown(index=False, floatfmt=".3f")
                         + "\n\n</details>\n")
    reporting.append_section(RESULTS, "Feature selection", "\n" + "".join(lines), report["date"])
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
