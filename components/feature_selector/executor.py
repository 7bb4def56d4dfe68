"""FeatureSelector executor: anomaly gate, then field scores and a selection per (scenario, task)."""

import json
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from components.feature_selector import saliency
from components.feature_selector.artifact import Selection, vocabulary_fingerprint
from models import data, features
from pipeline.specs import DatasetSpec

METHODS = ("saliency", "none")
ANOMALIES_FILE = "SchemaDiff.pb"


class AnomaliesFoundError(RuntimeError):
    """ExampleValidator found anomalies: training must not start."""


def check_anomalies(anomalies: types.Artifact) -> None:
    """Raises, naming every anomalous feature, if any split has anomalies."""
    problems = []
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        path = os.path.join(anomalies.uri, f"Split-{split}", ANOMALIES_FILE)
        if not tf.io.gfile.exists(path):
            continue
        result = anomalies_pb2.Anomalies()
        result.ParseFromString(io_utils.read_bytes_file(path))
        for feature, info in sorted(result.anomaly_info.items()):
            reasons = "; ".join(r.description or r.short_description for r in info.reason)
            problems.append(f"split {split!r}, feature {feature!r}: {info.short_description} "
                            f"({reasons})")
        if result.HasField("dataset_anomaly_info"):
            problems.append(f"split {split!r}: {result.dataset_anomaly_info.short_description}")
    if problems:
        raise AnomaliesFoundError(
            "ExampleValidator found anomalies, so the run stops before training:\n  "
            + "\n  ".join(problems)
            + "\nFix the data, or update the schema if the change is expected.")


class Executor(base_executor.BaseExecutor):

    def Do(self, input_dict: Dict[str, List[types.Artifact]],
           output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
        if input_dict.get("anomalies"):
            check_anomalies(artifact_utils.get_single_instance(input_dict["anomalies"]))
        spec = DatasetSpec.from_json(exec_properties["dataset_spec"])
        method = exec_properties["method"]
        if method not in METHODS:
            raise ValueError(f"FeatureSelector: unknown method {method!r}; known: {METHODS}")
        params = json.loads(exec_properties.get("params") or "{}")
        transform_uri = artifact_utils.get_single_uri(input_dict["transform_graph"])
        examples_uri = artifact_utils.get_single_uri(input_dict["transformed_examples"])
        tft_output = tft.TFTransformOutput(transform_uri)
        scenarios = data.scenario_names(tft_output)
        fields, tasks = spec.field_names, spec.task_names
        shape = (len(scenarios), len(tasks), len(fields))

        if method == "none":
            scores, mask = np.ones(shape), np.ones(shape, np.float32)
        else:
            keep_fraction = float(params.get("keep_fraction", 0.8))
            if not 0.0 < keep_fraction <= 1.0:
                raise ValueError(f"FeatureSelector: keep_fraction must be in (0, 1], got {keep_fraction}")
            num_batches = int(params.get("num_batches", 5))
            batch_size = int(params.get("batch_size", 2048))
            seed = int(params.get("seed", 0))
            dataset = data.make_dataset(data.transformed_files(examples_uri, "train"), tft_output,
                                        spec, batch_size, shuffle=True, seed=seed)

            def batches():
                for feats, labels in dataset.take(num_batches):
                    field_ids = tf.stack([feats[f] for f in fields], axis=1)
                    yield (field_ids, feats[features.SCENARIO_ID],
                           tf.concat([labels[t] for t in tasks], axis=1))

            scores = saliency.field_saliency(
                batches(), data.field_vocab_sizes(tft_output, spec), len(scenarios), len(tasks),
                seed=seed)
            keep = max(1, int(round(keep_fraction * len(fields))))
            mask = saliency.top_k_mask(scores, keep)
            params = {"keep_fraction": keep_fraction, "num_batches": num_batches,
                      "batch_size": batch_size, "seed": seed, "keep": keep}

        selection = Selection(method, params, scenarios, tasks, fields, scores, mask,
                              vocabulary_fingerprint(transform_uri))
        output = artifact_utils.get_single_instance(output_dict["feature_selection"])
        output.set_string_custom_property("method", method)
        selection.write(output.uri)
        output.set_int_custom_property("num_fields_used", int(selection.union_mask.sum()))
        logging.info("FeatureSelector (%s): %d of %d fields used by some path", method,
                     int(selection.union_mask.sum()), len(fields))
