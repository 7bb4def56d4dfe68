"""Every knob of a pipeline run in one place (the TFX template's configs.py)."""

import dataclasses
import functools
import hashlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pipeline.specs import REPO_DIR, DatasetSpec, ModelSpec, SpecError, _suggest

PREPROCESSING_FN = "models.module.preprocessing_fn"
RUN_FN = "models.module.run_fn"
TUNER_FN = "models.module.tuner_fn"
# components/feature_selector/executor.py METHODS (not imported here: it pulls in TFX).
SELECTOR_METHODS = ("multisfs", "multifs", "mi", "chi2", "lasso", "saliency", "none")


@dataclasses.dataclass(frozen=True)
class EvalThresholds:
    """Blessing: every scenario x task must clear the floor and not regress past the bound."""

    auc_floor: float = 0.55
    max_auc_regression: float = 0.02  # vs the latest blessed model


@dataclasses.dataclass(frozen=True)
class TuningConfig:
    """The Tuner's search (over the model spec's ``tuning`` block) before the Trainer."""

    max_trials: int = 4
    algorithm: str = "random"  # random | bayesian (KerasTuner)
    epochs: int = 2  # per trial

    def __post_init__(self):
        if self.algorithm not in ("random", "bayesian"):
            raise ValueError(f"tuning algorithm must be 'random' or 'bayesian', got {self.algorithm!r}")
        if self.max_trials < 1 or self.epochs < 1:
            raise ValueError(f"tuning max_trials and epochs must be >= 1, got {self.max_trials}, "
                             f"{self.epochs}")


BEAM_RUNNERS = ("direct", "flink", "spark", "dataflow")
# Options a runner cannot do without, as alternatives: one of each tuple must be set.
_BEAM_REQUIRED = {
    "flink": (("flink_master", "job_endpoint"), ("environment_type",)),
    "spark": (("spark_master_url", "job_endpoint"), ("environment_type",)),
    "dataflow": (("project",), ("region",), ("temp_location",),
                 ("setup_file", "sdk_container_image")),
}
_ENVIRONMENT_TYPES = ("DOCKER", "EXTERNAL", "PROCESS", "LOOPBACK")


@functools.lru_cache(maxsize=1)
def _beam_option_flags() -> Dict[str, bool]:
    """Every Beam pipeline option's flag name -> whether it takes a value (False: a switch)."""
    import argparse
    from apache_beam.options import pipeline_options

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for cls in dict.fromkeys(subclasses(pipeline_options.PipelineOptions)):
        try:
            cls._add_argparse_args(parser)  # How Beam itself collects its options.
        except argparse.ArgumentError:
            pass  # An option registered twice (a subclass re-adding its parent's).
    return {flag[2:]: action.nargs != 0 for action in parser._actions
            for flag in action.option_strings if flag.startswith("--")}


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """Where the Beam-powered components run: ``runner`` plus Beam pipeline options.

    ``direct`` is Beam's local FnApiRunner (``beam_workers`` processes); ``flink`` and
    ``spark`` submit to a cluster (``flink_master`` / ``spark_master_url``, or the
    portable runner's ``job_endpoint``) whose SDK harness runs ``environment_type``
    (DOCKER with this project's image, EXTERNAL worker pool, PROCESS); ``dataflow``
    needs ``project``, ``region``, ``temp_location`` and ``setup_file`` or
    ``sdk_container_image``. ``options`` are Beam option names (without ``--``) and
    string values, validated against Beam's own option list.
    """

    runner: str = "direct"
    options: Tuple[Tuple[str, str], ...] = ()
    source: str = "beam config"  # Named in errors: a file, or the command-line flags.

    def __post_init__(self):
        if self.runner not in BEAM_RUNNERS:
            raise SpecError(self.source, "runner", f"must be one of {BEAM_RUNNERS}, got "
                            f"{self.runner!r}{_suggest(str(self.runner), BEAM_RUNNERS)}")
        flags = _beam_option_flags() if self.options else {}  # Imports Beam: only when needed.
        options = dict(self.options)
        for key, value in self.options:
            if key in ("runner", "beam_runner"):
                raise SpecError(self.source, key, "set the runner with `runner` (--beam-runner), "
                                "not as an option")
            if key not in flags:
                raise SpecError(self.source, key, "is not a Beam pipeline option"
                                + _suggest(key, list(flags)))
            if not flags[key] and str(value).lower() not in ("true", "false"):
                raise SpecError(self.source, key, f"is a switch: give true or false, got {value!r}")
        for alternatives in _BEAM_REQUIRED.get(self.runner, ()):
            if not any(options.get(k) for k in alternatives):
                raise SpecError(self.source, " or ".join(alternatives),
                                f"is required by the {self.runner} runner")
        environment = options.get("environment_type")
        if environment is not None and environment.upper() not in _ENVIRONMENT_TYPES:
            raise SpecError(self.source, "environment_type", f"must be one of "
                            f"{_ENVIRONMENT_TYPES}, got {environment!r}")
        if (environment or "").upper() in ("DOCKER", "EXTERNAL", "PROCESS") and not options.get(
                "environment_config"):
            raise SpecError(self.source, "environment_config", f"is required with environment_type "
                            f"{environment} (the SDK image, worker pool address or boot command)")

    @classmethod
    def parse(cls, runner: str, options: Mapping[str, Any], source: str = "beam config"):
        return cls(runner=runner, source=source,
                   options=tuple(sorted((str(k), str(v)) for k, v in options.items())))

    def pipeline_args(self, beam_workers: int) -> List[str]:
        """The ``--flag=value`` list every Beam-powered component receives."""
        options = dict(self.options)
        if self.runner == "direct":
            # Beam's DirectRunner would first try Prism (a binary it downloads at run
            # time); name the runner it falls back to, so every run behaves the same.
            args = ["--runner=FnApiRunner"]
            if beam_workers == 1:
                args += ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
            else:
                args += ["--direct_running_mode=multi_processing",
                         f"--direct_num_workers={beam_workers}"]
            args = [a for a in args if a[2:].split("=")[0] not in options]
        elif self.runner == "dataflow":
            args = ["--runner=DataflowRunner"]
        elif options.get("job_endpoint"):
            args = ["--runner=PortableRunner"]
        else:
            args = ["--runner=" + {"flink": "FlinkRunner", "spark": "SparkRunner"}[self.runner]]
        flags = _beam_option_flags() if self.options else {}
        for key, value in self.options:
            if flags[key]:
                args.append(f"--{key}={value}")
            elif value.lower() == "true":
                args.append(f"--{key}")
        return args


def load_beam_config(path: Optional[str] = None, runner: Optional[str] = None,
                     args: Tuple[str, ...] = ()) -> BeamConfig:
    """A Beam config from a YAML file (``runner:``, ``options: {name: value}``) and/or flags.

    ``runner`` and ``args`` (``KEY=VALUE`` strings) override the file's.
    """
    import yaml
    data: Dict[str, Any] = {}
    sources = []
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        sources.append(path)
        if not isinstance(data, dict) or set(data) - {"runner", "options"}:
            unknown = sorted(set(data) - {"runner", "options"}) if isinstance(data, dict) else data
            raise SpecError(path, str(unknown), "a Beam config holds only `runner` and `options`")
        if not isinstance(data.get("options", {}), dict):
            raise SpecError(path, "options", "must be a mapping of Beam option names to values")
    options = dict(data.get("options") or {})
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SpecError("--beam-arg", arg, "must be KEY=VALUE (a Beam option without --)")
        options[key.strip().lstrip("-")] = value.strip()
    if runner or args:
        sources.append("--beam-runner/--beam-arg")
    return BeamConfig.parse(runner or data.get("runner", "direct"), options,
                            source=" + ".join(sources) or "beam config")


def default_beam_workers() -> int:
    """The direct runner's workers: in memory (1) on up to 2 cores, else one process per core.

    On 2 cores the multi-processing runner's worker start-up and cross-process transfers
    cost more than the second process gains: the data components of 50,000 rows of the
    80-column shape took 198 s with 2 worker processes and 137 s in memory
    (benchmarks/RESULTS.md, "Data components and scale").
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 2 else cores


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    dataset: DatasetSpec
    model: ModelSpec
    output_dir: str  # Holds pipeline_root, metadata.sqlite and serving/.
    pipeline_name: str = ""
    selector: str = "saliency"  # Kept until the AUC with selection is measured.
    # The method's parameters (README "Feature selection"); unset ones take its defaults.
    selector_params: Tuple[Tuple[str, Any], ...] = ()
    beam_workers: int = dataclasses.field(default_factory=default_beam_workers)
    enable_cache: bool = True
    thresholds: EvalThresholds = EvalThresholds()
    beam: BeamConfig = BeamConfig()
    # Transform reads the latest run's analyzer cache (TransformCache) and recomputes only
    # the analyzers whose inputs changed. Off by default: the changing cache input makes
    # every run re-execute Transform (and all after it) instead of reusing it from cache.
    transform_analyzer_cache: bool = False
    tuning: Optional[TuningConfig] = None  # None: no Tuner; the model spec's values are used.

    def __post_init__(self):
        if self.selector not in SELECTOR_METHODS:
            raise ValueError(f"selector must be one of {SELECTOR_METHODS}, got {self.selector!r}")
        check_selector_params(self.selector, dict(self.selector_params))
        if self.beam_workers < 1:
            raise ValueError(f"beam_workers must be >= 1, got {self.beam_workers}")
        if self.tuning is not None and not self.model.search_space:
            raise ValueError(f"tuning is on but model spec {self.model.source} has no tuning: "
                             "block (the search space)")
        if not self.pipeline_name:
            object.__setattr__(self, "pipeline_name", f"msmt-{self.dataset.name}-{self.model.name}")

    @property
    def run_dir(self) -> str:
        return os.path.join(os.path.abspath(self.output_dir), self.pipeline_name)

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.run_dir, "pipeline_root")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.run_dir, "metadata.sqlite")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.run_dir, "serving", self.model.name)

    @property
    def beam_pipeline_args(self) -> List[str]:
        return self.beam.pipeline_args(self.beam_workers)

    def pipeline_arguments(self, pipeline_root: Optional[str] = None,
                           serving_model_dir: Optional[str] = None) -> Dict[str, Any]:
        """``create_pipeline``'s arguments common to every runner (each adds its own)."""
        from pipeline import evaluation  # Not at import: evaluation imports this module.
        return dict(
            pipeline_name=self.pipeline_name,
            pipeline_root=pipeline_root or self.pipeline_root,
            dataset_spec=self.dataset,
            custom_config=self.custom_config(),
            transform_config=self.transform_config(),
            preprocessing_fn=PREPROCESSING_FN,
            run_fn=RUN_FN,
            tuner_fn=TUNER_FN if self.tuning is not None else None,
            selector_method=self.selector,
            selector_params=dict(self.selector_params),
            eval_config=evaluation.eval_config(self.dataset, self.thresholds),
            serving_model_dir=serving_model_dir or self.serving_model_dir,
            beam_pipeline_args=self.beam_pipeline_args,
            transform_analyzer_cache=self.transform_analyzer_cache,
            enable_cache=self.enable_cache)

    def transform_config(self) -> Dict[str, Any]:
        """Transform's custom_config: the dataset only, so a model change keeps its cache."""
        return {"dataset_spec": self.dataset.to_json(), "code_version": code_version()}

    def custom_config(self) -> Dict[str, Any]:
        """What the module file's functions read; the code version makes caching see code edits."""
        config = {"dataset_spec": self.dataset.to_json(), "model_spec": self.model.to_json(),
                  "code_version": code_version()}
        if self.tuning is not None:
            config["tuning"] = dataclasses.asdict(self.tuning)
        return config


def check_selector_params(method: str, params: Mapping[str, Any],
                          source: str = "selector_params") -> None:
    """Validates a selector's parameters before anything runs (SpecError naming the key)."""
    from components.feature_selector import executor  # Not at import: it pulls in TFX.
    try:
        executor.validate_params(method, params)
    except ValueError as e:
        message = str(e)
        if message.startswith(f"{method}: "):
            message = message[len(method) + 2:]
        raise SpecError(source, method, message) from None


def parse_selector_params(pairs: Sequence[str]) -> Tuple[Tuple[str, Any], ...]:
    """``["k=5", "gnn=false", "hidden_units=[32]"]`` -> ``(("gnn", False), ...)`` (YAML values)."""
    import yaml
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError("--selector-param", pair, "expected KEY=VALUE")
        try:
            params[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise SpecError("--selector-param", key.strip(), f"not a valid value: {e}") from None
    return tuple(sorted(params.items()))


def code_version() -> str:
    """SHA-256 over the project's Python sources that run inside components."""
    digest = hashlib.sha256()
    for package in ("models", "components", "pipeline"):
        root = os.path.join(REPO_DIR, package)
        for directory, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                if name.endswith(".py"):
                    with open(os.path.join(directory, name), "rb") as f:
                        digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]
