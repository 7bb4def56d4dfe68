"""Multi-worker training: two Trainer processes on 127.0.0.1 train one model together.

A tiny real Transform output (tf.Transform on our preprocessing_fn over 1,500
synthetic rows) is made in-process; then two worker processes, each with its own
TF_CONFIG, run the real ``run_fn`` with ``training.strategy: multi_worker``
(MultiWorkerMirroredStrategy: every step all-reduces across both, so neither can
finish alone). The chief writes the one SavedModel, which must load and serve raw
tf.Examples; the other worker writes its copy to a temporary directory and removes it.

Also runnable as ``python tests/test_multi_worker.py ARGS.json``: one worker.
"""

import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_TIMEOUT_S = 900  # Generous: about 1 minute on an idle 2-core machine, far more on a busy one.
ROWS = 1500


def _worker_main(args_path: str) -> None:
    """One worker: FnArgs as the Trainer would pass them, then the real run_fn."""
    sys.path.insert(0, REPO_DIR)
    import logging
    from absl import logging as absl_logging
    from tfx.components.trainer.fn_args_utils import FnArgs
    from models import module
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.INFO)  # The strategy logs its cluster.
    with open(args_path) as f:
        args = json.load(f)
    module.run_fn(FnArgs(**args))


def _free_ports(n: int):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


if __name__ == "__main__":
    _worker_main(sys.argv[1])
    sys.exit(0)


import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import specs, synthetic  # noqa: E402


def _numerical(spec: specs.DatasetSpec):
    return {f.name for f in spec.numerical_fields}


def _raw_feature_spec(spec: specs.DatasetSpec):
    feature_spec = {name: tf.io.FixedLenFeature([], tf.string)
                    for name in list(spec.field_names) + list(spec.scenario_columns)
                    if name not in _numerical(spec)}
    feature_spec.update({name: tf.io.FixedLenFeature([], tf.float32) for name in _numerical(spec)})
    feature_spec.update({task: tf.io.FixedLenFeature([], tf.int64) for task in spec.task_names})
    return feature_spec


def _raw_rows(frame: pd.DataFrame, spec: specs.DatasetSpec):
    numerical = _numerical(spec)
    rows = []
    for record in frame.to_dict("records"):
        row = {}
        for name in list(spec.field_names) + list(spec.scenario_columns):
            row[name] = float(record[name]) if name in numerical else str(record[name])
        row.update({task: int(record[task]) for task in spec.task_names})
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def transform_output(tmp_path_factory):
    """``(spec, frame, graph_dir, examples_pattern)``: a real tf.Transform output, in-process."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from tensorflow_transform.tf_metadata import dataset_metadata
    from models import preprocessing

    root = tmp_path_factory.mktemp("multi_worker")
    synthetic.generate(str(root / "raw"), synthetic.SyntheticConfig(rows=ROWS, seed=3))
    spec = specs.load_dataset_spec("synthetic").with_files([str(root / "raw" / "data.csv.gz")])
    frame = pd.read_csv(root / "raw" / "data.csv.gz")
    raw_metadata = dataset_metadata.DatasetMetadata.from_feature_spec(_raw_feature_spec(spec))
    graph_dir, examples_dir = str(root / "transform_graph"), str(root / "examples")

    options = PipelineOptions(["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    with beam.Pipeline(options=options) as pipeline, tft_beam.Context(temp_dir=str(root / "tmp")):
        raw = pipeline | beam.Create(_raw_rows(frame, spec))
        (transformed, transformed_metadata), transform_fn = (
            (raw, raw_metadata)
            | tft_beam.AnalyzeAndTransformDataset(lambda x: preprocessing.transform(x, spec)))
        _ = transform_fn | tft_beam.WriteTransformFn(graph_dir)
        _ = raw_metadata | "RawMetadata" >> tft_beam.WriteMetadata(
            os.path.join(graph_dir, tft.TFTransformOutput.RAW_METADATA_DIR), pipeline)
        coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
        _ = (transformed | beam.Map(coder.encode)
             | beam.io.WriteToTFRecord(os.path.join(examples_dir, "part"), file_name_suffix=".gz"))
    return spec, frame, graph_dir, os.path.join(examples_dir, "part*.gz")


def _model_spec() -> specs.ModelSpec:
    return specs.load_model_spec("mmoe").with_training(
        strategy="multi_worker", epochs=2, batch_size=128, steps_per_epoch=4, eval_steps=2)


def _run_workers(tmp_path, fn_args_per_worker):
    """Starts one process per worker with its TF_CONFIG; returns their (returncode, log)."""
    ports = _free_ports(len(fn_args_per_worker))
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes, logs = [], []
    try:
        for index, fn_args in enumerate(fn_args_per_worker):
            args_path = tmp_path / f"worker_{index}.json"
            args_path.write_text(json.dumps(fn_args))
            tmpdir = tmp_path / f"tmp_{index}"
            tmpdir.mkdir()
            env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TMPDIR": str(tmpdir),
                   "PYTHONPATH": REPO_DIR, "CUDA_VISIBLE_DEVICES": "",
                   "TF_CONFIG": json.dumps({"cluster": cluster,
                                            "task": {"type": "worker", "index": index}})}
            log = open(tmp_path / f"worker_{index}.log", "w+")
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), str(args_path)], cwd=REPO_DIR,
                env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + WORKER_TIMEOUT_S
        while time.time() < deadline and any(p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break  # One failed: the other would wait for it forever.
            time.sleep(1)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, log in zip(processes, logs):
        log.seek(0)
        results.append((p.returncode, log.read()))
        log.close()
    return results


def test_two_workers_train_one_model(transform_output, tmp_path):
    from pipeline import configs
    spec, frame, graph_dir, examples = transform_output
    custom_config = {"dataset_spec": spec.to_json(), "model_spec": _model_spec().to_json(),
                     "code_version": configs.code_version()}
    fn_args = [{"train_files": [examples], "eval_files": [examples],
                "transform_graph_path": graph_dir, "custom_config": custom_config,
                "serving_model_dir": str(tmp_path / f"worker_{i}" / "serving"),
                "model_run_dir": str(tmp_path / f"worker_{i}" / "model_run")} for i in range(2)]

    results = _run_workers(tmp_path, fn_args)
    codes = [code for code, _ in results]
    if any(codes):
        # The first to fail on its own (the others were killed after it, -9, or timed out).
        index = next((i for i, c in enumerate(codes) if c not in (0, -9)), codes.index(-9))
        pytest.fail(f"worker exit codes {codes} (-9: killed, after another failed or "
                    f"{WORKER_TIMEOUT_S} s); worker {index}'s log ends:\n{results[index][1][-4000:]}")
    for code, log in results:
        assert "MultiWorkerMirroredStrategy" in log and "num_workers = 2" in log, log[-2000:]

    # One SavedModel, the chief's (worker 0); worker 1 saved to a temporary dir, then removed it.
    chief_serving = fn_args[0]["serving_model_dir"]
    assert os.path.exists(os.path.join(chief_serving, "saved_model.pb"))
    assert os.path.exists(os.path.join(fn_args[0]["model_run_dir"], "data_info.json"))
    assert not os.path.exists(fn_args[1]["serving_model_dir"])
    assert not os.path.exists(os.path.join(fn_args[1]["model_run_dir"], "data_info.json"))
    assert os.listdir(tmp_path / "tmp_1") == [], "worker 1 left its temporary copy behind"

    # It loads and serves raw tf.Examples (Transform inside).
    from models.training import SCENARIO_KNOWN, SERVING_SIGNATURE
    served = tf.saved_model.load(chief_serving).signatures[SERVING_SIGNATURE]
    raw_spec = _raw_feature_spec(spec)
    serialized = []
    for row in _raw_rows(frame.head(32), spec):
        feature = {}
        for name, value in row.items():
            if raw_spec[name].dtype == tf.string:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
            elif raw_spec[name].dtype == tf.float32:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        serialized.append(tf.train.Example(features=tf.train.Features(feature=feature))
                          .SerializeToString())
    outputs = served(examples=tf.constant(serialized))
    for task in spec.task_names:
        p = outputs[task].numpy()
        assert p.shape == (32,) and np.all((p > 0) & (p < 1)), (task, p)
    np.testing.assert_array_equal(outputs[SCENARIO_KNOWN].numpy(), np.ones(32))


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    from models import distribute
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(distribute.DistributeConfigError, match="needs TF_CONFIG"):
        distribute.make_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    with pytest.raises(distribute.DistributeConfigError, match="TF_CONFIG is malformed"):
        distribute.make_strategy("multi_worker")


def test_strategy_is_validated_in_the_model_spec(tmp_path):
    import yaml
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"architecture": "mmoe", "training": {"strategy": "multiworker"}}))
    with pytest.raises(specs.SpecError, match=r"training.strategy.*did you mean 'multi_worker'"):
        specs.load_model_spec(str(path))
    path.write_text(yaml.safe_dump({"architecture": "mmoe", "training": {"strategy": "multi_worker"}}))
    assert specs.load_model_spec(str(path)).training_dict["strategy"] == "multi_worker"
