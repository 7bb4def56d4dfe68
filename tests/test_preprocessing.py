"""preprocessing_fn on tiny data through tft_beam."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from models import features, module
from pipeline import specs

SPEC_YAML = """
name: tiny
inputs: {files: data.csv}
scenario: {hierarchy: [channel, domain]}
tasks:
  - {name: click, label: click}
  - {name: conversion, label: conversion, depends_on: click}
categorical_fields: [{name: color, frequency_threshold: 2}]
numerical_fields: [{name: price, buckets: 2}]
"""


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    (directory / "spec.yaml").write_text(SPEC_YAML)
    spec = specs.load_dataset_spec(str(directory / "spec.yaml"))
    rows = [
        {"channel": "app", "domain": "home", "color": "red", "price": 1.0, "click": 1, "conversion": 1},
        {"channel": "app", "domain": "home", "color": "red", "price": 2.0, "click": 0, "conversion": 0},
        {"channel": "app", "domain": "home", "color": "blue", "price": 3.0, "click": 1, "conversion": 0},
        {"channel": "web", "domain": "cart", "color": "blue", "price": 4.0, "click": 0, "conversion": 0},
        {"channel": "web", "domain": "cart", "color": "green", "price": math.nan, "click": 1, "conversion": 0},
    ]
    feature_spec = {
        "channel": tf.io.FixedLenFeature([1], tf.string),
        "domain": tf.io.FixedLenFeature([1], tf.string),
        "color": tf.io.FixedLenFeature([1], tf.string),
        "price": tf.io.FixedLenFeature([1], tf.float32),
        "click": tf.io.FixedLenFeature([1], tf.int64),
        "conversion": tf.io.FixedLenFeature([1], tf.int64),
    }
    raw = [{k: [v] if not isinstance(v, str) else [v.encode()] for k, v in row.items()} for row in rows]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(feature_spec))
    config = {"dataset_spec": spec.to_json()}
    with tft_beam.Context(temp_dir=str(directory / "tft_tmp")):
        (result, _), transform_fn = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: module.preprocessing_fn(inputs, config), output_record_batches=False)
    transform_dir = str(directory / "transform_fn")
    _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
    return result, tft.TFTransformOutput(transform_dir)


def test_categorical_vocabulary_with_threshold_and_oov(transformed):
    rows, output = transformed
    vocab = [v.decode() for v in output.vocabulary_by_name(features.vocabulary_name("color"))]
    assert vocab == ["red", "blue"] or vocab == ["blue", "red"]  # "green" is below the threshold.
    ids = [r["color"] for r in rows]
    assert ids[0] == vocab.index("red") and ids[2] == vocab.index("blue")
    assert ids[4] == len(vocab)  # The OOV id.


def test_numerical_buckets_and_missing_bucket(transformed):
    rows, _ = transformed
    buckets = [r["price"] for r in rows]
    assert set(buckets[:4]) <= {0, 1}
    assert buckets[0] <= buckets[3]  # Monotone in price.
    assert buckets[4] == 2  # NaN: the dedicated missing id (= number of buckets).


def test_scenario_ids_and_hierarchy_levels(transformed):
    rows, output = transformed
    scenarios = [v.decode() for v in output.vocabulary_by_name(features.SCENARIO_VOCABULARY)]
    assert scenarios == ["app/home", "web/cart"]  # Frequency order.
    assert [r[features.SCENARIO_ID] for r in rows] == [0, 0, 0, 1, 1]
    assert [r[features.scenario_level_id(0)] for r in rows] == [0, 0, 0, 1, 1]


def test_labels_pass_through_as_floats(transformed):
    rows, _ = transformed
    assert [r["click"] for r in rows] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert [r["conversion"] for r in rows] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert isinstance(rows[0]["click"], (float, np.floating))


def test_bucketize_columns_equals_tft_elementwise_bucketize(tmp_path):
    """One batched searchsorted gives tft.bucketize(elementwise=True)'s ids, ties included."""
    from models.preprocessing import bucketize_columns
    rng = np.random.default_rng(0)
    # Column 0 continuous, column 1 heavy ties (values equal to boundaries), column 2 skewed.
    x = np.stack([rng.normal(size=400), rng.integers(0, 5, 400).astype(float),
                  rng.exponential(size=400)], axis=1).astype(np.float32)
    raw = [{"x": row} for row in x]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {"x": tf.io.FixedLenFeature([3], tf.float32)}))

    def preprocessing_fn(inputs):
        return {"ours": bucketize_columns(inputs["x"], 4),
                "tft": tft.bucketize(inputs["x"], 4, elementwise=True)}

    with tft_beam.Context(temp_dir=str(tmp_path)):
        (rows, _), _ = (raw, metadata) | tft_beam.AnalyzeAndTransformDataset(
            preprocessing_fn, output_record_batches=False)
    ours = np.array([r["ours"] for r in rows])
    theirs = np.array([r["tft"] for r in rows])
    np.testing.assert_array_equal(ours, theirs)
    assert ours.shape == (400, 3) and set(np.unique(ours[:, 0])) == {0, 1, 2, 3}


def test_bucket_ids_have_their_domain_in_the_transformed_schema(transformed):
    _, output = transformed
    schema = output.transformed_metadata.schema
    price = next(f for f in schema.feature if f.name == "price")
    assert (price.int_domain.min, price.int_domain.max) == (0, 2)  # 2 buckets + missing.
