"""Every knob of a pipeline run in one place (the TFX template's configs.py)."""

import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional, Tuple

from pipeline.specs import REPO_DIR, DatasetSpec, ModelSpec

PREPROCESSING_FN = "models.module.preprocessing_fn"
RUN_FN = "models.module.run_fn"
SELECTOR_METHODS = ("saliency", "none")


@dataclasses.dataclass(frozen=True)
class EvalThresholds:
    """Blessing: every scenario x task must clear the floor and not regress past the bound."""

    auc_floor: float = 0.55
    max_auc_regression: float = 0.02  # vs the latest blessed model


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    dataset: DatasetSpec
    model: ModelSpec
    output_dir: str  # Holds pipeline_root, metadata.sqlite and serving/.
    pipeline_name: str = ""
    selector: str = "saliency"
    selector_params: Tuple[Tuple[str, Any], ...] = (("keep_fraction", 0.8), ("num_batches", 5))
    beam_workers: int = 2
    enable_cache: bool = True
    thresholds: EvalThresholds = EvalThresholds()

    def __post_init__(self):
        if self.selector not in SELECTOR_METHODS:
            raise ValueError(f"selector must be one of {SELECTOR_METHODS}, got {self.selector!r}")
        if self.beam_workers < 1:
            raise ValueError(f"beam_workers must be >= 1, got {self.beam_workers}")
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
        # Beam's DirectRunner would first try Prism (a binary it downloads at run
        # time); name the runner it falls back to, so every run behaves the same.
        runner = "--runner=FnApiRunner"
        if self.beam_workers == 1:
            return [runner, "--direct_running_mode=in_memory", "--direct_num_workers=1"]
        return [runner, "--direct_running_mode=multi_processing",
                f"--direct_num_workers={self.beam_workers}"]

    def pipeline_arguments(self, pipeline_root: Optional[str] = None,
                           serving_model_dir: Optional[str] = None) -> Dict[str, Any]:
        """``create_pipeline``'s arguments common to every runner (each adds its own)."""
        from pipeline import evaluation  # Not at import: evaluation imports this module.
        return dict(
            pipeline_name=self.pipeline_name,
            pipeline_root=pipeline_root or self.pipeline_root,
            dataset_spec=self.dataset,
            custom_config=self.custom_config(),
            preprocessing_fn=PREPROCESSING_FN,
            run_fn=RUN_FN,
            selector_method=self.selector,
            selector_params=dict(self.selector_params),
            eval_config=evaluation.eval_config(self.dataset, self.thresholds),
            serving_model_dir=serving_model_dir or self.serving_model_dir,
            beam_pipeline_args=self.beam_pipeline_args,
            enable_cache=self.enable_cache)

    def custom_config(self) -> Dict[str, Any]:
        """What the module file's functions read; the code version makes caching see code edits."""
        return {"dataset_spec": self.dataset.to_json(), "model_spec": self.model.to_json(),
                "code_version": code_version()}


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
