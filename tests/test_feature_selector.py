"""The FeatureSelector executor on the small pipeline run's Transform output."""

import os
import shutil

import numpy as np
import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts

from components.feature_selector import executor
from components.feature_selector.artifact import (FeatureSelection, Selection,
                                                  SelectionMismatchError)
from components.feature_selector.saliency import top_k_mask


def _artifact(cls, uri, splits=None):
    artifact = cls()
    artifact.uri = str(uri)
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(splits)
    return artifact


def _select(pipeline_runs, out_dir, method="saliency", params='{"keep_fraction": 0.5, "seed": 3}',
            anomalies=None):
    config, first, _, _ = pipeline_runs
    inputs = {
        "transformed_examples": [_artifact(standard_artifacts.Examples,
                                           first.uri("Transform.transformed_examples"),
                                           ["train", "eval"])],
        "transform_graph": [_artifact(standard_artifacts.TransformGraph,
                                      first.uri("Transform.transform_graph"))],
    }
    if anomalies is not None:
        inputs["anomalies"] = [anomalies]
    output = _artifact(FeatureSelection, out_dir)
    executor.Executor().Do(inputs, {"feature_selection": [output]}, {
        "dataset_spec": config.dataset.to_json(), "method": method, "params": params})
    return Selection.read(str(out_dir)), output


def test_saliency_selection_shape_and_top_k(pipeline_runs, tmp_path):
    selection, output = _select(pipeline_runs, tmp_path / "a")
    config = pipeline_runs[0]
    assert selection.fields == config.dataset.field_names
    assert selection.tasks == ["click", "conversion"]
    assert len(selection.scenarios) == 5
    assert selection.mask.shape == (5, 2, len(selection.fields))
    assert np.all(selection.mask.sum(axis=-1) == 10)  # keep_fraction 0.5 of 20 fields.
    assert np.all(np.isfinite(selection.scores)) and np.all(selection.scores >= 0)
    # The selected fields are the highest-scoring ones of each cell.
    for s in range(5):
        for t in range(2):
            kept = selection.scores[s, t][selection.mask[s, t] > 0]
            dropped = selection.scores[s, t][selection.mask[s, t] == 0]
            assert kept.min() >= dropped.max()
    assert output.get_string_custom_property("method") == "saliency"


def test_selection_is_deterministic_given_a_seed(pipeline_runs, tmp_path):
    first, _ = _select(pipeline_runs, tmp_path / "a")
    second, _ = _select(pipeline_runs, tmp_path / "b")
    np.testing.assert_array_equal(first.scores, second.scores)
    other, _ = _select(pipeline_runs, tmp_path / "c", params='{"keep_fraction": 0.5, "seed": 4}')
    assert not np.array_equal(first.scores, other.scores)


def test_none_keeps_every_field(pipeline_runs, tmp_path):
    selection, _ = _select(pipeline_runs, tmp_path / "a", method="none", params="{}")
    assert selection.union_mask.sum() == len(selection.fields)


def test_mismatched_vocabulary_is_refused(pipeline_runs, tmp_path):
    config, first, _, _ = pipeline_runs
    selection, _ = _select(pipeline_runs, tmp_path / "a")
    graph = tmp_path / "graph"
    shutil.copytree(first.uri("Transform.transform_graph"), graph)
    selection.check_matches(str(graph), config.dataset.field_names)  # Same vocabularies: fine.
    vocab = graph / "transform_fn" / "assets" / "vocab_cat_00"
    vocab.write_text("a-value-never-seen\n" + vocab.read_text())
    with pytest.raises(SelectionMismatchError, match="vocabularies"):
        selection.check_matches(str(graph), config.dataset.field_names)


def test_anomalies_stop_the_run_naming_the_feature(pipeline_runs, tmp_path):
    anomalies = _artifact(standard_artifacts.ExampleAnomalies, tmp_path / "anomalies", ["train", "eval"])
    for split in ("train", "eval"):
        os.makedirs(tmp_path / "anomalies" / f"Split-{split}")
        result = anomalies_pb2.Anomalies()
        if split == "eval":
            info = result.anomaly_info["cat_03"]
            info.short_description = "Unexpected string values"
            info.reason.add(description="Examples contain values missing from the schema: zzz.")
        (tmp_path / "anomalies" / f"Split-{split}" / "SchemaDiff.pb").write_bytes(
            result.SerializeToString())
    with pytest.raises(executor.AnomaliesFoundError, match=r"split 'eval', feature 'cat_03'.*zzz"):
        _select(pipeline_runs, tmp_path / "a", anomalies=anomalies)


def test_top_k_mask_keeps_all_fields_of_an_unseen_scenario():
    scores = np.array([[[3.0, 1.0, 2.0]], [[np.nan, np.nan, np.nan]]])
    mask = top_k_mask(scores, 2)
    assert mask.tolist() == [[[1, 0, 1]], [[1, 1, 1]]]
