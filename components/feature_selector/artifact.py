"""The FeatureSelection artifact and how to read it."""

import dataclasses
import hashlib
import io
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from tfx.types import artifact

SELECTION_FILE = "selection.json"
MASK_FILE = "field_mask.npz"
FORMAT_VERSION = 2
_DIAGNOSTIC_PREFIX = "diagnostics/"
_VALUE_MASK_PREFIX = "value_mask/"


class FeatureSelection(artifact.Artifact):
    """Selected fields per (scenario, task), their scores, and the vocabularies they index.

    Files: ``selection.json`` (human-readable: method, parameters, seconds, scores,
    selected fields per cell, the shared set per scenario, values kept per field
    and scenario for value-level methods, scalar diagnostics, the vocabulary
    fingerprint and sizes) and ``field_mask.npz`` (``mask`` and ``scores``, float
    ``[S, T, F]``; ``shared_mask`` ``[S, F]`` when the method gives one;
    ``value_mask/<field>`` ``[S, vocab_size_f]`` for value-level methods, rows
    aligned to Transform's vocabulary ids; ``diagnostics/<name>`` arrays).
    """

    # KFP v2 wants "namespace.Name" and no typed properties: the method, the number of
    # fields used and the seconds the method took are custom properties.
    TYPE_NAME = "msmt.FeatureSelection"


class SelectionMismatchError(ValueError):
    """A selection was computed on other vocabularies (or fields) than the ones in use."""


def vocabulary_fingerprint(transform_graph_uri: str) -> str:
    """SHA-256 over Transform's vocabulary files (names and contents)."""
    assets = os.path.join(transform_graph_uri, "transform_fn", "assets")
    digest = hashlib.sha256()
    for path in sorted(tf.io.gfile.glob(os.path.join(assets, "*"))):
        digest.update(os.path.basename(path).encode() + b"\0")
        with tf.io.gfile.GFile(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass
class Selection:
    """What a FeatureSelector run decided, in the Trainer's terms.

    ``mask[s, t, f] = 1``: the (scenario, task) path reads field ``f``.
    ``shared_mask[s, f]`` (optional): the fields scenario ``s``'s shared parts
    read (e.g. MultiSFS's union or intersection of the scenario's task sets);
    without it, the union over the scenario's tasks. ``value_masks`` (optional):
    per field ``[S, vocab_size_f]``, 1 = the value's embedding row is kept in the
    scenario (MultiFS).
    """

    method: str
    params: Dict
    scenarios: List[str]
    tasks: List[str]
    fields: List[str]
    scores: np.ndarray  # [S, T, F]
    mask: np.ndarray  # [S, T, F], 1 = selected
    vocabulary_fingerprint: str
    shared_mask: Optional[np.ndarray] = None  # [S, F]
    value_masks: Optional[List[np.ndarray]] = None  # per field [S, vocab_size_f]
    diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0  # Wall time of the method itself.
    vocab_sizes: Optional[List[int]] = None  # Per field, as the selection saw them.

    def __post_init__(self):
        self.scores = np.asarray(self.scores, np.float64)
        self.mask = np.asarray(self.mask, np.float32)
        expected = (len(self.scenarios), len(self.tasks), len(self.fields))
        for name, array in (("scores", self.scores), ("mask", self.mask)):
            if array.shape != expected:
                raise ValueError(f"selection {name} has shape {array.shape}, expected "
                                 f"[scenarios, tasks, fields] = {expected}")
        if self.shared_mask is not None:
            self.shared_mask = np.asarray(self.shared_mask, np.float32)
            if self.shared_mask.shape != expected[::2]:
                raise ValueError(f"selection shared_mask has shape {self.shared_mask.shape}, "
                                 f"expected [scenarios, fields] = {expected[::2]}")
        if self.value_masks is not None:
            if len(self.value_masks) != len(self.fields):
                raise ValueError(f"selection has {len(self.value_masks)} value masks for "
                                 f"{len(self.fields)} fields")
            self.value_masks = [np.asarray(m, np.float32) for m in self.value_masks]
            for field, m in zip(self.fields, self.value_masks):
                if m.ndim != 2 or m.shape[0] != len(self.scenarios):
                    raise ValueError(f"value mask of field {field!r} has shape {m.shape}, "
                                     f"expected [{len(self.scenarios)}, vocab_size]")

    @property
    def scenario_mask(self) -> np.ndarray:
        """``[S, F]``: the fields each scenario's shared parts read."""
        if self.shared_mask is not None:
            return self.shared_mask
        return (self.mask.max(axis=1) > 0).astype(np.float32)

    @property
    def union_mask(self) -> np.ndarray:
        """``[F]``: 1 for a field that any (scenario, task) path uses (and has a kept value)."""
        used = (self.mask.max(axis=(0, 1)) > 0) | (self.scenario_mask.max(axis=0) > 0)
        if self.value_masks is not None:
            used &= np.array([m.max() > 0 for m in self.value_masks])
        return used.astype(np.float32)

    def selected(self, scenario: str, task: str) -> List[str]:
        s, t = self.scenarios.index(scenario), self.tasks.index(task)
        return [f for f, m in zip(self.fields, self.mask[s, t]) if m > 0]

    def write(self, uri: str) -> None:
        tf.io.gfile.makedirs(uri)
        scalars = {k: v for k, v in self.diagnostics.items()
                   if not isinstance(v, np.ndarray) and _jsonable(v)}
        arrays = {k: np.asarray(v) for k, v in self.diagnostics.items() if k not in scalars}
        document = {
            "format_version": FORMAT_VERSION, "method": self.method, "params": self.params,
            "seconds": float(self.seconds),
            "scenarios": self.scenarios, "tasks": self.tasks, "fields": self.fields,
            "vocabulary_fingerprint": self.vocabulary_fingerprint,
            "vocab_sizes": self.vocab_sizes,
            "selected_fields": {s: {t: self.selected(s, t) for t in self.tasks}
                                for s in self.scenarios},
            "shared_fields": {s: [f for f, m in zip(self.fields, self.scenario_mask[i]) if m > 0]
                              for i, s in enumerate(self.scenarios)},
            "has_shared_mask": self.shared_mask is not None,
            "fields_used_by_any_path": [f for f, m in zip(self.fields, self.union_mask) if m],
            "scores": {s: {t: {f: float(self.scores[i, j, k]) for k, f in enumerate(self.fields)}
                           for j, t in enumerate(self.tasks)} for i, s in enumerate(self.scenarios)},
            "diagnostics": scalars,
            "diagnostic_arrays": sorted(arrays),
        }
        if self.value_masks is not None:
            document["values_kept"] = {
                f: {s: int(m[i].sum()) for i, s in enumerate(self.scenarios)} | {
                    "vocab_size": int(m.shape[1])}
                for f, m in zip(self.fields, self.value_masks)}
        with tf.io.gfile.GFile(os.path.join(uri, SELECTION_FILE), "w") as f:
            json.dump(document, f, indent=1, sort_keys=False)
        npz = {"mask": self.mask, "scores": self.scores}
        if self.shared_mask is not None:
            npz["shared_mask"] = self.shared_mask
        for field, m in zip(self.fields, self.value_masks or []):
            npz[_VALUE_MASK_PREFIX + field] = m
        npz.update({_DIAGNOSTIC_PREFIX + k: v for k, v in arrays.items()})
        buffer = io.BytesIO()  # np.savez seeks, which GFile (e.g. on GCS) cannot.
        np.savez(buffer, **npz)
        with tf.io.gfile.GFile(os.path.join(uri, MASK_FILE), "wb") as f:
            f.write(buffer.getvalue())

    @classmethod
    def read(cls, uri: str) -> "Selection":
        path = os.path.join(uri, SELECTION_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{uri} holds no feature selection ({SELECTION_FILE} missing)")
        with tf.io.gfile.GFile(path) as f:
            document = json.load(f)
        if document.get("format_version") != FORMAT_VERSION:
            raise SelectionMismatchError(
                f"{uri}: selection format_version {document.get('format_version')} is not "
                f"{FORMAT_VERSION}; re-run the FeatureSelector (e.g. `msmt run --no-cache`)")
        with tf.io.gfile.GFile(os.path.join(uri, MASK_FILE), "rb") as f:
            arrays = dict(np.load(io.BytesIO(f.read())))
        fields = document["fields"]
        value_masks = None
        if any(k.startswith(_VALUE_MASK_PREFIX) for k in arrays):
            value_masks = [arrays[_VALUE_MASK_PREFIX + f] for f in fields]
        diagnostics = dict(document.get("diagnostics", {}))
        diagnostics.update({k[len(_DIAGNOSTIC_PREFIX):]: v for k, v in arrays.items()
                            if k.startswith(_DIAGNOSTIC_PREFIX)})
        return cls(document["method"], document["params"], document["scenarios"],
                   document["tasks"], fields, arrays["scores"], arrays["mask"],
                   document["vocabulary_fingerprint"], shared_mask=arrays.get("shared_mask"),
                   value_masks=value_masks, diagnostics=diagnostics,
                   seconds=float(document.get("seconds", 0.0)),
                   vocab_sizes=document.get("vocab_sizes"))

    def check_matches(self, transform_graph_uri: str, fields: Sequence[str],
                      vocab_sizes: Optional[Sequence[int]] = None) -> None:
        """Refuses a selection made on other vocabularies, fields or vocabulary sizes."""
        fingerprint = vocabulary_fingerprint(transform_graph_uri)
        if fingerprint != self.vocabulary_fingerprint:
            raise SelectionMismatchError(
                f"the feature selection was computed on vocabularies {self.vocabulary_fingerprint[:12]}"
                f" but the Transform graph {transform_graph_uri} has {fingerprint[:12]}; "
                "re-run the FeatureSelector on this Transform output")
        if list(fields) != self.fields:
            raise SelectionMismatchError(
                f"the feature selection covers fields {self.fields}, the model uses {list(fields)}")
        if vocab_sizes is not None and self.value_masks is not None:
            for field, size, m in zip(fields, vocab_sizes, self.value_masks):
                if m.shape[1] != int(size):
                    raise SelectionMismatchError(
                        f"the feature selection's value mask of field {field!r} has "
                        f"{m.shape[1]} rows but the field's vocabulary (OOV and missing ids "
                        f"included) has {size}; re-run the FeatureSelector on this Transform "
                        "output")
