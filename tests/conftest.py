"""Shared fixtures: one small synthetic pipeline run, made once per test session."""

import dataclasses
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
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


# Run with pytest-xdist (./run_tests.sh starts 2 workers, --dist loadgroup), every test that
# needs one of these session fixtures goes to one worker, so each pipeline runs once.
SHARED_RUN_FIXTURES = ("pipeline_runs", "blessing_runs")


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups.
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture in SHARED_RUN_FIXTURES:
            if fixture in item.fixturenames:
                item.add_marker(pytest.mark.xdist_group(fixture))
                break


def planted_field_batches(vocab, rows=3000, num_scenarios=2, batch=1000, seed=0,
                          unknown_rows=0, effects=(-1.5, -0.5, 0.5, 1.5), silent_cell=None):
    """A selector's ``BatchesFn`` over planted data: field 0 drives task 0, field 1 task 1.

    Both in every scenario; the other fields of ``vocab`` are noise. Value ``i`` of
    fields 0 and 1 (4 values each) adds ``effects[i]`` to its task's logit.
    ``unknown_rows`` rows carry the unseen-scenario id ``num_scenarios``;
    ``silent_cell = (s, t)`` sets that cell's labels to 0 (no signal to score).
    """
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, v, rows) for v in vocab], 1)
    scenario_id = rng.integers(0, num_scenarios, rows)
    values = np.array(effects)
    logits = np.stack([values[ids[:, 0]], values[ids[:, 1]]], 1) - 1.0
    labels = (rng.random((rows, 2)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    if silent_cell is not None:
        labels[scenario_id == silent_cell[0], silent_cell[1]] = 0.0
    scenario_id[:unknown_rows] = num_scenarios

    def batches_fn():
        for start in range(0, rows, batch):
            stop = start + batch
            yield ids[start:stop], scenario_id[start:stop], labels[start:stop]
    return batches_fn


def small_model_spec(epochs: int = 4) -> specs.ModelSpec:
    return specs.load_model_spec("mmoe").with_training(epochs=epochs, batch_size=256)


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


def write_degraded_split(data_path: str, directory: str, seed: int = 0):
    """Train/eval files of ``data_path`` (eval: row_id % 5 == 0), and a second train file
    in which the largest scenario's labels are shuffled (its rows' (click, conversion)
    pairs permuted, so conversion still implies click). Returns the paths and the scenario.
    """
    import pandas as pd
    frame = pd.read_csv(data_path)
    is_eval = frame["row_id"] % 5 == 0
    train, evaluation = frame[~is_eval], frame[is_eval]
    scenario = train["domain"].value_counts().idxmax()
    rows = np.flatnonzero((train["domain"] == scenario).to_numpy())
    degraded = train.copy()
    order = np.random.default_rng(seed).permutation(rows)
    for label in ("click", "conversion"):
        column = degraded.columns.get_loc(label)
        degraded.iloc[rows, column] = train.iloc[order, column].to_numpy()
    paths = {name: os.path.join(directory, f"{name}.csv.gz")
             for name in ("train", "eval", "train_degraded")}
    for name, part in (("train", train), ("eval", evaluation), ("train_degraded", degraded)):
        part.to_csv(paths[name], index=False)
    channel = train.loc[train["domain"] == scenario, "channel"].iloc[0]
    return paths, f"{channel}/{scenario}"


@pytest.fixture(scope="session")
def blessing_runs(synthetic_data, tmp_path_factory):
    """A good model, then a degraded one, in one pipeline (one root, one MLMD store).

    The eval file is the same for both; the second run's train file has the
    largest scenario's labels shuffled. Returns the config of each run, their
    RunResults and the degraded scenario slice ("channel/domain").
    """

    from pipeline import configs, local_runner, report

    data_path, _ = synthetic_data
    paths, degraded_scenario = write_degraded_split(
        data_path, str(tmp_path_factory.mktemp("blessing_data")))
    base = specs.load_dataset_spec("synthetic")
    output_dir = str(tmp_path_factory.mktemp("blessing_runs"))
    model = small_model_spec(epochs=6).with_training(batch_size=128)
    results = []
    for train in (paths["train"], paths["train_degraded"]):
        spec = dataclasses.replace(
            base, files=(specs.InputFile(train, "train"), specs.InputFile(paths["eval"], "eval")),
            split_method="files", split_key=None)
        # The floor is low: the smallest slices have a few dozen positives, and the good
        # run must be blessed; the no-regression bound is what the degraded run trips.
        config = configs.PipelineConfig(
            dataset=spec, model=model, output_dir=output_dir,
            pipeline_name="msmt-blessing", beam_workers=1,
            thresholds=configs.EvalThresholds(auc_floor=0.4, max_auc_regression=0.03))
        local_runner.run(config)
        results.append((config, report.load_run(config.metadata_path, spec)))
    return results[0], results[1], degraded_scenario
