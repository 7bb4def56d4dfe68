"""Shared fixtures: one small synthetic pipeline run, made once per test session."""

import dataclasses
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so MirroredStrategy can be tested without GPUs. This must
# happen before TensorFlow initialises its devices, hence here.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

from pipeline import specs, synthetic  # noqa: E402

SHARED_DATA = os.path.join(specs.REPO_DIR, "..", "shared", "data")
E2E_ROWS = 6000


def small_model_spec(epochs: int = 4) -> specs.ModelSpec:
    model = specs.load_model_spec("mmoe")
    training = {**model.training_dict, "epochs": epochs, "batch_size": 256}
    return dataclasses.replace(model, training=tuple(sorted(training.items())))


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("synthetic")
    truth = synthetic.generate(str(directory), synthetic.SyntheticConfig(rows=E2E_ROWS, seed=7))
    return str(directory / "data.csv.gz"), truth


@pytest.fixture(scope="session")
def pipeline_runs(synthetic_data, tmp_path_factory):
    """The whole pipeline run three times on the same inputs.

    The second run has one new input: the first run's blessed model, now the
    Evaluator's baseline. Everything up to the Trainer comes from cache, the
    Evaluator compares against the baseline; the third run is cached throughout.
    """
    from pipeline import configs, local_runner, report

    data_path, truth = synthetic_data
    spec = specs.load_dataset_spec("synthetic").with_files([data_path])
    config = configs.PipelineConfig(
        dataset=spec, model=small_model_spec(), output_dir=str(tmp_path_factory.mktemp("runs")),
        beam_workers=1, thresholds=configs.EvalThresholds(auc_floor=0.5, max_auc_regression=0.05))
    local_runner.run(config)
    first = report.load_run(config.metadata_path, spec)
    local_runner.run(config)
    second = report.load_run(config.metadata_path, spec)
    local_runner.run(config)
    third = report.load_run(config.metadata_path, spec)
    return config, first, (second, third), truth
