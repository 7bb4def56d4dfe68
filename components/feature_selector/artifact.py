"""The FeatureSelection artifact and how to read it."""

import dataclasses
import hashlib
import io
import json
import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf
from tfx.types import artifact

SELECTION_FILE = "selection.json"
MASK_FILE = "field_mask.npz"
FORMAT_VERSION = 1


class FeatureSelection(artifact.Artifact):
    """Selected fields per (scenario, task), their scores, and the vocabularies they index.

    Files: ``selection.json`` (human-readable: method, parameters, scores,
    selected fields per cell, the vocabulary fingerprint) and ``field_mask.npz``
    (``mask`` and ``scores``, float ``[num_scenarios, num_tasks, num_fields]``).
    """

    # KFP v2 wants "namespace.Name" and no typed properties: the method and the
    # number of fields used are custom properties.
    TYPE_NAME = "msmt.FeatureSelection"


class SelectionMismatchError(ValueError):
    """A selection was computed on other vocabularies than the ones in use."""


def vocabulary_fingerprint(transform_graph_uri: str) -> str:
    """SHA-256 over Transform's vocabulary files (names and contents)."""
    assets = os.path.join(transform_graph_uri, "transform_fn", "assets")
    digest = hashlib.sha256()
    for path in sorted(tf.io.gfile.glob(os.path.join(assets, "*"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


@dataclasses.dataclass
class Selection:
    method: str
    params: Dict
    scenarios: List[str]
    tasks: List[str]
    fields: List[str]
    scores: np.ndarray  # [S, T, F]
    mask: np.ndarray  # [S, T, F], 1 = selected
    vocabulary_fingerprint: str

    @property
    def union_mask(self) -> np.ndarray:
        """``[F]``: 1 for a field that any (scenario, task) path uses."""
        return (self.mask.max(axis=(0, 1)) > 0).astype(np.float32)

    def selected(self, scenario: str, task: str) -> List[str]:
        s, t = self.scenarios.index(scenario), self.tasks.index(task)
        return [f for f, m in zip(self.fields, self.mask[s, t]) if m > 0]

    def write(self, uri: str) -> None:
        tf.io.gfile.makedirs(uri)
        document = {
            "format_version": FORMAT_VERSION, "method": self.method, "params": self.params,
            "scenarios": self.scenarios, "tasks": self.tasks, "fields": self.fields,
            "vocabulary_fingerprint": self.vocabulary_fingerprint,
            "selected_fields": {s: {t: self.selected(s, t) for t in self.tasks}
                                for s in self.scenarios},
            "fields_used_by_any_path": [f for f, m in zip(self.fields, self.union_mask) if m],
            "scores": {s: {t: {f: float(self.scores[i, j, k]) for k, f in enumerate(self.fields)}
                           for j, t in enumerate(self.tasks)} for i, s in enumerate(self.scenarios)},
        }
        with tf.io.gfile.GFile(os.path.join(uri, SELECTION_FILE), "w") as f:
            json.dump(document, f, indent=1, sort_keys=False)
        buffer = io.BytesIO()  # np.savez seeks, which GFile (e.g. on GCS) cannot.
        np.savez(buffer, mask=self.mask, scores=self.scores)
        with tf.io.gfile.GFile(os.path.join(uri, MASK_FILE), "wb") as f:
            f.write(buffer.getvalue())

    @classmethod
    def read(cls, uri: str) -> "Selection":
        with tf.io.gfile.GFile(os.path.join(uri, SELECTION_FILE)) as f:
            document = json.load(f)
        if document.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{uri}: selection format_version {document.get('format_version')} "
                             f"is not {FORMAT_VERSION}")
        with tf.io.gfile.GFile(os.path.join(uri, MASK_FILE), "rb") as f:
            arrays = np.load(io.BytesIO(f.read()))
            mask, scores = arrays["mask"], arrays["scores"]
        return cls(document["method"], document["params"], document["scenarios"],
                   document["tasks"], document["fields"], scores, mask,
                   document["vocabulary_fingerprint"])

    def check_matches(self, transform_graph_uri: str, fields: Sequence[str]) -> None:
        """Refuses a selection made on other vocabularies or other fields."""
        fingerprint = vocabulary_fingerprint(transform_graph_uri)
        if fingerprint != self.vocabulary_fingerprint:
            raise SelectionMismatchError(
                f"the feature selection was computed on vocabularies {self.vocabulary_fingerprint[:12]}"
                f" but the Transform graph {transform_graph_uri} has {fingerprint[:12]}; "
                "re-run the FeatureSelector on this Transform output")
        if list(fields) != self.fields:
            raise SelectionMismatchError(
                f"the feature selection covers fields {self.fields}, the model uses {list(fields)}")
