"""The `msmt` command line: a thin layer over functions the tests call directly."""

import argparse
import glob
import logging
import os
import subprocess
import sys
import time
import warnings
from typing import List, Optional

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Google client libraries warn about Python versions at every import, in every Beam worker.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from pipeline import specs  # noqa: E402

DEFAULT_OUTPUT_DIR = "msmt_runs"


def _user_errors():
    """Exceptions that are the user's to fix: printed as one message, no traceback."""
    from components.example_gen.executor import BadInputError
    from components.feature_selector.artifact import SelectionMismatchError
    from components.feature_selector.executor import AnomaliesFoundError
    from kubeflow.schedule import ScheduleError
    from pipeline.preflight import InputError
    return (specs.SpecError, InputError, BadInputError, AnomaliesFoundError,
            SelectionMismatchError, FileNotFoundError, ScheduleError)


def ensure_synthetic_data(spec: specs.DatasetSpec, rows: int, seed: int) -> None:
    """Generates the built-in synthetic data where the spec expects it, if absent."""
    from pipeline import synthetic
    target = spec.files[0].path
    if os.path.exists(target):
        return
    print(f"Generating {rows} synthetic rows into {os.path.dirname(target)} ...", flush=True)
    synthetic.generate(os.path.dirname(target), synthetic.SyntheticConfig(rows=rows, seed=seed))


def build_config(args) -> "configs.PipelineConfig":
    from pipeline import configs
    dataset = specs.load_dataset_spec(args.dataset)
    if args.data:
        dataset = dataset.with_files(args.data)
    model = specs.load_model_spec(args.model)
    if args.epochs:
        model = model.with_training(epochs=args.epochs)
    return configs.PipelineConfig(
        dataset=dataset, model=model, output_dir=args.output_dir, selector=args.selector,
        selector_params=configs.parse_selector_params(args.selector_param or ()),
        beam_workers=args.beam_workers or configs.default_beam_workers(),
        enable_cache=not args.no_cache,
        beam=configs.load_beam_config(args.beam_config, args.beam_runner, tuple(args.beam_arg or ())),
        transform_analyzer_cache=args.analyzer_cache,
        tuning=(configs.TuningConfig(max_trials=args.tune_trials, algorithm=args.tune_algorithm)
                if args.tune else None))


def cmd_run(args) -> int:
    from pipeline import preflight, report
    if not args.verbose:
        _capture_stderr(args)
    config = build_config(args)
    from models.factory import resolve_hparams
    resolve_hparams(config.model)  # A bad hyper-parameter fails now, not after Transform.
    if config.dataset.name == "synthetic" and not args.data:
        ensure_synthetic_data(config.dataset, args.rows, args.seed)
    preflight.check_inputs(config.dataset)
    os.makedirs(config.run_dir, exist_ok=True)
    log_path = os.path.join(config.run_dir, f"run-{time.strftime('%Y%m%d-%H%M%S')}.log")
    if not args.verbose:
        _move_log(args, log_path)
    print(f"Running pipeline {config.pipeline_name} (dataset {config.dataset.name}, model "
          f"{config.model.name}, selector {config.selector}); "
          f"log: {'terminal' if args.verbose else log_path}", flush=True)
    start = time.time()
    from pipeline import local_runner
    try:
        local_runner.run(config)
    finally:
        print(f"Pipeline wall time: {time.time() - start:.1f} s", flush=True)
    result = report.load_run(config.metadata_path, config.dataset)
    print(report.summary(result, config.run_dir, report.read_oracle_auc(config.dataset)))
    return 0


def _capture_stderr(args) -> None:
    """Sends this process's and its Beam workers' log output (fd 2) to a log file.

    Until the run directory exists it goes to a temporary file (``_move_log``
    copies it over). The terminal keeps stdout (progress and the results);
    errors are printed to the original stderr, kept in ``args.terminal``.
    """
    import tempfile
    from absl import logging as absl_logging
    args.terminal = os.fdopen(os.dup(2), "w")
    args.early_log = tempfile.TemporaryFile(mode="w+")
    os.dup2(args.early_log.fileno(), 2)
    logging.getLogger().setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)


def _move_log(args, path: str) -> None:
    log = open(path, "a")
    args.early_log.seek(0)
    log.write(args.early_log.read())
    log.flush()
    os.dup2(log.fileno(), 2)
    args.early_log.close()


def cmd_generate(args) -> int:
    from pipeline import synthetic
    config = synthetic.SyntheticConfig(rows=args.rows, seed=args.seed,
                                       num_scenarios=args.scenarios)
    truth = synthetic.generate(args.output, config)
    print(f"Wrote {args.rows} rows to {os.path.join(args.output, 'data.csv.gz')} and "
          f"{os.path.join(args.output, 'ground_truth.json')}")
    print("Oracle AUC per scenario x task:")
    for scenario, values in truth["oracle_auc"].items():
        print(f"  {scenario:>8}: " + ", ".join(f"{t} {v:.4f}" for t, v in values.items()))
    return 0


def _run_dir(path: str) -> str:
    if os.path.exists(os.path.join(path, "metadata.sqlite")):
        return path
    candidates = glob.glob(os.path.join(path, "*", "metadata.sqlite"))
    if len(candidates) == 1:
        return os.path.dirname(candidates[0])
    raise FileNotFoundError(f"{path} is not a run directory (no metadata.sqlite)"
                            + (f"; it holds several runs: {candidates}" if candidates else ""))


def tensorboard_logdir(run_dir: str) -> str:
    """Every Trainer run of the pipeline, one TensorBoard run each."""
    return os.path.join(_run_dir(run_dir), "pipeline_root", "MSMTTrainer", "model_run")


def cmd_tensorboard(args) -> int:
    logdir = tensorboard_logdir(args.run)
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"{args.run} has no training logs ({logdir} is missing): "
                                "has the run's MSMTTrainer finished?")
    import importlib.util
    if importlib.util.find_spec("pkg_resources") is None:  # TensorBoard 2.16 imports it.
        print("msmt tensorboard: error: TensorBoard 2.16 needs pkg_resources, which setuptools "
              ">= 82 no longer ships: pip install 'setuptools<82'", file=sys.stderr)
        return 2
    command = [os.path.join(os.path.dirname(sys.executable), "tensorboard"), "--logdir", logdir,
               "--host", args.host, "--port", str(args.port)]
    print(" ".join(command), flush=True)
    print(f"TensorBoard on http://{args.host}:{args.port}/ (one run per Trainer execution: "
          "train, validation, diagnostics; Ctrl-C stops it)", flush=True)
    return subprocess.call(command)


def cmd_report(args) -> int:
    from pipeline import report
    run_dir = _run_dir(args.run)
    spec = specs.load_dataset_spec(args.dataset)
    result = report.load_run(os.path.join(run_dir, "metadata.sqlite"), spec)
    oracle_auc = report.read_oracle_auc(spec)
    print(report.summary(result, run_dir, oracle_auc))
    html_path = report.write_html(result, run_dir, args.html or os.path.join(run_dir, "report.html"),
                                  oracle_auc)
    print(f"HTML report: {html_path}")
    return 0


def cmd_check(args) -> int:
    from pipeline import preflight
    spec = specs.load_dataset_spec(args.dataset)
    if args.data:
        spec = spec.with_files(args.data)
    files = preflight.check_inputs(spec)
    print(f"{spec.source}: valid; {len(files)} file(s), {len(spec.field_names)} fields, "
          f"scenario {'/'.join(spec.scenario_columns)}, tasks {', '.join(spec.task_names)}")
    return 0


def cmd_kubeflow_compile(args) -> int:
    from kubeflow import runner
    spec = runner.compile_pipeline(build_config(args), args.output, args.pipeline_root, args.image,
                                   data_root=args.data_root)
    tasks = sorted(spec["pipelineSpec"]["root"]["dag"]["tasks"])
    parameters = spec["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    print(f"Wrote {args.output}: pipeline {spec['displayName']!r} with tasks {', '.join(tasks)}")
    print(f"Runtime parameters (defaults): pipeline root {args.pipeline_root!r}, " + ", ".join(
        f"{name} {p.get('defaultValue')!r}" for name, p in sorted(parameters.items())))
    return 0


def cmd_kubeflow_schedule(args) -> int:
    from kubeflow import schedule
    job = schedule.load_job(args.spec)
    client = schedule.connect(args.host, args.namespace)
    done = schedule.schedule(
        client, job, args.experiment, args.cron, args.max_concurrency, version=args.version,
        name=args.name, pipeline_root=args.pipeline_root,
        parameters=schedule.parse_parameters(args.param))
    print(f"Recurring run {done.recurring_run_id} ({args.cron!r}, at most "
          f"{args.max_concurrency} at a time, no catch-up) in experiment {done.experiment_id}: "
          f"pipeline {done.pipeline_id}, version {done.version_id}"
          + (f"; replaced {', '.join(done.replaced)}" if done.replaced else ""))
    return 0


def cmd_kubeflow_runs(args) -> int:
    from kubeflow import schedule
    runs = schedule.list_runs(schedule.connect(args.host, args.namespace), args.experiment,
                              args.limit)
    print(f"{'id':<38} {'state':<10} {'created':<26} name")
    for run in runs:
        print(f"{run['id']:<38} {run['state'] or '':<10} {run['created']:<26} {run['name']}")
    return 0


def _add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="synthetic", help="built-in spec name or spec file")
    p.add_argument("--data", nargs="+", help="read these files instead of the spec's")
    p.add_argument("--model", default="mmoe", help="built-in model spec name or spec file")
    p.add_argument("--selector", default="saliency",
                   choices=["multisfs", "multifs", "mi", "chi2", "lasso", "saliency", "none"],
                   help="the FeatureSelector's method (README: Feature selection)")
    p.add_argument("--selector-param", action="append", metavar="KEY=VALUE",
                   help="a parameter of the selector, repeatable, YAML value (e.g. "
                        "compress_ratio=0.3, k=12, gnn=false, shared=intersection)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR)
    p.add_argument("--beam-workers", type=int,
                   help="direct runner's worker processes (default: in memory on up to 2 cores, "
                        "else one per core)")
    p.add_argument("--beam-runner", choices=["direct", "flink", "spark", "dataflow"],
                   help="where the Beam-powered components run (default: the --beam-config "
                        "file's, else direct)")
    p.add_argument("--beam-arg", action="append", metavar="KEY=VALUE",
                   help="a Beam pipeline option, repeatable (e.g. flink_master=host:8081, "
                        "environment_type=DOCKER, project=my-gcp-project)")
    p.add_argument("--beam-config", metavar="FILE.yaml",
                   help="Beam runner and options as YAML: {runner: ..., options: {...}}")
    p.add_argument("--analyzer-cache", action="store_true",
                   help="Transform reuses the latest run's analyzer cache (new data spans, code "
                        "edits); every run then re-executes Transform instead of using TFX's cache")
    p.add_argument("--epochs", type=int, help="override the model spec's epochs")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--tune", action="store_true",
                   help="run the Tuner (KerasTuner) over the model spec's tuning: block first")
    p.add_argument("--tune-trials", type=int, default=4, help="the Tuner's max_trials")
    p.add_argument("--tune-algorithm", default="random", choices=["random", "bayesian"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msmt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline locally and print the results")
    _add_pipeline_arguments(run)
    run.add_argument("--rows", type=int, default=50_000, help="synthetic rows, when generated")
    run.add_argument("--seed", type=int, default=0, help="synthetic data seed, when generated")
    run.add_argument("--verbose", action="store_true", help="component logs on the terminal too")
    run.set_defaults(func=cmd_run)

    gen = sub.add_parser("generate", help="write synthetic MSMT data with its ground truth")
    gen.add_argument("--rows", type=int, default=50_000)
    gen.add_argument("--output", required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--scenarios", type=int, default=5)
    gen.set_defaults(func=cmd_generate)

    board = sub.add_parser("tensorboard", help="open TensorBoard on a run's training logs")
    board.add_argument("run", help="a run directory (or the output dir holding one run)")
    board.add_argument("--host", default="127.0.0.1")
    board.add_argument("--port", type=int, default=6006)
    board.set_defaults(func=cmd_tensorboard)

    rep = sub.add_parser("report", help="print a finished run's per scenario x task table and "
                                        "write its HTML report")
    rep.add_argument("run")
    rep.add_argument("--dataset", default="synthetic")
    rep.add_argument("--html", help="where to write the HTML report (default RUN/report.html)")
    rep.set_defaults(func=cmd_report)

    kubeflow = sub.add_parser("kubeflow", help="Kubeflow Pipelines").add_subparsers(
        dest="kubeflow_command", required=True)
    kf_compile = kubeflow.add_parser("compile", help="compile the pipeline spec (KubeflowV2DagRunner)")
    _add_pipeline_arguments(kf_compile)
    kf_compile.add_argument("--output", required=True, help="pipeline spec JSON to write")
    kf_compile.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/msmt")
    kf_compile.add_argument("--image", default="msmt-tfx:latest")
    kf_compile.add_argument("--data-root", help="default of the data_root runtime parameter "
                            "(default: the directory of the dataset's files)")
    kf_compile.set_defaults(func=cmd_kubeflow_compile)

    kf_schedule = kubeflow.add_parser(
        "schedule", help="create or replace a recurring run of a compiled spec (kfp client)")
    kf_schedule.add_argument("--host", required=True, help="KFP API, e.g. http://127.0.0.1:8888")
    kf_schedule.add_argument("--spec", required=True, help="the JSON `kubeflow compile` wrote")
    kf_schedule.add_argument("--experiment", required=True)
    kf_schedule.add_argument("--cron", required=True,
                             help="6 fields, seconds first: '0 0 3 * * *' is 03:00 daily")
    kf_schedule.add_argument("--max-concurrency", type=int, default=1)
    kf_schedule.add_argument("--version", help="pipeline version name (default: name-time)")
    kf_schedule.add_argument("--name", help="recurring run name (default: the pipeline's)")
    kf_schedule.add_argument("--pipeline-root", help="default: the one compiled in")
    kf_schedule.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                             help="runtime parameter, e.g. data_root=gs://b/data or "
                             "beam_pipeline_args='[\"--runner=DataflowRunner\"]'")
    kf_schedule.add_argument("--namespace", help="multi-user KFP: your namespace")
    kf_schedule.set_defaults(func=cmd_kubeflow_schedule)

    kf_runs = kubeflow.add_parser("runs", help="list recent runs (id, state, created, name)")
    kf_runs.add_argument("--host", required=True)
    kf_runs.add_argument("--experiment")
    kf_runs.add_argument("--limit", type=int, default=10)
    kf_runs.add_argument("--namespace")
    kf_runs.set_defaults(func=cmd_kubeflow_runs)

    check = sub.add_parser("check", help="validate a dataset spec against its files")
    check.add_argument("--dataset", default="synthetic")
    check.add_argument("--data", nargs="+")
    check.set_defaults(func=cmd_check)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        terminal = getattr(args, "terminal", sys.stderr)
        print(f"msmt {args.command}: error: {e}", file=terminal)
        if args.command == "run":
            print("Nothing already produced was removed: finished components' outputs stay in "
                  "the run directory and are reused from cache on the next run.", file=terminal)
        return 2
    except Exception:
        terminal = getattr(args, "terminal", None)
        if terminal is not None:  # The traceback went to the log; say where.
            print(f"msmt {args.command}: failed; see the log named above for the traceback.",
                  file=terminal)
        raise


if __name__ == "__main__":
    sys.exit(main())
