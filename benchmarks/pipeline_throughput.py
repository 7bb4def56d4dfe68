"""Rows per second through the data components, and the local pipeline's wall time, by rows.

For each data shape and row count the real local pipeline's data components
(ExampleGen -> StatisticsGen -> SchemaGen -> Transform, LocalDagRunner, Beam
DirectRunner with the pipeline's Beam arguments) run on fresh data; each
component's wall time is read from MLMD (its execution's start and end). Shapes:

- ``synthetic``: the built-in synthetic data (``msmt generate``): 12 vocabularies,
  8 bucketized numericals, a 2-level scenario hierarchy, 2 labels (gzipped CSV);
- ``wide``: issue #7's 80-column shape: 16 vocabulary fields with 10 to 2000
  values, 63 bucketized numericals, a scenario column and 2 labels (plain CSV),
  generated here with its dataset spec.

Variants: ``tfx_defaults`` is TFX 1.16's Transform as it comes (its own pre- and
post-transform statistics passes on); ``pipeline`` is the component wiring of
``pipeline/pipeline.py`` as it stands; ``analyzer_cache`` is a second run with
``transform_analyzer_cache`` on (upstream components from TFX's cache, Transform
re-executed with the first run's analyzer cache: the cost of a code edit). ``--full`` also runs the whole local pipeline
(through the Pusher) once per size. Prints a table and time per row at each size
(linear growth shows as a flat column), writes JSON beside this script
(``pipeline_throughput.json``) and appends a section to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/pipeline_throughput.py --rows 50000 200000 \
        [--shapes synthetic wide] [--variants tfx_defaults pipeline] [--full] [--no-results]
"""

import argparse
import json
import os
import platform
import shutil
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import reporting  # noqa: E402
from pipeline import configs, specs, synthetic  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(BENCH_DIR, "RESULTS.md")
JSON_OUT = os.path.join(BENCH_DIR, "pipeline_throughput.json")
WORK_DIR = os.path.join(specs.REPO_DIR, "msmt_runs", "benchmarks", "pipeline_throughput")
DATA_COMPONENTS = ("FileBasedExampleGen", "StatisticsGen", "SchemaGen", "Transform")
LATER_COMPONENTS = ("FeatureSelector", "MSMTTrainer", "Evaluator")
VARIANTS = ("tfx_defaults", "pipeline", "analyzer_cache")
CACHE_RESOLVER = "latest_transform_cache_resolver"

# Issue #7's shape: 16 vocabularies with 10..2000 values, 63 bucketized numericals.
WIDE_CARDINALITIES = np.geomspace(10, 2000, 16).round().astype(int).tolist()
WIDE_NUMERICALS = 63
WIDE_SCENARIO_SHARES = (0.4, 0.25, 0.15, 0.12, 0.08)


def wide_spec(directory: str) -> dict:
    return {
        "name": "wide80",
        "description": "issue #7's 80-column benchmark shape",
        "inputs": {"files": "data.csv", "format": "csv", "header": True},
        "scenario": {"column": "scenario"},
        "tasks": [{"name": "click", "label": "click"},
                  {"name": "conversion", "label": "conversion", "depends_on": "click"}],
        "categorical_defaults": {"frequency_threshold": 1, "num_oov_buckets": 1},
        "categorical_fields": [f"c{i:02d}" for i in range(len(WIDE_CARDINALITIES))],
        "numerical_defaults": {"buckets": 10},
        "numerical_fields": [f"n{i:02d}" for i in range(WIDE_NUMERICALS)],
        "ignored_columns": ["row_id"],
        "split": {"method": "hash", "eval_fraction": 0.2, "key": "row_id"},
    }


def generate_wide(directory: str, rows: int, seed: int = 0) -> specs.DatasetSpec:
    """Writes ``data.csv`` and ``spec.yaml`` of the wide shape; returns the loaded spec."""
    import yaml
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = {"row_id": np.arange(rows)}
    columns["scenario"] = np.array([f"s{i}" for i in range(len(WIDE_SCENARIO_SHARES))])[
        rng.choice(len(WIDE_SCENARIO_SHARES), rows, p=WIDE_SCENARIO_SHARES)]
    logit = np.full(rows, -1.5)
    for i, cardinality in enumerate(WIDE_CARDINALITIES):
        probs = 1.0 / np.arange(1, cardinality + 1) ** 1.1
        values = rng.choice(cardinality, rows, p=probs / probs.sum())
        logit += 0.3 * rng.standard_normal(cardinality)[values] * (i % 3 == 0)
        columns[f"c{i:02d}"] = values
    for i in range(WIDE_NUMERICALS):
        x = rng.standard_normal(rows)
        logit += 0.2 * np.tanh(x) * (i % 7 == 0)
        columns[f"n{i:02d}"] = np.round(np.exp(x) if i % 2 else x, 5)
    click = rng.random(rows) < 1 / (1 + np.exp(-logit))
    columns["click"] = click.astype(int)
    columns["conversion"] = (click & (rng.random(rows) < 0.2)).astype(int)
    pd.DataFrame(columns).to_csv(os.path.join(directory, "data.csv"), index=False)
    path = os.path.join(directory, "spec.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(wide_spec(directory), f, sort_keys=False)
    return specs.load_dataset_spec(path)


def dataset(shape: str, rows: int) -> specs.DatasetSpec:
    directory = os.path.join(WORK_DIR, "data", f"{shape}-{rows}")
    if shape == "wide":
        if os.path.exists(os.path.join(directory, "spec.yaml")):
            return specs.load_dataset_spec(os.path.join(directory, "spec.yaml"))
        return generate_wide(directory, rows)
    if not os.path.exists(os.path.join(directory, "data.csv.gz")):
        synthetic.generate(directory, synthetic.SyntheticConfig(rows=rows, seed=0))
    return specs.load_dataset_spec("synthetic").with_files([os.path.join(directory, "data.csv.gz")])


def data_pipeline(config: configs.PipelineConfig, variant: str, metadata_path: str):
    """The pipeline's own ExampleGen, StatisticsGen, SchemaGen and Transform, nothing after."""
    from tfx import v1 as tfx
    from pipeline import pipeline as msmt_pipeline
    full = msmt_pipeline.create_pipeline(
        **config.pipeline_arguments(),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            metadata_path))
    nodes = {c.id: c for c in full.components}
    kept = [nodes[name] for name in DATA_COMPONENTS]
    if CACHE_RESOLVER in nodes:
        kept.insert(-1, nodes[CACHE_RESOLVER])
    if variant == "tfx_defaults":
        # TFX's Transform as it comes: pre- and post-transform statistics on.
        kept[-1] = tfx.components.Transform(
            examples=nodes["FileBasedExampleGen"].outputs["examples"],
            schema=nodes["SchemaGen"].outputs["schema"],
            preprocessing_fn=configs.PREPROCESSING_FN, custom_config=config.transform_config())
    for node in kept:  # Drop the links to the components left out.
        node._downstream_nodes = {n for n in node._downstream_nodes if n in kept}
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name, pipeline_root=config.pipeline_root, components=kept,
        enable_cache=config.enable_cache, metadata_connection_config=full.metadata_connection_config,
        beam_pipeline_args=config.beam_pipeline_args)


def execution_times(metadata_path: str) -> dict:
    """Seconds per component of the latest run, from MLMD execution timestamps."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(connection)
    types = {t.id: t.name for t in store.get_execution_types()}
    times = {}
    for execution in store.get_executions():
        name = types[execution.type_id].split(".")[-1]
        node = execution.custom_properties.get("__node_id__")  # Set by the TFX orchestrator.
        key = node.string_value if node is not None and node.string_value else name
        times[key] = (execution.last_update_time_since_epoch
                      - execution.create_time_since_epoch) / 1000.0
    return times


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (Beam workers)."""
    import resource
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def run_once(shape: str, rows: int, variant: str, beam_workers: int, full: bool,
             epochs: int = 0) -> dict:
    from tfx import v1 as tfx
    from pipeline import local_runner
    spec = dataset(shape, rows)
    out = os.path.join(WORK_DIR, "runs", f"{shape}-{rows}-{variant}{'-full' if full else ''}")
    shutil.rmtree(out, ignore_errors=True)
    cached = variant == "analyzer_cache"
    model = specs.load_model_spec("mmoe")
    if epochs:
        model = model.with_training(epochs=epochs)
    config = configs.PipelineConfig(dataset=spec, model=model,
                                    output_dir=out, beam_workers=beam_workers, enable_cache=cached,
                                    transform_analyzer_cache=cached)
    if cached:
        # A first run fills the analyzer cache; the measured second run reuses ExampleGen,
        # StatisticsGen and SchemaGen from TFX's cache and re-executes Transform (its cache
        # input changed), which then skips every analyzer whose input is unchanged.
        tfx.orchestration.LocalDagRunner().run(data_pipeline(config, variant, config.metadata_path))
    start, cpu = time.time(), _cpu_seconds()
    if full:
        local_runner.run(config)
    else:
        tfx.orchestration.LocalDagRunner().run(data_pipeline(config, variant, config.metadata_path))
    wall, cpu = time.time() - start, _cpu_seconds() - cpu
    times = execution_times(config.metadata_path)
    data_seconds = sum(times.get(c, 0.0) for c in DATA_COMPONENTS)
    result = {"shape": shape, "rows": rows, "variant": "full_pipeline" if full else variant,
              "beam_workers": beam_workers, "epochs": epochs or None, "wall_s": round(wall, 2),
              "cpu_s": round(cpu, 2),
              "components_s": {k: round(v, 2) for k, v in times.items()},
              "data_components_s": round(data_seconds, 2),
              "transform_rows_per_s": round(rows / times["Transform"], 1),
              "data_rows_per_s": round(rows / data_seconds, 1)}
    print(json.dumps(result), flush=True)
    return result


def table(results) -> str:
    header = ("| shape | rows | variant | ExampleGen s | StatisticsGen s | SchemaGen s | Transform s "
              "| 4 data components s | Transform rows/s | data µs/row | FeatureSelector s "
              "| Trainer s | Evaluator s | run wall s | wall µs/row | run CPU s |")
    lines = [header, "|" + "---|" * 16]
    for r in results:
        c = r["components_s"]
        later = " | ".join(f"{c[k]:.1f}" if k in c else "" for k in LATER_COMPONENTS)
        lines.append(
            f"| {r['shape']} | {r['rows']:,} | {r['variant']} | {c.get('FileBasedExampleGen', 0):.1f} "
            f"| {c.get('StatisticsGen', 0):.1f} | {c.get('SchemaGen', 0):.1f} "
            f"| {c.get('Transform', 0):.1f} | {r['data_components_s']:.1f} "
            f"| {r['transform_rows_per_s']:,.0f} | {1e6 * r['data_components_s'] / r['rows']:.0f} "
            f"| {later} | {r['wall_s']:.1f} | {1e6 * r['wall_s'] / r['rows']:.0f} | {r['cpu_s']:.1f} |")
    return "\n".join(lines)


def growth(results) -> str:
    """Time per row of each size against the smallest size of the same shape and variant."""
    lines = []
    for key in sorted({(r["shape"], r["variant"]) for r in results}):
        runs = sorted((r for r in results if (r["shape"], r["variant"]) == key), key=lambda r: r["rows"])
        if len(runs) < 2:
            continue
        base = runs[0]
        for r in runs[1:]:
            scale = r["rows"] / base["rows"]
            lines.append(
                f"- {key[0]} / {key[1]}: {base['rows']:,} -> {r['rows']:,} rows ({scale:.0f}x): "
                f"data components {r['data_components_s'] / base['data_components_s']:.2f}x, "
                f"Transform {r['components_s']['Transform'] / base['components_s']['Transform']:.2f}x, "
                f"run wall {r['wall_s'] / base['wall_s']:.2f}x (linear: {scale:.0f}x)")
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def versions() -> str:
    import apache_beam
    import tensorflow as tf
    import tensorflow_transform as tft
    import tfx
    return (f"Python {platform.python_version()}, TFX {tfx.__version__}, TFT {tft.__version__}, "
            f"Beam {apache_beam.__version__}, TF {tf.__version__}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[50_000, 200_000])
    p.add_argument("--shapes", nargs="+", default=["synthetic", "wide"], choices=["synthetic", "wide"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--beam-workers", type=int, default=configs.default_beam_workers(),
                   help="direct runner's workers (1: in memory; default: the pipeline's)")
    p.add_argument("--full", action="store_true", help="also the whole local pipeline per size")
    p.add_argument("--full-only", action="store_true", help="only the whole local pipeline per size")
    p.add_argument("--epochs", type=int, default=0,
                   help="the whole pipeline's training epochs (default: the model spec's)")
    p.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)

    results, load_before = [], _load()
    for rows in args.rows:
        for shape in args.shapes:
            for variant in ([] if args.full_only else args.variants):
                results.append(run_once(shape, rows, variant, args.beam_workers, full=False))
            if args.full or args.full_only:
                results.append(run_once(shape, rows, "pipeline", args.beam_workers, full=True,
                                        epochs=args.epochs))
    text = table(results) + "\n\n" + growth(results)
    print(text)
    machine = reporting.machine()
    previous = []
    if os.path.exists(JSON_OUT):
        with open(JSON_OUT) as f:
            previous = json.load(f)
    reporting.save_json(JSON_OUT, previous + [{"date": machine["date"], "machine": machine,
                                               "versions": versions(), "results": results}])
    print(f"wrote {JSON_OUT}")
    reporting.append_section(
        None if args.no_results else RESULTS, "Data components throughput",
        f"`benchmarks/pipeline_throughput.py --rows {' '.join(map(str, args.rows))}` on "
        f"{reporting.machine_line(machine)}, {versions()}, Beam DirectRunner (FnApiRunner) with "
        f"{args.beam_workers} worker(s) "
        f"({'in memory' if args.beam_workers == 1 else 'multi-processing'}). Load average "
        f"before / after: {load_before} / {_load()}.\n\n{text}", machine["date"])
    if not args.no_results:
        print(f"appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
