"""Quality of every model with the same budget: AUC and logloss per scenario x task.

For each dataset the data components run once (the real local pipeline up to
Transform, cached across invocations); then every model spec in specs/models/
is trained with the same input pipeline, epochs, batch size and early stopping
on the eval split, for several seeds, and scored on the eval split per
(scenario, task). On synthetic data the oracle AUC (from each row's true
probability, on the same eval rows) gives the gap to the best possible.

    .venv/bin/python benchmarks/model_quality.py [--datasets synthetic census]
        [--models mmoe star ...] [--seeds 0 1 2] [--epochs 6]

Prints the tables and appends them, with the machine and date, to benchmarks/RESULTS.md.
"""

import argparse
import gzip
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from sklearn.metrics import log_loss, roc_auc_score  # noqa: E402

import reporting  # noqa: E402
from models import data, factory, features  # noqa: E402
from models.optimizers import adam  # noqa: E402
from models.training import scenario_loss_weights  # noqa: E402
from pipeline import configs, local_runner, report, specs  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH_DIR, "RESULTS.md")
# Where the data components run (cached across invocations); MSMT_BENCHMARK_DIR moves it
# (e.g. to keep two benchmarks from sharing one pipeline root).
WORK_DIR = os.environ.get("MSMT_BENCHMARK_DIR",
                          os.path.join(specs.REPO_DIR, "msmt_runs", "benchmarks"))


def transformed_data(dataset: str, rows: int):
    """Runs the local pipeline (selector none) once and returns its run result."""
    spec = specs.load_dataset_spec(dataset)
    if dataset == "synthetic":
        from pipeline.cli import ensure_synthetic_data
        ensure_synthetic_data(spec, rows, seed=0)
    config = configs.PipelineConfig(dataset=spec, model=specs.load_model_spec("mmoe"),
                                    output_dir=WORK_DIR, selector="none")
    local_runner.run(config)
    return spec, report.load_run(config.metadata_path, spec)


def oracle_on_eval(spec, run, scenario_names):
    """Oracle AUC per (scenario, task) on the eval rows, from their true probabilities."""
    truth_dir = os.path.dirname(spec.files[0].path)
    if not os.path.exists(os.path.join(truth_dir, "ground_truth.json")):
        return None
    with gzip.open(spec.files[0].path, "rt") as f:
        table = pd.read_csv(f, usecols=["row_id", "p_click", "p_conversion"]).set_index("row_id")
    files = tf.io.gfile.glob(os.path.join(run.uri("FileBasedExampleGen.examples"), "Split-eval", "*"))
    rows = []
    for record in tf.data.TFRecordDataset(files, "GZIP"):
        example = tf.train.Example.FromString(record.numpy()).features.feature
        key = "/".join(example[c].bytes_list.value[0].decode() for c in spec.scenario_columns)
        rows.append((example["row_id"].int64_list.value[0], key,
                     example["click"].int64_list.value[0], example["conversion"].int64_list.value[0]))
    frame = pd.DataFrame(rows, columns=["row_id", "scenario", "click", "conversion"]).join(
        table, on="row_id")
    oracle = {}
    for scenario in list(scenario_names) + ["overall"]:
        part = frame if scenario == "overall" else frame[frame.scenario == scenario]
        for task in ("click", "conversion"):
            oracle[(scenario, task)] = roc_auc_score(part[task], part[f"p_{task}"])
    return oracle


def train_and_score(spec, run, model_spec, seed, epochs, selection=None):
    """``(metrics per (scenario, task), seconds, parameters)``; ``selection`` (a
    ``Selection``) is applied as the Trainer applies it."""
    tft_output = tft.TFTransformOutput(run.uri("Transform.transform_graph"))
    examples = run.uri("Transform.transformed_examples")
    train_files = data.transformed_files(examples, "train")
    eval_files = data.transformed_files(examples, "eval")
    names = data.scenario_names(tft_output)
    counts = data.count_scenarios(data.make_dataset(train_files, tft_output, spec, 8192), len(names))
    info = data.data_info(tft_output, spec, counts)
    if selection is not None:
        from models.training import selected_data_info
        info = selected_data_info(info, selection)
    model_spec = model_spec.with_training(seed=seed, epochs=epochs)
    training = model_spec.training_dict
    weights = scenario_loss_weights(training["scenario_loss_weights"], info.scenario_prior)
    batch = training["batch_size"]
    keras.utils.set_random_seed(seed)
    train_ds = data.make_dataset(train_files, tft_output, spec, batch, shuffle=True, seed=seed,
                                 scenario_weights=weights)
    eval_ds = data.make_dataset(eval_files, tft_output, spec, batch, scenario_weights=weights)
    start = time.time()
    with tempfile_dir() as log_dir:
        model_spec = factory.prepare_spec(model_spec, info, train_ds, eval_ds, log_dir)
    model = factory.build_model(model_spec, info)
    model.compile(optimizer=adam(training["learning_rate"]),
                  loss={t: keras.losses.BinaryCrossentropy() for t in spec.task_names})
    model.fit(train_ds, validation_data=eval_ds, epochs=epochs, verbose=0, callbacks=[
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=training["early_stopping_patience"],
                                      restore_best_weights=True)])
    seconds = time.time() - start
    scored = data.make_dataset(eval_files, tft_output, spec, 4096)
    predictions = {t: [] for t in spec.task_names}
    labels = {t: [] for t in spec.task_names}
    scenario_ids = []
    for x, y in scored:
        out = model(x, training=False)
        scenario_ids.append(x[features.SCENARIO_ID].numpy())
        for t in spec.task_names:
            predictions[t].append(out[t].numpy()[:, 0])
            labels[t].append(y[t].numpy()[:, 0])
    scenario_ids = np.concatenate(scenario_ids)
    metrics = {}
    for t in spec.task_names:
        p, y = np.concatenate(predictions[t]), np.concatenate(labels[t])
        for s, name in [(None, "overall")] + list(enumerate(names)):
            keep = np.ones_like(y, bool) if s is None else scenario_ids == s
            if keep.sum() == 0 or len(set(y[keep])) < 2:
                continue
            metrics[(name, t)] = (roc_auc_score(y[keep], p[keep]),
                                  log_loss(y[keep], np.clip(p[keep], 1e-7, 1 - 1e-7), labels=[0, 1]))
    return metrics, seconds, model.count_params()


class tempfile_dir:
    def __enter__(self):
        import tempfile
        self.path = tempfile.mkdtemp(prefix="msmt-bench-")
        return self.path

    def __exit__(self, *exc):
        import shutil
        shutil.rmtree(self.path, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "census"])
    parser.add_argument("--models", nargs="+", help="model spec names (default: all in specs/models)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=50_000, help="synthetic rows")
    parser.add_argument("--precisions", nargs="+", default=None, choices=specs.PRECISIONS,
                        help="train each model under each of these dtype policies "
                             "(default: the model spec's training.precision)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    model_names = args.models or sorted(f[:-5] for f in os.listdir(specs.MODEL_SPEC_DIR)
                                        if f.endswith(".yaml"))
    sections = []
    for dataset in args.datasets:
        spec, run = transformed_data(dataset, args.rows)
        names = data.scenario_names(tft.TFTransformOutput(run.uri("Transform.transform_graph")))
        oracle = oracle_on_eval(spec, run, names)
        rows, summary = [], []
        for name, precision in [(n, p) for n in model_names for p in args.precisions or [None]]:
            model_spec = specs.load_model_spec(name)
            if model_spec.architecture not in factory.ARCHITECTURES:
                print(f"skipping {name}: architecture {model_spec.architecture} not registered")
                continue
            if precision:
                model_spec = model_spec.with_training(precision=precision)
                name = f"{name} ({precision})"
            per_seed, seconds = [], []
            for seed in args.seeds:
                metrics, took, params = train_and_score(spec, run, model_spec, seed, args.epochs)
                per_seed.append(metrics)
                seconds.append(took)
                print(f"[{dataset}] {name} seed {seed}: overall " + ", ".join(
                    f"{t} AUC {metrics[('overall', t)][0]:.4f}" for t in spec.task_names)
                    + f" ({took:.0f} s)", flush=True)
            for cell in per_seed[0]:
                aucs = [m[cell][0] for m in per_seed if cell in m]
                losses = [m[cell][1] for m in per_seed if cell in m]
                row = {"model": name, "scenario": cell[0], "task": cell[1],
                       "AUC": np.mean(aucs), "AUC sd": np.std(aucs), "logloss": np.mean(losses)}
                if oracle is not None:
                    row["oracle AUC"] = oracle[cell]
                    row["gap"] = oracle[cell] - row["AUC"]
                rows.append(row)
            cells = [c for c in per_seed[0] if c[0] != "overall"]
            mean_auc = np.mean([np.mean([m[c][0] for m in per_seed]) for c in cells])
            summary.append({"model": name, "mean AUC over scenario x task": mean_auc,
                            "overall " + " / ".join(spec.task_names) + " AUC": " / ".join(
                                f"{np.mean([m[('overall', t)][0] for m in per_seed]):.4f}"
                                for t in spec.task_names),
                            "parameters": params, "train s (mean)": np.mean(seconds)})
        detail = pd.DataFrame(rows)
        table = pd.DataFrame(summary).sort_values("mean AUC over scenario x task", ascending=False)
        print(table.to_string(index=False))
        sections.append((dataset, table, detail))
    if not args.no_write:
        write_results(sections, args)


def write_results(sections, args):
    machine = reporting.machine()
    lines = [f"`benchmarks/model_quality.py --seeds {' '.join(map(str, args.seeds))} "
             f"--epochs {args.epochs}` on {reporting.machine_line(machine)}. Same input "
             "pipeline, batch size and epochs for every model, early stopping on the eval "
             "split, scored on the eval split; mean over seeds.\n"]
    for dataset, table, detail in sections:
        lines.append(f"\n### {dataset}\n\n" + table.to_markdown(index=False, floatfmt=".4f") + "\n")
        lines.append(f"\n<details><summary>{dataset}: per scenario x task</summary>\n\n"
                     + detail.to_markdown(index=False, floatfmt=".4f") + "\n\n</details>\n")
    reporting.append_section(RESULTS, "Model quality", "".join(lines), machine["date"])
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
