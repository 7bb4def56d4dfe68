"""The FeatureSelector executor and its artifact on the small pipeline run's Transform output."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import artifact_utils, standard_artifacts

from components.feature_selector import executor
from components.feature_selector.artifact import (FeatureSelection, Selection,
                                                  SelectionMismatchError)
from components.feature_selector.saliency import top_k_mask
from pipeline import configs, specs


def _artifact(cls, uri, splits=None):
    artifact = cls()
    artifact.uri = str(uri)
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(splits)
    return artifact


def _select(pipeline_runs, out_dir, method="saliency", params='{"compress_ratio": 0.5, "seed": 3}',
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
    assert np.all(selection.mask.sum(axis=-1) == 10)  # compress_ratio 0.5 of 20 fields.
    assert np.all(np.isfinite(selection.scores)) and np.all(selection.scores >= 0)
    # The selected fields are the highest-scoring ones of each cell.
    for s in range(5):
        for t in range(2):
            kept = selection.scores[s, t][selection.mask[s, t] > 0]
            dropped = selection.scores[s, t][selection.mask[s, t] == 0]
            assert kept.min() >= dropped.max()
    assert output.get_string_custom_property("method") == "saliency"


def test_selection_is_deterministic_given_a_seed(pipeline_runs, tmp_path):
    tf.random.set_seed(None)
    first, _ = _select(pipeline_runs, tmp_path / "a")
    tf.random.set_seed(12345)  # whatever ran before in the process does not change the passes
    second, _ = _select(pipeline_runs, tmp_path / "b")
    np.testing.assert_array_equal(first.scores, second.scores)
    np.testing.assert_array_equal(first.mask, second.mask)
    np.testing.assert_array_equal(first.shared_mask, second.shared_mask)
    np.testing.assert_array_equal(first.diagnostics["raw_scores"], second.diagnostics["raw_scores"])
    assert first.params == second.params
    other, _ = _select(pipeline_runs, tmp_path / "c", params='{"compress_ratio": 0.5, "seed": 4}')
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


def _vocab_sizes(pipeline_runs):
    import tensorflow_transform as tft
    from models import data
    config, first, _, _ = pipeline_runs
    return data.field_vocab_sizes(tft.TFTransformOutput(first.uri("Transform.transform_graph")),
                                  config.dataset)


MULTISFS_FAST = '{"gnn_epochs": 3, "num_batches": 2, "seed": 1}'


def test_multisfs_artifact_round_trips(pipeline_runs, tmp_path):
    first, output = _select(pipeline_runs, tmp_path / "a", "multisfs", MULTISFS_FAST)
    assert output.get_string_custom_property("method") == "multisfs"
    assert output.get_float_custom_property("seconds") > 0
    # Relations [F, P, P] as an array in the npz; timings as scalars in the JSON.
    pairs = len(first.scenarios) * len(first.tasks)
    assert first.diagnostics["relations"].shape == (len(first.fields), pairs, pairs)
    document = json.loads((tmp_path / "a" / "selection.json").read_text())
    assert document["format_version"] == 2 and document["seconds"] == first.seconds
    assert "relations" in document["diagnostic_arrays"]
    assert isinstance(document["diagnostics"]["gnn_seconds"], float)
    assert document["shared_fields"][first.scenarios[0]] == [
        f for f, m in zip(first.fields, first.shared_mask[0]) if m]
    # Written again, read again: the same selection.
    first.write(str(tmp_path / "c"))
    again = Selection.read(str(tmp_path / "c"))
    np.testing.assert_array_equal(again.mask, first.mask)
    np.testing.assert_array_equal(again.diagnostics["raw_scores"], first.diagnostics["raw_scores"])
    assert again.params == first.params and again.vocab_sizes == first.vocab_sizes


def test_multifs_value_masks_line_up_with_the_vocabularies(pipeline_runs, tmp_path):
    config = pipeline_runs[0]
    selection, _ = _select(pipeline_runs, tmp_path / "a", "multifs",
                           '{"search_epochs": 1, "max_steps_per_epoch": 3}')
    sizes = _vocab_sizes(pipeline_runs)
    assert selection.vocab_sizes == sizes
    assert [m.shape for m in selection.value_masks] == [(5, v) for v in sizes]
    document = json.loads((tmp_path / "a" / "selection.json").read_text())
    field = config.dataset.field_names[0]
    assert document["values_kept"][field]["vocab_size"] == sizes[0]
    assert document["values_kept"][field][selection.scenarios[0]] == int(
        selection.value_masks[0][0].sum())
    round_trip = Selection.read(str(tmp_path / "a"))
    for a, b in zip(round_trip.value_masks, selection.value_masks):
        np.testing.assert_array_equal(a, b)


def test_mismatched_value_mask_shapes_are_refused(pipeline_runs, tmp_path):
    config, first, _, _ = pipeline_runs
    sizes = _vocab_sizes(pipeline_runs)
    selection, _ = _select(pipeline_runs, tmp_path / "a", "none", "{}")
    selection.value_masks = [np.ones([5, v]) for v in sizes]
    graph = first.uri("Transform.transform_graph")
    selection.check_matches(graph, config.dataset.field_names, sizes)  # Aligned: fine.
    selection.value_masks[3] = np.ones([5, sizes[3] + 1])
    with pytest.raises(SelectionMismatchError, match=config.dataset.field_names[3]):
        selection.check_matches(graph, config.dataset.field_names, sizes)


@pytest.mark.parametrize("method", ["mi", "chi2", "lasso"])
def test_baselines_run_in_the_executor(pipeline_runs, tmp_path, method):
    selection, output = _select(pipeline_runs, tmp_path / "a", method,
                                '{"k": 12, "max_rows": 3000, "shared": "intersection"}')
    assert np.all(selection.mask.sum(axis=-1) == 12)
    np.testing.assert_array_equal(selection.shared_mask, selection.mask.min(axis=1))
    assert output.get_int_custom_property("num_fields_used") == int(selection.union_mask.sum())


def test_bad_selector_params_name_the_key_before_the_run(pipeline_runs, tmp_path):
    config = pipeline_runs[0]
    with pytest.raises(specs.SpecError, match="compres_ratio"):
        configs.PipelineConfig(dataset=config.dataset, model=config.model, output_dir=str(tmp_path),
                               selector="multisfs", selector_params=(("compres_ratio", 0.3),))
    with pytest.raises(specs.SpecError, match="search_epochs"):
        configs.PipelineConfig(dataset=config.dataset, model=config.model, output_dir=str(tmp_path),
                               selector="multifs", selector_params=(("search_epochs", 0),))
    with pytest.raises(ValueError, match="gnn"):
        _select(pipeline_runs, tmp_path / "a", "saliency", '{"gnn": true}')
    assert configs.parse_selector_params(["k=5", "gnn=false", "shared=intersection"]) == (
        ("gnn", False), ("k", 5), ("shared", "intersection"))
    with pytest.raises(specs.SpecError, match="KEY=VALUE"):
        configs.parse_selector_params(["k"])
