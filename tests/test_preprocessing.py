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
