"""The Trainer's input pipeline and end-to-end training rate, from a run's Transform output.

Three figures, in one process, on the Trainer's own code path
(``models.training.training_inputs``: ``models.data.make_dataset`` over Transform's
transformed tf.Examples, i.e. read, shuffle, batch, parse, prefetch; the model of the
spec built by ``models.factory`` and compiled by ``models.training.compile_model``):

1. input pipeline alone: batches/s of iterating the training dataset;
2. in-memory step rate: ``model.fit`` on the first batches cached in memory;
3. real Trainer rate: ``model.fit`` on the training dataset itself.

Target (issue #7): 3 at least 80% of 2. Rounds alternate the three measurements and the
median of each is kept, which damps the noise of a shared machine. 2 and 3 are timed inside
``fit``, from its first step's end to its last (``steady_fit_seconds``).

    .venv/bin/msmt run --rows 50000 --output-dir /tmp/runs --epochs 1
    .venv/bin/python benchmarks/input_throughput.py /tmp/runs/msmt-synthetic-mmoe [--model mmoe]
"""

import argparse
import glob
import os
import sys
import time
import types
from typing import Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reporting  # noqa: E402


def latest(pattern: str) -> str:
    """The newest (highest execution id) artifact directory matching ``pattern``."""
    found = sorted(glob.glob(pattern), key=lambda p: int(os.path.basename(p))
                   if os.path.basename(p).isdigit() else -1)
    if not found:
        raise SystemExit(f"nothing matches {pattern}: is this a finished `msmt run` directory?")
    return found[-1]


def fn_args_of(run_dir: str, use_selection: bool):
    """What the Trainer's run_fn receives, read off a finished pipeline run's artifacts."""
    root = os.path.join(run_dir, "pipeline_root")
    if not os.path.isdir(root):
        raise SystemExit(f"{run_dir}: no pipeline_root/ (pass the directory `msmt run` made "
                         "for the pipeline, e.g. OUTPUT_DIR/msmt-synthetic-mmoe)")
    examples = latest(os.path.join(root, "Transform", "transformed_examples", "*"))
    config = {}
    if use_selection:
        selections = glob.glob(os.path.join(root, "FeatureSelector", "*", "*"))
        if selections:
            from components.trainer.component import FEATURE_SELECTION_URI
            config[FEATURE_SELECTION_URI] = latest(os.path.join(
                os.path.dirname(selections[0]), "*"))
    return types.SimpleNamespace(
        transform_graph_path=latest(os.path.join(root, "Transform", "transform_graph", "*")),
        train_files=[os.path.join(examples, "Split-train", "*")],
        eval_files=[os.path.join(examples, "Split-eval", "*")],
        custom_config=config)


def iterate(dataset, batches: int) -> float:
    """Seconds to pull ``batches`` batches (after one to start the pipeline)."""
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start


def fit_seconds(model, dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - start


def steady_fit_seconds(model, dataset, steps: int) -> float:
    """Seconds of ``steps`` steps inside one ``fit`` of ``steps + 1``, from the end of its
    first step to the end of its last. ``fit``'s own start and finish are left out: here they
    took from 10 ms to 0.7 s at random, which the Trainer's one long ``fit`` pays once."""
    import tf_keras as keras
    ends: List[float] = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    model.fit(dataset, epochs=1, steps_per_epoch=steps + 1, verbose=0, callbacks=[record])
    return ends[-1] - ends[0]


def readers(fn_args, tft_output, spec, batch_size: int) -> Dict:
    """The same records shuffled, batched and parsed by three readers, for ``--compare-readers``:
    ours (``models.data.make_dataset``), TFRecordDataset's own parallel reads (the Trainer's
    reader until session 14) and TFXIO's ``TensorFlowDataset`` (what TFX's
    ``fn_args.data_accessor.tf_dataset_factory`` returns)."""
    import tensorflow as tf
    from tfx_bsl.public import tfxio
    from models import data
    files = sorted(f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern))
    feature_spec = tft_output.transformed_feature_spec()
    parallel_reads = (
        tf.data.TFRecordDataset(files, compression_type="GZIP",
                                num_parallel_reads=tf.data.AUTOTUNE)
        .shuffle(10_000, seed=0).repeat().batch(batch_size)
        .map(lambda serialized: tf.io.parse_example(serialized, feature_spec),
             num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))
    source = tfxio.TFExampleRecord(file_pattern=files,
                                   schema=tft_output.transformed_metadata.schema)
    return {
        "reader: ours (models/data.py)": data.make_dataset(
            files, tft_output, spec, batch_size, shuffle=True, num_epochs=None),
        "reader: TFRecordDataset(num_parallel_reads=AUTOTUNE)": parallel_reads,
        "reader: TFXIO TensorFlowDataset": source.TensorFlowDataset(
            tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle_seed=0)),
        "reader: TFXIO TensorFlowDataset, reader_num_threads=1": source.TensorFlowDataset(
            tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle_seed=0,
                                           reader_num_threads=1)),
    }


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a pipeline's directory under `msmt run --output-dir`")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--model", default="mmoe", help="model spec name or file")
    parser.add_argument("--batch-size", type=int, default=0, help="0: the model spec's")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=5,
                        help="alternating rounds; the median is kept")
    parser.add_argument("--no-selection", action="store_true")
    parser.add_argument("--policies", nargs="*", default=[],
                        help="also train a fresh model per Keras dtype policy (e.g. float32 "
                             "mixed_bfloat16) for --quality-steps and compare eval AUC and speed")
    parser.add_argument("--quality-steps", type=int, default=160)
    parser.add_argument("--compare-readers", action="store_true",
                        help="also time TFRecordDataset's parallel reads and TFXIO's "
                             "TensorFlowDataset on the same records")
    parser.add_argument("--output-json", default=os.path.join(HERE, "results",
                                                              "input_throughput.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)

    from models import factory, training
    from pipeline import specs

    spec = specs.load_dataset_spec(args.dataset)
    model_spec = specs.load_model_spec(args.model)
    if args.batch_size:
        model_spec = model_spec.with_training(batch_size=args.batch_size)
    batch_size = model_spec.training_dict["batch_size"]
    # A stream (steps_per_epoch set), as the Trainer reads it with a step budget.
    model_spec = model_spec.with_training(steps_per_epoch=args.steps)
    fn_args = fn_args_of(os.path.abspath(args.run_dir), not args.no_selection)
    tft_output, info, train_ds, _ = training.training_inputs(fn_args, spec, model_spec)

    model = factory.build_model(model_spec, info)
    training.compile_model(model, spec, model_spec.training_dict)
    in_memory = train_ds.take(args.steps).cache().repeat()
    iterate(in_memory, args.steps)  # Fills the cache.
    fit_seconds(model, in_memory, 5)  # Traces the train step.
    fit_seconds(model, train_ds, 5)

    rates: Dict[str, List[float]] = {"input pipeline alone": [], "in-memory step": [],
                                     "real Trainer (fit on make_dataset)": []}
    compared = readers(fn_args, tft_output, spec, batch_size) if args.compare_readers else {}
    rates.update({name: [] for name in compared})
    for _ in range(args.repeats):
        for name, dataset in compared.items():
            rates[name].append(args.steps * batch_size / iterate(dataset, args.steps))
        rates["input pipeline alone"].append(
            args.steps * batch_size / iterate(train_ds, args.steps))
        rates["in-memory step"].append(
            args.steps * batch_size / steady_fit_seconds(model, in_memory, args.steps))
        rates["real Trainer (fit on make_dataset)"].append(
            args.steps * batch_size / steady_fit_seconds(model, train_ds, args.steps))
    median = {k: float(np.median(v)) for k, v in rates.items()}
    ratio = median["real Trainer (fit on make_dataset)"] / median["in-memory step"]
    machine = reporting.machine()
    load = machine["load_average_1m"]
    lines = ["| what | examples/s (median of rounds) | rounds |", "|:--|--:|:--|"]
    lines += [f"| {k} | {median[k]:,.0f} | {', '.join(f'{r:,.0f}' for r in v)} |"
              for k, v in rates.items()]
    text = "\n".join(lines)
    print(text)
    print(f"\nreal Trainer / in-memory step: {100 * ratio:.0f}% (target >= 80%); "
          f"load average {load:.1f}")

    quality = []
    if args.policies:
        import tf_keras as keras
        _, _, _, eval_ds = training.training_inputs(fn_args, spec, model_spec)
        for policy in args.policies:
            keras.utils.set_random_seed(model_spec.training_dict["seed"])
            candidate = factory.build_model(model_spec.with_training(precision=policy), info)
            training.compile_model(candidate, spec, model_spec.training_dict)
            seconds = fit_seconds(candidate, train_ds, args.quality_steps)
            scores = candidate.evaluate(eval_ds, return_dict=True, verbose=0)
            quality.append({"policy": policy, "examples_per_s":
                            args.quality_steps * batch_size / seconds,
                            **{k: float(v) for k, v in scores.items()}})
        quality_lines = ["| dtype policy | training examples/s (fit, incl. tracing) | " +
                         " | ".join(f"eval {t} AUC" for t in spec.task_names) + " |",
                         "|:--|--:|" + "--:|" * len(spec.task_names)]
        quality_lines += [f"| {q['policy']} | {q['examples_per_s']:,.0f} | " + " | ".join(
            f"{q[f'{t}_auc']:.4f}" for t in spec.task_names) + " |" for q in quality]
        quality_text = "\n".join(quality_lines)
        print("\n" + quality_text)
        text += (f"\n\nSame model, seed and data per dtype policy, {args.quality_steps} training "
                 f"steps, AUC on the whole eval split:\n\n{quality_text}")

    reporting.save_json(args.output_json, {
        "date": machine["date"], "machine": machine, "model": model_spec.name,
        "batch_size": batch_size, "dtype_policies": quality,
        "fields_read": len(info.field_names), "rates": rates,
        "ratio_real_to_in_memory": ratio, "load_average_1m": load})
    reporting.append_section(
        args.results_md, "Trainer input pipeline",
        f"`benchmarks/input_throughput.py` on the run "
        f"`{os.path.basename(os.path.abspath(args.run_dir))}`, model "
        f"`{model_spec.name}`, batch {batch_size}, {len(info.field_names)} fields read, on "
        f"{reporting.machine_line(machine)}; {args.steps} steps per round, {args.repeats} "
        f"alternating rounds, medians; steps timed inside `fit`. Load average {load:.1f}: the "
        f"machine was shared, so read the same-run ratio. Real Trainer / in-memory step rate: "
        f"**{100 * ratio:.0f}%** (target >= 80%).\n\n{text}", machine["date"])

if __name__ == "__main__":
    main()
