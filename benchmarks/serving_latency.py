"""Latency of the served model: serialized raw tf.Examples in, Transform included.

For each run given, loads the SavedModel the pipeline exported (the Pusher's copy when the
model was blessed, else the Trainer's ``Format-Serving``), takes raw tf.Examples from the
run's own eval split (ExampleGen's output, as a client would send them) and times the
``serving_default`` signature: p50/p99 of a 1-example request and the time per example
of a 256-example request. Feature selection on/off: give runs of the same model made
with the default selector and with ``--selector none``.

    .venv/bin/msmt run --rows 50000 --output-dir /tmp/runs --model hinet
    .venv/bin/msmt run --rows 50000 --output-dir /tmp/runs --model hinet --selector none
    .venv/bin/python benchmarks/serving_latency.py /tmp/runs/msmt-synthetic-hinet ...
    # or, from one run's Transform output, train and export with the Trainer's run_fn:
    .venv/bin/python benchmarks/serving_latency.py /tmp/runs/msmt-synthetic-mmoe --export mmoe hinet

Targets (issue #7): served HiNet at batch 256 <= 0.05 ms/example on 2 cores; 1-example
p99 < 5 ms.
"""

import argparse
import dataclasses
import glob
import os
import sys
import time
from typing import Dict, List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import reporting  # noqa: E402


def _newest(paths: List[str]) -> Optional[str]:
    return max(paths, key=os.path.getmtime) if paths else None


def find_serving_model(run_dir: str) -> str:
    """The pushed SavedModel, else the Trainer's serving export, of a pipeline run."""
    root = os.path.join(run_dir, "pipeline_root")
    pushed = _newest([os.path.dirname(p) for p in glob.glob(
        os.path.join(root, "Pusher", "pushed_model", "*", "*", "saved_model.pb"))]
        + [os.path.dirname(p) for p in glob.glob(
            os.path.join(root, "Pusher", "pushed_model", "*", "saved_model.pb"))])
    if pushed:
        return pushed
    trained = _newest([os.path.dirname(p) for p in glob.glob(
        os.path.join(root, "*Trainer", "model", "*", "Format-Serving", "saved_model.pb"))])
    if trained:
        return trained
    if os.path.exists(os.path.join(run_dir, "saved_model.pb")):
        return run_dir
    raise SystemExit(f"{run_dir}: no pushed or trained SavedModel found (pass a pipeline's "
                     "directory under `msmt run --output-dir`, or a SavedModel directory)")


def select_fields(fn_args, method: str, out_dir: str, dataset: str = "synthetic") -> str:
    """Runs the FeatureSelector's executor code (``method``, default params) on the run's
    Transform output and writes the selection artifact; returns its directory."""
    import tensorflow_transform as tft
    from components.feature_selector import executor
    from components.feature_selector.artifact import vocabulary_fingerprint
    from models import data
    from pipeline import specs
    spec = specs.load_dataset_spec(dataset)
    own, params = executor.split_params(method, {})
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    scenarios, vocab_sizes = data.scenario_names(tft_output), data.field_vocab_sizes(tft_output, spec)
    examples_uri = os.path.dirname(os.path.dirname(fn_args.train_files[0]))
    batches = executor.make_batches_fn(examples_uri, tft_output, spec, own["batch_size"], 0)
    result, seconds = executor.run_method(method, batches, vocab_sizes, len(scenarios),
                                          len(spec.task_names), params)
    selection = executor.to_selection(result, method, seconds, scenarios, list(spec.task_names),
                                      list(spec.field_names), vocab_sizes,
                                      vocabulary_fingerprint(fn_args.transform_graph_path))
    selection.params = {**selection.params, **own}
    uri = os.path.join(out_dir, f"selection-{method}")
    selection.write(uri)
    return uri


def export_model(run_dir: str, model: str, use_selection: bool, out_dir: str, epochs: int,
                 dataset: str = "synthetic", selector: Optional[str] = None,
                 reuse: bool = False) -> str:
    """Trains and exports ``model`` with the Trainer's own ``run_fn`` on the run's artifacts.

    Reuses one pipeline run's Transform output (and FeatureSelector output, with
    ``use_selection``) for any model, instead of a whole ``msmt run`` per model.
    With ``reuse``, a model already exported to ``out_dir`` is not trained again.
    Returns the SavedModel directory.
    """
    from input_throughput import fn_args_of
    from models import module
    from pipeline import specs
    model_spec = specs.load_model_spec(model)
    training = {**model_spec.training_dict, "epochs": epochs}
    model_spec = dataclasses.replace(model_spec, training=tuple(sorted(training.items())))
    fn_args = fn_args_of(run_dir, use_selection and not selector)
    if use_selection and selector:
        from components.trainer.component import FEATURE_SELECTION_URI
        fn_args.custom_config[FEATURE_SELECTION_URI] = select_fields(fn_args, selector, out_dir,
                                                                     dataset)
    fn_args.custom_config.update(dataset_spec=specs.load_dataset_spec(dataset).to_json(),
                                 model_spec=model_spec.to_json())
    name = f"{model_spec.name}-{'selected' if use_selection else 'all-fields'}"
    fn_args.serving_model_dir = os.path.join(out_dir, name, "serving")
    if reuse and os.path.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb")):
        return fn_args.serving_model_dir
    fn_args.model_run_dir = os.path.join(out_dir, name, "logs")
    fn_args.hyperparameters = None
    module.run_fn(fn_args)
    return fn_args.serving_model_dir


def raw_examples(run_dir: str, count: int) -> List[bytes]:
    """Serialized raw tf.Examples of the run's eval split (ExampleGen's output)."""
    files = sorted(glob.glob(os.path.join(run_dir, "pipeline_root", "*ExampleGen", "examples",
                                          "*", "Split-eval", "*")))
    if not files:
        raise SystemExit(f"{run_dir}: no ExampleGen eval split to take requests from")
    import tensorflow as tf
    examples: List[bytes] = []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(count):
        examples.append(record.numpy())
    return examples


def selection_of(run_dir: str) -> str:
    logs = sorted(glob.glob(os.path.join(run_dir, "run-*.log")))
    text = open(logs[-1], errors="replace").read() if logs else ""
    if "selector none" in text:
        return "off"
    if "selector" in text:
        return "on"
    return "?"


def percentiles(times: List[float]) -> Dict[str, float]:
    ms = 1e3 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def measure(model_dir: str, examples: List[bytes], single: int, batched: int,
            batch_size: int) -> Dict:
    import tensorflow as tf
    loaded = tf.saved_model.load(model_dir)
    serve = loaded.signatures["serving_default"]
    fields = [name for name in serve.structured_input_signature[1]]
    one = [tf.constant(examples[i % len(examples)])[None] for i in range(single)]
    batch = [tf.constant(examples[(i * batch_size) % len(examples):][:batch_size])
             for i in range(batched)]
    batch = [b if b.shape[0] == batch_size else tf.constant(examples[:batch_size])
             for b in batch]
    for request in one[:20] + batch[:3]:
        serve(examples=request)  # Warm-up.
    single_times, batch_times = [], []
    for request in one:
        start = time.perf_counter()
        outputs = serve(examples=request)
        [v.numpy() for v in outputs.values()]
        single_times.append(time.perf_counter() - start)
    for request in batch:
        start = time.perf_counter()
        outputs = serve(examples=request)
        [v.numpy() for v in outputs.values()]
        batch_times.append(time.perf_counter() - start)
    result = {"single": percentiles(single_times), "batch": percentiles(batch_times)}
    result["batch_ms_per_example"] = result["batch"]["p50_ms"] / batch_size
    result["inputs"] = fields
    result["outputs"] = sorted(outputs)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+",
                        help="pipeline directories under `msmt run --output-dir` (or SavedModels)")
    parser.add_argument("--export", nargs="+", default=[], metavar="MODEL",
                        help="train these model specs with the Trainer's run_fn on the first "
                             "run's artifacts (selection on and off) and time them too")
    parser.add_argument("--export-selection", choices=["both", "on", "off"], default="both",
                        help="with --export: train with the run's feature selection, without, "
                             "or both")
    parser.add_argument("--export-selector", default=None,
                        help="with --export: make the selection anew with this FeatureSelector "
                             "method (e.g. saliency) instead of reading the run's")
    parser.add_argument("--export-dir", default="/tmp/msmt_serving_benchmark")
    parser.add_argument("--reuse-exports", action="store_true",
                        help="measure models already exported to --export-dir as they are")
    parser.add_argument("--export-only", action="store_true",
                        help="train and export, measure nothing (e.g. on a busy machine)")
    parser.add_argument("--export-epochs", type=int, default=1)
    parser.add_argument("--examples-from", default=None, metavar="RUN_DIR",
                        help="take the requests from this run (for SavedModel directories given "
                             "as run_dirs)")
    parser.add_argument("--requests", type=int, default=300, help="1-example requests timed")
    parser.add_argument("--batches", type=int, default=40, help="batched requests timed")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--output-json", default=os.path.join(HERE, "results",
                                                              "serving_latency.json"))
    parser.add_argument("--results-md", default=os.path.join(HERE, "RESULTS.md"))
    args = parser.parse_args(argv)

    # (label, SavedModel, run whose raw eval examples are the requests, selection on/off)
    targets = []
    for run_dir in map(os.path.abspath, args.run_dirs):
        if args.export:
            for model in args.export:
                modes = {"both": (True, False), "on": (True,), "off": (False,)}
                for use_selection in modes[args.export_selection]:
                    exported = export_model(run_dir, model, use_selection, args.export_dir,
                                            args.export_epochs, selector=args.export_selector,
                                            reuse=args.reuse_exports)
                    targets.append((f"{model} (run_fn on {os.path.basename(run_dir)})", exported,
                                    run_dir, "on" if use_selection else "off"))
            continue
        if os.path.exists(os.path.join(run_dir, "saved_model.pb")):  # A SavedModel itself.
            if not args.examples_from:
                parser.error(f"{run_dir} is a SavedModel: say where the requests come from "
                             "with --examples-from RUN_DIR")
            targets.append((run_dir, run_dir, os.path.abspath(args.examples_from), "?"))
            continue
        targets.append((os.path.basename(run_dir), find_serving_model(run_dir), run_dir,
                        selection_of(run_dir)))
    if args.export_only:
        print("\n".join(f"exported {label} (selection {selection}): {model_dir}"
                        for label, model_dir, _, selection in targets))
        return
    rows = []
    for label, model_dir, run_dir, selection in targets:
        examples = raw_examples(run_dir, max(args.batch_size * 4, args.requests))
        result = measure(model_dir, examples, args.requests, args.batches, args.batch_size)
        result.update(run=label, model_dir=model_dir, selection=selection)
        rows.append(result)
        print(f"{result['run']} (selection {result['selection']}): 1 example p50 "
              f"{result['single']['p50_ms']:.2f} ms p99 {result['single']['p99_ms']:.2f} ms; "
              f"batch {args.batch_size}: {result['batch_ms_per_example']:.4f} ms/example", flush=True)

    machine = reporting.machine()
    load, date = machine["load_average_1m"], machine["date"]
    lines = [f"| run | feature selection | 1 example p50 ms | 1 example p99 ms | "
             f"batch {args.batch_size} p50 ms | ms / example at {args.batch_size} |",
             "|:--|:--|--:|--:|--:|--:|"]
    lines += [f"| {r['run']} | {r['selection']} | {r['single']['p50_ms']:.2f} | "
              f"{r['single']['p99_ms']:.2f} | {r['batch']['p50_ms']:.1f} | "
              f"{r['batch_ms_per_example']:.4f} |" for r in rows]
    text = "\n".join(lines)
    print("\n" + text + f"\n\nload average {load:.1f}")
    reporting.save_json(args.output_json, {"date": date, "machine": machine,
                                        "load_average_1m": load, "batch_size": args.batch_size,
                                        "rows": rows})
    reporting.append_section(
        args.results_md, "Serving latency",
        f"`benchmarks/serving_latency.py`: the exported `serving_default` signature (serialized "
        f"raw tf.Examples, Transform inside), {args.requests} 1-example requests and "
        f"{args.batches} requests of {args.batch_size}, in-process (no RPC), on "
        f"{reporting.machine_line(machine)}. Load average {load:.1f}: the machine was shared with "
        f"other jobs. Targets: HiNet <= 0.05 ms/example at 256, 1-example p99 < 5 ms.\n\n"
        f"{text}", date)

if __name__ == "__main__":
    main()
