"""Declarative dataset and model specs, validated on load.

A dataset spec (``specs/datasets/*.yaml``) says where the rows are and what each
column is: the scenario column (or a hierarchy of them), the tasks and their
labels, the categorical and numerical fields, the ignored columns and the
train/eval split. A model spec (``specs/models/*.yaml``) names the architecture,
its hyper-parameters and the training budget. Both are the only files a user
edits; everything else reads them. Every error names the file and the key.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import glob
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_SPEC_DIR = os.path.join(REPO_DIR, "specs", "datasets")
MODEL_SPEC_DIR = os.path.join(REPO_DIR, "specs", "models")

SPLITS = ("train", "eval")
INPUT_FORMATS = ("csv", "tfrecord")
DEFAULT_NA_VALUES = ("", "nan", "NaN", "NA", "null", "None")


class SpecError(ValueError):
    """A spec is malformed: the message names the file and the key."""

    def __init__(self, source: str, key: str, message: str):
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Reads one mapping of a spec, rejecting unknown keys and wrong types."""

    def __init__(self, source: str, path: str, data: Any, allowed: Sequence[str]):
        self.source, self.path = source, path
        if not isinstance(data, Mapping):
            raise SpecError(source, path or "<top>", f"expected a mapping, got {type(data).__name__}")
        for key in data:
            if key not in allowed:
                raise SpecError(
                    source, self._key(str(key)),
                    f"unknown key{_suggest(str(key), allowed)}; allowed keys: {', '.join(allowed)}")
        self.data = data

    def _key(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> SpecError:
        return SpecError(self.source, self._key(key), message)

    def get(self, key: str, types: Tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if bool in types or not isinstance(value, bool):
            if isinstance(value, types):
                return value
        names = " or ".join(t.__name__ for t in types)
        raise self.error(key, f"expected {names}, got {type(value).__name__} {value!r}")

    def sub(self, key: str, allowed: Sequence[str], required: bool = False) -> "_Reader":
        return _Reader(self.source, self._key(key), self.get(key, (dict,), {}, required), allowed)

    def string_list(self, key: str, required: bool = False) -> List[str]:
        values = self.get(key, (list,), [], required)
        for i, value in enumerate(values):
            if not isinstance(value, str) or not value:
                raise self.error(f"{key}[{i}]", f"expected a non-empty string, got {value!r}")
        return list(values)


# --------------------------------------------------------------------------- label rules


_RULE_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
             ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in"}


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """A boolean rule over raw column values, e.g. ``income_50k == "50000+."``.

    Grammar: comparisons ``column OP literal`` (OP one of == != < <= > >= in, not in;
    literal a quoted string, a number or a list of them), combined with ``and``,
    ``or``, ``not`` and parentheses. String comparisons are on the stripped raw
    value; ``<``-style comparisons convert the value to a number.
    """

    expression: str

    def __post_init__(self):
        self._tree()  # Validates eagerly.

    def _tree(self) -> ast.AST:
        try:
            tree = ast.parse(self.expression, mode="eval").body
        except SyntaxError as e:
            raise ValueError(f"cannot parse label rule {self.expression!r}: {e.msg}") from None
        self._check(tree)
        return tree

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self._check(node.operand)
        elif isinstance(node, ast.Compare):
            if not isinstance(node.left, ast.Name) or len(node.ops) != 1:
                raise ValueError(f"label rule {self.expression!r}: write 'column OP literal'")
            if type(node.ops[0]) not in _RULE_OPS:
                raise ValueError(f"label rule {self.expression!r}: unsupported operator")
            self._literal(node.comparators[0])
        else:
            raise ValueError(f"label rule {self.expression!r}: only comparisons combined with "
                             "and/or/not are allowed")

    def _literal(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float)):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._literal(e) for e in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self._literal(node.operand)
            if isinstance(value, (int, float)):
                return -value
        raise ValueError(f"label rule {self.expression!r}: {ast.unparse(node)} is not a literal")

    @property
    def columns(self) -> List[str]:
        return sorted({n.id for n in ast.walk(self._tree()) if isinstance(n, ast.Name)})

    def compile(self):
        """Returns ``f(row: Mapping[str, str]) -> int`` (0 or 1); raises ValueError."""
        evaluate = self.compile_columns()
        columns = self.columns

        def rule(row):
            labels, errors = evaluate({c: [row[c]] for c in columns if c in row}, 1)
            if errors[0] is not None:
                raise ValueError(errors[0])
            return int(labels[0])
        return rule

    def compile_columns(self):
        """Returns ``f(columns: Mapping[str, Sequence[str]], n) -> (labels, errors)``.

        The rule over ``n`` rows at once: ``labels`` is an int64 array of 0/1, ``errors``
        an object array with the message of each row the rule cannot evaluate (else None).
        ``and``/``or`` short-circuit per row as Python does, so a comparison that fails only
        matters where it decides the row.
        """
        tree = self._tree()

        def build(node):
            if isinstance(node, ast.BoolOp):
                parts, is_and = [build(v) for v in node.values], isinstance(node.op, ast.And)

                def evaluate(cache, n):
                    value, error = np.full(n, is_and), np.full(n, None, dtype=object)
                    for part in parts:
                        undecided = (value == is_and) & np.equal(error, None)
                        if not undecided.any():
                            break
                        v, e = part(cache, n)
                        value, error = np.where(undecided, v, value), np.where(undecided, e, error)
                    return value, error
                return evaluate
            if isinstance(node, ast.UnaryOp):
                inner = build(node.operand)

                def negation(cache, n):
                    v, e = inner(cache, n)
                    return ~v, e
                return negation
            column, op = node.left.id, _RULE_OPS[type(node.ops[0])]
            literal = self._literal(node.comparators[0])
            if op in ("in", "not in") or (op in ("==", "!=") and isinstance(literal, str)):
                choices = [str(v) for v in (literal if isinstance(literal, list) else [literal])]
                negate = op in ("not in", "!=")
                return lambda cache, n: (np.isin(cache.stripped(column), choices) != negate,
                                         np.full(n, None, dtype=object))
            number = float(literal)
            compare = {"==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal,
                       ">": np.greater, ">=": np.greater_equal}[op]

            def comparison(cache, n):
                values, errors = cache.floats(column)
                return compare(values, number), errors
            return comparison

        predicate = build(tree)

        def evaluate(columns, n):
            value, error = predicate(_RuleColumns(columns), n)
            return value.astype(np.int64), error
        return evaluate


class _RuleColumns:
    """A label rule's raw columns, stripped or parsed as numbers once per evaluation."""

    def __init__(self, columns: Mapping[str, Sequence[str]]):
        self._columns, self._stripped, self._floats = columns, {}, {}

    def stripped(self, column: str) -> np.ndarray:
        if column not in self._stripped:
            self._stripped[column] = np.array([v.strip() for v in self._columns[column]],
                                              dtype=object)
        return self._stripped[column]

    def floats(self, column: str) -> Tuple[np.ndarray, np.ndarray]:
        if column not in self._floats:
            raw = self._columns[column]
            values, errors = np.empty(len(raw)), np.full(len(raw), None, dtype=object)
            for i, v in enumerate(raw):
                try:
                    values[i] = _as_float(v)
                except ValueError as e:
                    values[i], errors[i] = np.nan, str(e)
            self._floats[column] = values, errors
        return self._floats[column]


def _as_float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"label rule needs a number, got {value!r}") from None


# --------------------------------------------------------------------------- dataset spec


@dataclasses.dataclass(frozen=True)
class InputFile:
    path: str  # An absolute glob.
    split: Optional[str] = None  # 'train' or 'eval' when split.method is 'files'.
    constants: Tuple[Tuple[str, str], ...] = ()  # Columns whose value is fixed per file.

    def matches(self) -> List[str]:
        return sorted(glob.glob(self.path))


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    label: Optional[str] = None  # A 0/1 column ...
    label_rule: Optional[str] = None  # ... or a rule over raw columns.
    depends_on: Optional[str] = None  # Observed only after this task is positive.

    @property
    def source_columns(self) -> List[str]:
        return [self.label] if self.label else LabelRule(self.label_rule).columns


@dataclasses.dataclass(frozen=True)
class CategoricalField:
    name: str
    frequency_threshold: int = 1
    top_k: int = 100_000
    num_oov_buckets: int = 1


@dataclasses.dataclass(frozen=True)
class NumericalField:
    name: str
    buckets: int = 16


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A validated dataset spec. Build with ``load_dataset_spec``."""

    name: str
    source: str
    files: Tuple[InputFile, ...]
    input_format: str
    header: bool
    columns: Tuple[str, ...]  # Declared columns for header-less CSV, else empty.
    separator: str
    na_values: Tuple[str, ...]
    max_bad_row_fraction: float
    scenario_columns: Tuple[str, ...]  # Coarse to fine; the last one is the scenario.
    tasks: Tuple[Task, ...]
    categorical_fields: Tuple[CategoricalField, ...]
    numerical_fields: Tuple[NumericalField, ...]
    ignored_columns: Tuple[str, ...]
    split_method: str  # 'hash' or 'files'.
    eval_fraction: float
    split_key: Optional[str]
    description: str = ""

    @property
    def scenario_column(self) -> str:
        return self.scenario_columns[-1]

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    @property
    def field_names(self) -> List[str]:
        return [f.name for f in self.categorical_fields] + [f.name for f in self.numerical_fields]

    @property
    def raw_columns(self) -> List[str]:
        """Every raw column the pipeline reads (from a file or a per-file constant)."""
        needed = list(self.scenario_columns) + self.field_names
        for task in self.tasks:
            needed += task.source_columns
        if self.split_key:
            needed.append(self.split_key)
        return list(dict.fromkeys(needed))

    @property
    def required_columns(self) -> List[str]:
        """The raw columns every input file must have (per-file constants excluded)."""
        constants = {k for f in self.files for k, _ in f.constants}
        return [c for c in self.raw_columns if c not in constants]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DatasetSpec":
        d = json.loads(text)
        d["files"] = tuple(InputFile(f["path"], f["split"], tuple(map(tuple, f["constants"])))
                           for f in d["files"])
        d["tasks"] = tuple(Task(**t) for t in d["tasks"])
        d["categorical_fields"] = tuple(CategoricalField(**f) for f in d["categorical_fields"])
        d["numerical_fields"] = tuple(NumericalField(**f) for f in d["numerical_fields"])
        for key in ("columns", "na_values", "scenario_columns", "ignored_columns"):
            d[key] = tuple(d[key])
        return cls(**d)

    def with_files(self, paths: Sequence[str]) -> "DatasetSpec":
        """The same spec reading other files (e.g. ``msmt run --data``)."""
        files = tuple(InputFile(os.path.abspath(os.path.expanduser(p))) for p in paths)
        return dataclasses.replace(self, files=files)


_DATASET_KEYS = ("name", "description", "inputs", "scenario", "tasks", "categorical_fields",
                 "categorical_defaults", "numerical_fields", "numerical_defaults",
                 "ignored_columns", "split")


def _resolve(path: str, base_dir: str) -> str:
    path = os.path.expanduser(os.path.expandvars(path))
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


def parse_dataset_spec(data: Any, source: str, base_dir: str) -> DatasetSpec:
    """Validates a dataset spec given as a mapping; paths resolve against ``base_dir``."""
    top = _Reader(source, "", data, _DATASET_KEYS)
    name = top.get("name", (str,), required=True)

    inputs = top.sub("inputs", ("files", "format", "header", "columns", "separator",
                                "na_values", "max_bad_row_fraction"), required=True)
    raw_files = inputs.get("files", (list, str), required=True)
    raw_files = [raw_files] if isinstance(raw_files, str) else raw_files
    if not raw_files:
        raise inputs.error("files", "lists no file")
    files = []
    for i, entry in enumerate(raw_files):
        if isinstance(entry, str):
            entry = {"path": entry}
        f = _Reader(source, f"inputs.files[{i}]", entry, ("path", "split", "constants"))
        split = f.get("split", (str,))
        if split is not None and split not in SPLITS:
            raise f.error("split", f"must be one of {SPLITS}, got {split!r}")
        constants = f.get("constants", (dict,), {})
        files.append(InputFile(
            _resolve(f.get("path", (str,), required=True), base_dir), split,
            tuple((str(k), str(v)) for k, v in sorted(constants.items()))))
    fmt = inputs.get("format", (str,))
    if fmt is None:
        fmt = "tfrecord" if any(s in files[0].path for s in (".tfrecord", ".tfr")) else "csv"
    if fmt not in INPUT_FORMATS:
        raise inputs.error("format", f"must be one of {INPUT_FORMATS}, got {fmt!r}")
    header = inputs.get("header", (bool,), True)
    columns = inputs.string_list("columns")
    if fmt == "csv" and not header and not columns:
        raise inputs.error("columns", "is required when header is false")
    if header and columns:
        raise inputs.error("columns", "give either header: true or a column list, not both")
    separator = inputs.get("separator", (str,), ",")
    if len(separator) != 1:
        raise inputs.error("separator", f"must be one character, got {separator!r} "
                           "(values are stripped of surrounding spaces anyway)")
    na_values = tuple("" if v is None else str(v)
                      for v in inputs.get("na_values", (list,), list(DEFAULT_NA_VALUES)))
    max_bad = float(inputs.get("max_bad_row_fraction", (int, float), 0.001))
    if not 0.0 <= max_bad < 1.0:
        raise inputs.error("max_bad_row_fraction", f"must be in [0, 1), got {max_bad}")

    scenario = top.sub("scenario", ("column", "hierarchy"), required=True)
    column = scenario.get("column", (str,))
    hierarchy = scenario.string_list("hierarchy")
    if bool(column) == bool(hierarchy):
        raise scenario.error("column", "give exactly one of 'column' or 'hierarchy'")
    scenario_columns = tuple(hierarchy or [column])

    raw_tasks = top.get("tasks", (list,), required=True)
    if not raw_tasks:
        raise top.error("tasks", "lists no task")
    tasks: List[Task] = []
    for i, entry in enumerate(raw_tasks):
        t = _Reader(source, f"tasks[{i}]", entry, ("name", "label", "label_rule", "depends_on"))
        task_name = t.get("name", (str,), required=True)
        label, rule = t.get("label", (str,)), t.get("label_rule", (str,))
        if bool(label) == bool(rule):
            raise t.error("label", "give exactly one of 'label' (a 0/1 column) or 'label_rule'")
        if rule:
            try:
                LabelRule(rule)
            except ValueError as e:
                raise t.error("label_rule", str(e)) from None
        depends_on = t.get("depends_on", (str,))
        if depends_on is not None and depends_on not in [p.name for p in tasks]:
            raise t.error("depends_on", f"{depends_on!r} is not a task listed before "
                          f"{task_name!r}{_suggest(depends_on, [p.name for p in tasks])}")
        if task_name in [p.name for p in tasks]:
            raise t.error("name", f"duplicate task {task_name!r}")
        tasks.append(Task(task_name, label, rule, depends_on))

    cat_defaults = top.sub("categorical_defaults", ("frequency_threshold", "top_k", "num_oov_buckets"))
    categorical = []
    for i, entry in enumerate(top.get("categorical_fields", (list,), [])):
        entry = {"name": entry} if isinstance(entry, str) else entry
        c = _Reader(source, f"categorical_fields[{i}]", entry,
                    ("name", "frequency_threshold", "top_k", "num_oov_buckets"))
        values = {}
        for key, minimum in (("frequency_threshold", 1), ("top_k", 1), ("num_oov_buckets", 1)):
            value = c.get(key, (int,), cat_defaults.get(key, (int,), None))
            if value is not None:
                if value < minimum:
                    raise c.error(key, f"must be >= {minimum}, got {value}")
                values[key] = value
        categorical.append(CategoricalField(c.get("name", (str,), required=True), **values))

    num_defaults = top.sub("numerical_defaults", ("buckets",))
    numerical = []
    for i, entry in enumerate(top.get("numerical_fields", (list,), [])):
        entry = {"name": entry} if isinstance(entry, str) else entry
        n = _Reader(source, f"numerical_fields[{i}]", entry, ("name", "buckets"))
        buckets = n.get("buckets", (int,), num_defaults.get("buckets", (int,), 16))
        if buckets < 2:
            raise n.error("buckets", f"must be >= 2, got {buckets}")
        numerical.append(NumericalField(n.get("name", (str,), required=True), buckets))
    if not categorical and not numerical:
        raise top.error("categorical_fields", "the spec lists no field at all")

    ignored = tuple(top.string_list("ignored_columns"))
    split = top.sub("split", ("method", "eval_fraction", "key"))
    method = split.get("method", (str,), "hash")
    if method not in ("hash", "files"):
        raise split.error("method", f"must be 'hash' or 'files', got {method!r}")
    eval_fraction = float(split.get("eval_fraction", (int, float), 0.2))
    if not 0.0 < eval_fraction < 1.0:
        raise split.error("eval_fraction", f"must be in (0, 1), got {eval_fraction}")
    split_key = split.get("key", (str,))
    if method == "files":
        for i, f in enumerate(files):
            if f.split is None:
                raise SpecError(source, f"inputs.files[{i}].split",
                                "is required when split.method is 'files'")
        missing = set(SPLITS) - {f.split for f in files}
        if missing:
            raise split.error("method", f"no input file for split(s) {sorted(missing)}")

    # Each column has exactly one role.
    roles: Dict[str, str] = {}
    def claim(col: str, role: str, key: str):
        if col in roles and roles[col] != role:
            raise top.error(key, f"column {col!r} is both {roles[col]} and {role}")
        if col in roles and role in ("categorical field", "numerical field"):
            raise top.error(key, f"column {col!r} is listed twice")
        roles[col] = role
    for col in scenario_columns:
        claim(col, "scenario column", "scenario")
    for i, task in enumerate(tasks):
        for col in task.source_columns:
            claim(col, "label source", f"tasks[{i}]")
    for i, f in enumerate(categorical):
        claim(f.name, "categorical field", f"categorical_fields[{i}]")
    for i, f in enumerate(numerical):
        claim(f.name, "numerical field", f"numerical_fields[{i}]")
    for i, col in enumerate(ignored):
        claim(col, "ignored column", f"ignored_columns[{i}]")
    for t in tasks:
        if t.name in roles and roles[t.name] != "label source":
            raise top.error("tasks", f"task name {t.name!r} clashes with a {roles[t.name]}")
    if columns:
        for col in roles:
            constant = any(col == k for f in files for k, _ in f.constants)
            if col not in columns and not constant:
                raise inputs.error("columns", f"does not declare column {col!r}, "
                                   f"used as {roles[col]}{_suggest(col, columns)}")
        if (split_key and split_key not in columns
                and not any(split_key == k for f in files for k, _ in f.constants)):
            raise inputs.error("columns", f"does not declare column {split_key!r}, "
                               f"used as split.key{_suggest(split_key, columns)}")

    return DatasetSpec(
        name=name, source=source, files=tuple(files), input_format=fmt, header=header,
        columns=tuple(columns), separator=separator, na_values=na_values,
        max_bad_row_fraction=max_bad, scenario_columns=scenario_columns, tasks=tuple(tasks),
        categorical_fields=tuple(categorical), numerical_fields=tuple(numerical),
        ignored_columns=ignored, split_method=method, eval_fraction=eval_fraction,
        split_key=split_key, description=top.get("description", (str,), ""))


def _find(name_or_path: str, spec_dir: str, kind: str) -> str:
    if os.path.exists(name_or_path):
        return os.path.abspath(name_or_path)
    candidate = os.path.join(spec_dir, f"{name_or_path}.yaml")
    if os.path.exists(candidate):
        return candidate
    known = sorted(f[:-5] for f in os.listdir(spec_dir) if f.endswith(".yaml"))
    raise SpecError(name_or_path, kind, f"no such file and no built-in {kind} of that name"
                    f"{_suggest(name_or_path, known)}; built-in: {', '.join(known)}")


def _read_yaml(path: str) -> Any:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise SpecError(path, "<yaml>", f"not valid YAML: {e}") from None


def load_dataset_spec(name_or_path: str) -> DatasetSpec:
    """Loads a built-in dataset spec by name, or a spec file by path."""
    path = _find(name_or_path, DATASET_SPEC_DIR, "dataset spec")
    return parse_dataset_spec(_read_yaml(path), path, os.path.dirname(path))


# --------------------------------------------------------------------------- model spec


TRAINING_DEFAULTS = {
    "batch_size": 512,
    "learning_rate": 1e-3,
    "epochs": 10,
    "steps_per_epoch": None,  # None: one pass over the train split per epoch.
    "eval_steps": None,
    "early_stopping_patience": 2,
    "seed": 0,
    "scenario_loss_weights": "none",  # "inverse_share": weight each example by 1 / its scenario's share.
    "strategy": "mirrored",  # "multi_worker": MultiWorkerMirroredStrategy from TF_CONFIG.
    # A Keras dtype policy: "mixed_bfloat16" computes in bfloat16 (variables and the
    # probabilities stay float32); "mixed_float16" for GPUs (loss scaling by Keras).
    "precision": "float32",
    # Training steps per call of Keras' compiled train function, so that Keras' per-step
    # Python work is paid once per call (benchmarks/RESULTS.md, session 6). Above 1 Keras
    # must know each epoch's steps: steps_per_epoch and eval_steps are then required.
    "steps_per_execution": 1,
}
SCENARIO_LOSS_WEIGHTS = ("none", "inverse_share")
TRAINING_STRATEGIES = ("mirrored", "multi_worker")  # models/distribute.py
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # models/factory.py
TUNABLE_TRAINING_KEYS = ("learning_rate", "batch_size")
_SEARCH_SPACE_KEYS = ("min", "max", "step", "sampling", "values")
SEARCH_SAMPLINGS = ("linear", "log")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. Architecture hyper-parameters are checked by the factory."""

    name: str
    source: str
    architecture: str
    embedding_dim: int
    hparams: Tuple[Tuple[str, Any], ...]
    training: Tuple[Tuple[str, Any], ...]
    esmm: bool = False  # Compose dependent tasks as ESMM: p(child) = p(parent) * p(child | parent).
    # The Tuner's search space: (name, ((key, value), ...)) per tuned hyper-parameter, keys
    # among min, max, step, sampling (a range) or values (a choice). See ``search_space``.
    tuning: Tuple[Tuple[str, Tuple[Tuple[str, Any], ...]], ...] = ()

    @property
    def search_space(self) -> Dict[str, Dict[str, Any]]:
        return {name: dict(space) for name, space in self.tuning}

    @property
    def hparams_dict(self) -> Dict[str, Any]:
        return dict(self.hparams)

    @property
    def training_dict(self) -> Dict[str, Any]:
        return dict(self.training)

    def with_training(self, **overrides: Any) -> "ModelSpec":
        """A copy with these ``training:`` values replaced (e.g. ``epochs`` from the CLI)."""
        return dataclasses.replace(self, training=tuple(sorted(
            {**self.training_dict, **overrides}.items())))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        d = json.loads(text)
        d["hparams"] = tuple((k, _freeze(v)) for k, v in d["hparams"])
        # Keys added since the JSON was written (e.g. in a compiled Kubeflow spec) get defaults.
        d["training"] = tuple(sorted({**TRAINING_DEFAULTS,
                                      **{k: _freeze(v) for k, v in d["training"]}}.items()))
        d["tuning"] = tuple((name, tuple((k, _freeze(v)) for k, v in space))
                            for name, space in d.get("tuning", ()))
        return cls(**d)


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def parse_model_spec(data: Any, source: str) -> ModelSpec:
    top = _Reader(source, "", data, ("name", "architecture", "embedding_dim", "esmm", "hparams",
                                     "training", "tuning"))
    architecture = top.get("architecture", (str,), required=True)
    embedding_dim = top.get("embedding_dim", (int,), 16)
    if embedding_dim < 1:
        raise top.error("embedding_dim", f"must be >= 1, got {embedding_dim}")
    hparams = top.get("hparams", (dict,), {})
    training = top.sub("training", tuple(TRAINING_DEFAULTS))
    values = dict(TRAINING_DEFAULTS)
    choices = {"scenario_loss_weights": SCENARIO_LOSS_WEIGHTS, "strategy": TRAINING_STRATEGIES,
               "precision": PRECISIONS}
    for key, default in TRAINING_DEFAULTS.items():
        kinds = {"learning_rate": (float, int)}.get(key, (str,) if key in choices else (int,))
        values[key] = training.get(key, kinds, default)
        if key in choices:
            if values[key] not in choices[key]:
                raise training.error(key, f"must be one of {choices[key]}, got "
                                          f"{values[key]!r}{_suggest(values[key], choices[key])}")
        elif values[key] is not None and values[key] <= 0 and key != "seed":
            raise training.error(key, f"must be > 0, got {values[key]}")
    if values["steps_per_execution"] > 1:
        for key in ("steps_per_epoch", "eval_steps"):
            if values[key] is None:
                raise training.error(key, f"must be set when steps_per_execution is above 1 "
                                          f"({values['steps_per_execution']}): Keras runs a "
                                          f"known number of steps per call")
    return ModelSpec(
        name=top.get("name", (str,), architecture), source=source, architecture=architecture,
        embedding_dim=embedding_dim, esmm=top.get("esmm", (bool,), False),
        hparams=tuple(sorted((str(k), _freeze(v)) for k, v in hparams.items())),
        training=tuple(sorted(values.items())),
        tuning=_parse_search_space(top, hparams))


def _parse_search_space(top: "_Reader", hparams: Mapping[str, Any]) -> Tuple:
    """``tuning:`` maps a hyper-parameter to a range ``{min, max, step, sampling}`` or a
    choice ``{values: [...]}``; it must be a tunable training key, ``embedding_dim`` or one
    of the spec's ``hparams``."""
    block = top.get("tuning", (dict,), {})
    tunable = list(TUNABLE_TRAINING_KEYS) + ["embedding_dim"] + [str(k) for k in hparams]
    result = []
    for name in sorted(block):
        if name not in tunable:
            raise top.error(f"tuning.{name}", "not a tunable hyper-parameter of this spec"
                            f"{_suggest(str(name), tunable)}; tunable: {', '.join(tunable)}")
        space = _Reader(top.source, f"tuning.{name}", block[name], _SEARCH_SPACE_KEYS)
        if "values" in space.data:
            if set(space.data) != {"values"}:
                raise space.error("values", "a choice takes no min, max, step or sampling")
            values = space.get("values", (list,), required=True)
            if not values or not all(isinstance(v, (int, float, str, bool)) for v in values):
                raise space.error("values", f"expected a non-empty list of numbers or strings, "
                                            f"got {values!r}")
            result.append((str(name), (("values", tuple(values)),)))
            continue
        low = space.get("min", (int, float), required=True)
        high = space.get("max", (int, float), required=True)
        if not low < high:
            raise space.error("max", f"must be greater than min ({low}), got {high}")
        sampling = space.get("sampling", (str,), "linear")
        if sampling not in SEARCH_SAMPLINGS:
            raise space.error("sampling", f"must be one of {SEARCH_SAMPLINGS}, got {sampling!r}")
        if sampling == "log" and low <= 0:
            raise space.error("min", f"must be > 0 with log sampling, got {low}")
        entry = [("max", high), ("min", low), ("sampling", sampling)]
        if space.get("step", (int, float)) is not None:
            entry.append(("step", space.get("step", (int, float))))
        result.append((str(name), tuple(entry)))
    return tuple(result)


def load_model_spec(name_or_path: str) -> ModelSpec:
    """Loads a built-in model spec by name, or a spec file by path."""
    path = _find(name_or_path, MODEL_SPEC_DIR, "model spec")
    return parse_model_spec(_read_yaml(path), path)
