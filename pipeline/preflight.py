"""Checks a dataset spec against its files before any component starts."""

import gzip
import os
import re
from typing import List

from pipeline.specs import DatasetSpec, _suggest


class InputError(ValueError):
    """The spec's input files are missing or lack columns; the message says which."""


def _csv_header(spec: DatasetSpec, path: str) -> List[str]:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            line = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not line.strip():
        raise InputError(f"{path} is empty (no header line)")
    return [c.strip().strip('"') for c in line.rstrip("\r\n").split(spec.separator)]


def check_inputs(spec: DatasetSpec) -> List[str]:
    """Returns the matched files; raises InputError naming the file and the column."""
    matched = []
    for i, entry in enumerate(spec.files):
        unset = re.findall(r"\$\{?(\w+)\}?", entry.path)
        if unset:
            raise InputError(f"{spec.source}: inputs.files[{i}]: environment variable "
                             f"{', '.join(sorted(set(unset)))} is not set (path {entry.path})")
        paths = entry.matches()
        if not paths:
            raise InputError(f"{spec.source}: inputs.files[{i}]: no file matches {entry.path}")
        constants = {k for k, _ in entry.constants}
        for path in paths:
            if os.path.getsize(path) == 0:
                raise InputError(f"{path} is empty")
            if spec.input_format != "csv":
                continue
            columns = _csv_header(spec, path) if spec.header else list(spec.columns)
            if not spec.header:
                width = len(_csv_header(spec, path))
                if width != len(columns):
                    raise InputError(f"{path}: the first row has {width} fields but the spec "
                                     f"{spec.source} declares {len(columns)} columns")
            for column in spec.raw_columns:
                if column not in columns and column not in constants:
                    raise InputError(f"{path}: column {column!r} (needed by {spec.source}) is "
                                     f"missing{_suggest(column, columns)}; the file has: "
                                     f"{', '.join(columns[:30])}{' ...' if len(columns) > 30 else ''}")
        matched += paths
    return matched
