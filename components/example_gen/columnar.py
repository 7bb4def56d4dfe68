"""Columnar conversion of input rows to serialized tf.Examples (ExampleGen's inner loop).

A CSV file is tokenized in blocks by ``pyarrow.csv`` (every column read as raw bytes), each
column is validated and converted with vectorised ``pyarrow.compute``/numpy operations, and
the good rows are encoded by ``components.example_encoding.ExampleEncoder``. Python only
touches the rare cells that the fast paths cannot decide (e.g. ``1_000`` as a number), so
the bad-row semantics are those of a per-row ``float()``/``str.strip()`` reader:

- a row with the wrong number of fields, or bytes that are not UTF-8, is bad; blank lines
  are skipped but counted, so every ``line`` is the physical line where the row ends
  (lines end at ``\n``, ``\r\n`` or a lone ``\r``);
- values are stripped; ``na_values`` are NaN in numerical fields, anything else that
  ``float()`` rejects is bad; a label column must be 0 or 1 (``1.0`` too); a label rule is
  evaluated over the raw columns (``LabelRule.compile_columns``); a task that is 1 while the
  task it ``depends_on`` is 0 is bad; an empty scenario value is bad;
- the split key is int64 where it reads as an integer, else bytes.

TFRecord rows are read one record at a time and gathered into the same columns.
"""

import codecs
import csv
import dataclasses
import gzip
import io
import threading
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import tensorflow as tf

from components.example_encoding import ExampleEncoder
from pipeline.specs import DatasetSpec, LabelRule

BLOCK_BYTES = 8 << 20  # pyarrow.csv block: about 15k rows of an 80-column file.
_INT = r"^-?[0-9]{1,18}$"  # Surely in int64; other integer-looking keys take the slow path.


@dataclasses.dataclass
class RawBatch:
    """Rows of one file as raw string columns (file columns and per-file constants).

    ``lines`` holds each row's line (or record) number; ``bad`` the rows already rejected
    while reading, as ``(line, reason)``; ``missing`` the needed columns these rows lack
    (then every row of the batch is unusable and ``columns`` is empty).
    """

    columns: Dict[str, pa.Array]
    lines: np.ndarray
    bad: List[Tuple[int, str]] = dataclasses.field(default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Converted:
    """The good rows as serialized tf.Examples, and the bad rows as ``(line, reason)``.

    ``partition_keys`` (when asked for, with a split key) is, per example, the split key's
    ``tf.train.Feature`` serialized as TFX's ExampleGen hashes it for ``partition_feature_name``.
    """

    examples: List[bytes]
    partition_keys: Optional[List[bytes]]
    bad: List[Tuple[int, str]]


# --------------------------------------------------------------------------- reading


class _LineCountingReader(io.RawIOBase):
    """Passes a file's bytes to pyarrow and records the physical line where each record ends.

    Undecodable bytes become U+FFFD, as Python's text reader has them (pyarrow would fail
    on such a row); ``saw_replacement`` says whether any U+FFFD was seen.
    A line end (``\n``, ``\r\n`` or a lone ``\r``, as pyarrow and Python's universal
    newlines read them) ends a record unless it is inside a quoted value (one that opens
    with ``"`` at the start of a field, as pyarrow reads it); empty records (blank lines)
    are dropped, as pyarrow drops them, so pyarrow's i-th record ends on the i-th line
    recorded.
    """

    def __init__(self, raw, separator: str):
        self._raw = raw
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending = b""
        self.saw_replacement = False
        self._separator = ord(separator)
        self._lines = 0  # Line ends seen.
        self._offset = 0  # Bytes seen.
        self._record_start = 0  # Offset where the current record starts.
        self._last_byte = 10
        self._cr_at_end = False  # The bytes seen end with \r (a line end unless \n follows).
        self._cr_outside = True  # That \r is outside a quoted value.
        self._carry = b""  # A byte read past the header.
        self._quoted = False  # Inside a quoted value at the end of the bytes seen.
        self._last_close = -2  # Offset of the last closing quote.
        self._ends: List[np.ndarray] = []
        # pyarrow reads ahead on its I/O thread while the caller takes lines: guards _ends.
        self._ends_lock = threading.Lock()
        self._dropped = 0  # Records handed out and forgotten.
        self.saw_quote = False
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending and not self._eof:
            raw = self._carry + self._raw.read(len(buffer))
            self._carry = b""
            text = self._decoder.decode(raw, final=not raw)
            self.saw_replacement = self.saw_replacement or "\ufffd" in text
            self._pending = text.encode("utf-8")
            self._scan(self._pending)
        data, self._pending = self._pending[:len(buffer)], self._pending[len(buffer):]
        buffer[:len(data)] = data
        return len(data)

    def _quote_toggles(self, chunk: np.ndarray) -> np.ndarray:
        """Offsets in ``chunk`` where a quoted value opens or closes."""
        quotes = np.flatnonzero(chunk == 34)
        before = np.where(quotes > 0, chunk[np.maximum(quotes - 1, 0)], self._last_byte)
        field_start = np.isin(before, [self._separator, 10, 13])
        at = quotes + self._offset
        toggles = self._alternating_toggles(at, field_start)
        if toggles is None:
            toggles = self._sequential_toggles(at, field_start)
        return toggles - self._offset

    def _alternating_toggles(self, at: np.ndarray, field_start: np.ndarray
                             ) -> Optional[np.ndarray]:
        """``at`` if every quote opens or closes a value (well-formed quoting, where they
        alternate), else None: vectorised, and updates the state only when it answers."""
        if not len(at):
            return at
        closes = np.arange(len(at)) % 2 == (0 if self._quoted else 1)
        previous = np.concatenate([[self._last_close], at[:-1]])
        opens = ~closes
        if not np.all(field_start[opens] | (at[opens] == previous[opens] + 1)):
            return None
        self._quoted = bool(self._quoted ^ (len(at) % 2 == 1))
        if closes.any():
            self._last_close = int(at[closes][-1])
        return at

    def _sequential_toggles(self, at: np.ndarray, field_start: np.ndarray) -> np.ndarray:
        """The quotes that toggle, one by one: a quote outside a value opens one only at the
        start of a field (or right after a closing quote: ``""``); elsewhere it is a character."""
        toggles = []
        quoted, last_close = self._quoted, self._last_close
        for q, at_start in zip(at.tolist(), field_start.tolist()):
            if quoted:
                quoted, last_close = False, q
                toggles.append(q)
            elif at_start or q == last_close + 1:  # Opens, or "" inside a quoted value.
                quoted = True
                toggles.append(q)
        self._quoted, self._last_close = quoted, last_close
        return np.array(toggles, np.int64)

    def _scan(self, data: bytes) -> None:
        if not data:
            if self._cr_at_end:  # The file ends with a lone \r.
                self._end_deferred_cr()
            elif self._offset > self._record_start:
                with self._ends_lock:  # No line end at the end.
                    self._ends.append(np.array([self._lines + 1]))
            self._eof = True
            return
        chunk = np.frombuffer(data, np.uint8)
        if self._cr_at_end and chunk[0] != 10:  # The last chunk's \r was a lone line end.
            self._end_deferred_cr()
        # A line ends at \n, at \r\n (on its \n) and at a lone \r, as pyarrow and Python's
        # universal newlines read it; a \r at the chunk's end waits for the next byte.
        candidates = np.flatnonzero((chunk == 10) | (chunk == 13))
        following = chunk[np.minimum(candidates + 1, len(chunk) - 1)]
        is_cr = chunk[candidates] == 13
        last = candidates == len(chunk) - 1
        breaks = candidates[~(is_cr & (last | (following == 10)))]
        before = np.where(breaks > 0, chunk[np.maximum(breaks - 1, 0)], self._last_byte)
        crlf = (chunk[breaks] == 10) & (before == 13)
        outside = np.ones(len(breaks), bool)
        if self.saw_quote or b'"' in data:
            was_quoted = self._quoted
            self.saw_quote = True
            toggles = self._quote_toggles(chunk)
            outside = (np.searchsorted(toggles, breaks) % 2 == 0) != was_quoted
        self._end_lines(breaks + self._offset, outside, crlf)
        self._cr_at_end, self._cr_outside = bool(chunk[-1] == 13), not self._quoted
        self._offset += len(data)
        self._last_byte = int(chunk[-1])

    def _end_deferred_cr(self) -> None:
        """The \r that ended the bytes seen so far is a lone line end."""
        self._end_lines(np.array([self._offset - 1]), np.array([self._cr_outside]),
                        np.array([False]))

    def _end_lines(self, breaks: np.ndarray, outside: np.ndarray, crlf: np.ndarray) -> None:
        """Counts line ends at offsets ``breaks``; those ``outside`` a quoted value end a
        record, and a record with no bytes (a blank line) is dropped, as pyarrow drops it."""
        line_numbers = self._lines + 1 + np.arange(len(breaks))
        self._lines += len(breaks)
        ends, line_numbers, crlf = breaks[outside], line_numbers[outside], crlf[outside]
        if len(ends):
            starts = np.concatenate([[self._record_start], ends[:-1] + 1])
            with self._ends_lock:
                self._ends.append(line_numbers[ends - starts - crlf > 0])
            self._record_start = int(ends[-1]) + 1

    def record_lines(self, first: int, count: int) -> np.ndarray:
        """Lines of records ``first .. first + count - 1`` (0-based, in pyarrow's order);
        the records before ``first + count`` are forgotten."""
        with self._ends_lock:
            ends = np.concatenate(self._ends) if self._ends else np.zeros(0, np.int64)
            start = first - self._dropped
            self._ends, self._dropped = [ends[start + count:]], first + count
        return ends[start:start + count]

    def read_header(self) -> Optional[bytes]:
        """Reads the first line (not through pyarrow); None for an empty file."""
        line = b""
        while not line.endswith(b"\n"):
            byte = self._raw.read(1)
            if line.endswith(b"\r") and byte != b"\n":
                self._carry = byte  # A lone \r ended the line.
                break
            if not byte:
                break
            line += byte
        if not line:
            return None
        self._lines = 1
        return line

    def close(self) -> None:
        self._raw.close()
        super().close()


class _GFileRaw(io.RawIOBase):
    """A tf.io.gfile.GFile (any filesystem TF reads) as a raw binary stream."""

    def __init__(self, f):
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def _open_binary(path: str) -> io.BufferedIOBase:
    raw = io.BufferedReader(_GFileRaw(tf.io.gfile.GFile(path, "rb")), 1 << 20)
    return gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw


def _csv_values(text: str, spec: DatasetSpec) -> List[str]:
    """Python's CSV reading of one record (skipinitialspace); the reference for odd rows."""
    return next(csv.reader([text], delimiter=spec.separator, skipinitialspace=True), [])


def read_csv(spec: DatasetSpec, path: str, constants: Mapping[str, str]) -> Iterator[RawBatch]:
    """Yields the rows of one CSV file in blocks, with their physical line numbers."""
    with _LineCountingReader(_open_binary(path), spec.separator) as reader:
        if spec.header:
            header = reader.read_header()
            if header is None:
                return
            names = [c.strip() for c in _csv_values(
                header.decode("utf-8", "replace").rstrip("\r\n"), spec)]
        else:
            names = list(spec.columns)
        index = {name: i for i, name in enumerate(names)}  # The last of equal names wins.
        present = [c for c in spec.raw_columns if c in index and c not in constants]
        missing = [c for c in spec.raw_columns if c not in index and c not in constants]
        internal = [f"f{i}" for i in range(len(names))]
        invalid: List[Tuple[int, str]] = []
        invalid_lock = threading.Lock()  # pyarrow may parse ahead on another thread.

        def on_invalid_row(row) -> str:
            with invalid_lock:
                invalid.append((row.number, row.text))
            return "skip"

        batches = pa_csv.open_csv(
            io.BufferedReader(reader, BLOCK_BYTES),
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=BLOCK_BYTES,
                                            column_names=internal),
            parse_options=pa_csv.ParseOptions(delimiter=spec.separator, newlines_in_values=True,
                                              invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: pa.binary() for c in internal}, strings_can_be_null=False,
                quoted_strings_can_be_null=False))
        consumed = 0  # Records (rows pyarrow parsed, good or not) before this batch.
        recovered: List[Tuple[int, List[str]]] = []
        while True:
            try:
                batch = batches.read_next_batch()
            except StopIteration:
                batch = None
            # This batch's records: its rows and the invalid rows before and among them.
            rows = 0 if batch is None else batch.num_rows
            with invalid_lock:
                known_invalid = list(invalid)
            invalid_numbers = np.array(sorted(n - 1 for n, _ in known_invalid), np.int64)
            if batch is None:
                taken = max([consumed] + [int(n) + 1 for n in invalid_numbers])
            elif rows:
                candidates = np.arange(consumed, consumed + rows + len(invalid_numbers))
                taken = int(candidates[~np.isin(candidates, invalid_numbers)][rows - 1]) + 1
            else:
                taken = consumed
            lines = reader.record_lines(consumed, taken - consumed)
            record_numbers = np.arange(consumed, taken)
            bad_mask = np.isin(record_numbers, invalid_numbers)
            bad_rows: List[Tuple[int, str]] = []
            texts = dict((n - 1, text) for n, text in known_invalid)
            for record, line in zip(record_numbers[bad_mask], lines[bad_mask]):
                values = _csv_values(texts[record], spec)
                if values in ([], [""]):
                    continue  # A line of spaces or "": skipped as blank.
                if len(values) == len(names):  # Quoted after a space (skipinitialspace).
                    recovered.append((int(line), values))
                    continue
                bad_rows.append((int(line), f"expected {len(names)} fields, got {len(values)}: "
                                            f"{spec.separator.join(values)[:200]!r}"))
            with invalid_lock:
                invalid[:] = [(n, t) for n, t in invalid if n - 1 >= taken]
            consumed = taken
            good_lines = lines[~bad_mask]
            if batch is not None and rows:
                yield _checked_batch(spec, batch, {name: index[name] for name in present},
                                     constants, good_lines, bad_rows, missing, reader)
            elif bad_rows:
                yield RawBatch({}, np.zeros(0, np.int64), bad_rows)
            if batch is None:
                break
        if recovered:
            recovered.sort()
            batch = pa.RecordBatch.from_arrays(
                [pa.array([v[i] for _, v in recovered], pa.binary()) for i in range(len(names))],
                internal)
            yield _checked_batch(spec, batch, {name: index[name] for name in present}, constants,
                                 np.array([line for line, _ in recovered]), [], missing, reader)


def _checked_batch(spec: DatasetSpec, batch: pa.RecordBatch, columns: Dict[str, int],
                   constants: Mapping[str, str], lines: np.ndarray, bad: List[Tuple[int, str]],
                   missing: List[str], reader: _LineCountingReader) -> RawBatch:
    """Rejects the rows with undecodable bytes in any column; the needed ``columns``
    (name -> index in ``batch``) of the rest as strings, plus the constants."""
    not_utf8 = np.zeros(len(lines), bool)
    if reader.saw_replacement:
        for column in batch.columns:
            not_utf8 |= _numpy(pc.match_substring(column, "\ufffd"))
    strings = {}
    for name, i in columns.items():
        strings[name] = batch.column(i).cast(pa.string())
        if reader.saw_quote:  # `, "a"`: Python's skipinitialspace reads the quotes as quoting.
            quoted = _numpy(pc.match_substring_regex(strings[name], r'^ +"'))
            if quoted.any():
                cells = strings[name].to_pylist()
                for j in np.flatnonzero(quoted):
                    cells[j] = "".join(_csv_values(cells[j], spec))
                strings[name] = pa.array(cells, pa.string())
    bad = bad + [(int(line), "not valid UTF-8") for line in lines[not_utf8]]
    if not_utf8.any():
        keep = pa.array(~not_utf8)
        strings = {name: column.filter(keep) for name, column in strings.items()}
        lines = lines[~not_utf8]
    for name, value in constants.items():
        strings[name] = pa.repeat(pa.scalar(value, pa.string()), len(lines))
    if missing:
        return RawBatch({}, lines, bad, missing)
    return RawBatch(strings, lines, bad)


def read_tfrecord(spec: DatasetSpec, path: str, constants: Mapping[str, str]
                  ) -> Iterator[RawBatch]:
    """Yields a TFRecord file's tf.Examples as string columns (one value per feature)."""
    compression = "GZIP" if path.endswith(".gz") else ""
    needed = spec.raw_columns
    rows: List[Dict[str, str]] = []
    lines: List[int] = []
    bad: List[Tuple[int, str]] = []
    missing_lines: List[int] = []
    missing: List[str] = []
    records = tf.data.TFRecordDataset(path, compression).as_numpy_iterator()
    for number, record in enumerate(records, 1):
        example = tf.train.Example.FromString(record)
        row = dict(constants)
        for name, f in example.features.feature.items():
            values = (list(f.bytes_list.value) or list(f.float_list.value)
                      or list(f.int64_list.value))
            if len(values) > 1:
                bad.append((number, f"feature {name!r} has {len(values)} values, expected one"))
                break
            row[name] = (values[0].decode("utf-8", "replace") if isinstance(values[0], bytes)
                         else repr(values[0])) if values else ""
        else:
            absent = [c for c in needed if c not in row]
            if absent:
                missing = missing or absent
                missing_lines.append(number)
            else:
                rows.append(row)
                lines.append(number)
    columns = {c: pa.array([row[c] for row in rows], pa.string()) for c in needed}
    yield RawBatch(columns, np.array(lines, np.int64), bad)
    if missing_lines:
        yield RawBatch({}, np.array(missing_lines, np.int64), [], missing)


def read_file(spec: DatasetSpec, path: str, constants: Mapping[str, str]) -> Iterator[RawBatch]:
    reader = read_tfrecord if spec.input_format == "tfrecord" else read_csv
    return reader(spec, path, constants)


# --------------------------------------------------------------------------- converting


class ExampleConverter:
    """Turns raw string columns into serialized tf.Examples; see the module docstring.

    Features: scenario and categorical columns as bytes, numerical fields as float, labels
    as int64 named after their task, the split key as int64 or bytes.
    """

    def __init__(self, spec: DatasetSpec, with_partition_keys: bool = False):
        self.spec = spec
        self._with_partition_keys = with_partition_keys and bool(spec.split_key)
        self._na_values = pa.array(list(spec.na_values), pa.string())
        self._rules = {t.name: LabelRule(t.label_rule).compile_columns()
                       for t in spec.tasks if t.label_rule}
        names = (list(spec.scenario_columns) + spec.field_names + spec.task_names)
        self._split_key = spec.split_key if spec.split_key not in names else None
        self._encoder = ExampleEncoder()

    def convert(self, columns: Mapping[str, pa.Array], lines: np.ndarray) -> Converted:
        """``columns``: every raw column the spec needs, as strings; ``lines``: row numbers."""
        spec, n = self.spec, len(lines)
        errors = np.full(n, None, dtype=object)
        stripped: Dict[str, pa.Array] = {}

        def strip(name):
            if name not in stripped:
                stripped[name] = pc.utf8_trim_whitespace(columns[name])
            return stripped[name]

        def reject(mask, message):
            """Sets ``message(i)`` on the rows in ``mask`` that are still good."""
            for i in np.flatnonzero(mask & np.equal(errors, None)):
                errors[i] = message(i)

        features: Dict[str, Tuple[str, np.ndarray]] = {}
        for column in spec.scenario_columns:
            values = strip(column)
            reject(_numpy(pc.equal(values, "")),
                   lambda i, c=column: f"scenario column {c!r} is empty")
            features[column] = ("bytes", values)
        for field in spec.categorical_fields:
            features[field.name] = ("bytes", strip(field.name))
        for field in spec.numerical_fields:
            values, bad = self._floats(strip(field.name))
            cells = strip(field.name)
            reject(bad, lambda i, f=field.name, c=cells: (
                f"numerical field {f!r}: {c[int(i)].as_py()!r} is not a number"))
            features[field.name] = ("float", values)
        labels = {}
        for task in spec.tasks:
            if task.name in self._rules:
                values, rule_errors = self._rules[task.name](
                    {c: _numpy(columns[c]) for c in LabelRule(task.label_rule).columns}, n)
                reject(np.not_equal(rule_errors, None), lambda i, e=rule_errors: e[i])
            else:
                values, bad = self._labels(strip(task.label))
                cells = strip(task.label)
                reject(bad, lambda i, c=task.label, cs=cells: (
                    f"label column {c!r} must be 0 or 1, got {cs[int(i)].as_py()!r}"))
            labels[task.name] = values
            if task.depends_on:
                reject((values == 1) & (labels[task.depends_on] == 0), lambda i, t=task: (
                    f"task {t.name!r} is 1 but it depends on {t.depends_on!r}, which is 0"))
            features[task.name] = ("int", values)
        groups = [(None, np.equal(errors, None))]
        if self._split_key:
            key_is_int, key_ints, key_errors = self._split_keys(strip(self._split_key))
            reject(np.not_equal(key_errors, None), lambda i: key_errors[i])
            features[self._split_key] = ("key", (key_ints, strip(self._split_key)))
            # A column of int64 and bytes keys: each kind is encoded apart.
            good = np.equal(errors, None)
            groups = [(True, good & key_is_int), (False, good & ~key_is_int)]

        bad = [(int(lines[i]), errors[i]) for i in np.flatnonzero(np.not_equal(errors, None))]
        examples: List[bytes] = []
        keys: Optional[List[bytes]] = [] if self._with_partition_keys else None
        for key_as_int, mask in groups:
            rows = np.flatnonzero(mask)
            if len(rows):
                examples += self._encode(features, rows, key_as_int)
                if keys is not None:
                    keys += self._partition_keys(features[spec.split_key], rows, key_as_int)
        return Converted(examples, keys, bad)

    def _partition_keys(self, feature, rows: np.ndarray, key_as_int: Optional[bool]
                        ) -> List[bytes]:
        """The split key's tf.train.Feature per row, serialized as TFX hashes it."""
        kind, values = feature
        if kind == "key":
            kind, values = ("int", values[0]) if key_as_int else ("bytes", values[1])
        if kind == "int":
            return [tf.train.Feature(int64_list=tf.train.Int64List(value=[v])).SerializeToString(
                deterministic=True) for v in values[rows].tolist()]
        if kind == "bytes":
            return [tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode("utf-8")]))
                    .SerializeToString(deterministic=True)
                    for v in values.take(pa.array(rows)).to_pylist()]
        raise ValueError(f"dataset {self.spec.name!r}: split.key {self.spec.split_key!r} is a "
                         f"numerical field; TFX splits on bytes or int64 features only")

    def _floats(self, values: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
        """Float32 values (NaN for na_values) and the mask of cells that are not numbers."""
        na = _numpy(pc.is_in(values, value_set=self._na_values))
        text = pc.if_else(pa.array(na), pa.scalar("nan"), values)
        try:
            numbers = _numpy(text.cast(pa.float64()))
            # Arrow also reads e.g. "nan(1)"; Python's float() decides every other NaN.
            check = np.flatnonzero(np.isnan(numbers) & ~na)
        except pa.ArrowInvalid:
            numbers, check = np.full(len(values), np.nan), np.flatnonzero(~na)
        bad = np.zeros(len(values), bool)
        cells = values.to_pylist() if len(check) else []
        for i in check:
            try:
                numbers[i] = float(cells[i])
            except ValueError:
                bad[i] = True
        return numbers.astype(np.float32), bad

    @staticmethod
    def _labels(values: pa.Array) -> Tuple[np.ndarray, np.ndarray]:
        """0/1 labels and the mask of cells that are not 0 or 1 (as numbers)."""
        one = _numpy(pc.equal(values, "1"))
        other = np.flatnonzero(~(one | _numpy(pc.equal(values, "0"))))
        labels, bad = one.astype(np.int64), np.zeros(len(values), bool)
        cells = values.to_pylist() if len(other) else []
        for i in other:
            try:
                number = float(cells[i])
            except ValueError:
                number = -1.0
            if number in (0.0, 1.0):
                labels[i] = int(number)
            else:
                bad[i] = True
        return labels, bad

    @staticmethod
    def _split_keys(values: pa.Array) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Which keys are integers (as ``str.isdigit`` after a ``-`` says), their values, errors."""
        n = len(values)
        is_int = _numpy(pc.match_substring_regex(values, _INT))
        ints = np.zeros(n, np.int64)
        if is_int.any():
            ints[is_int] = _numpy(values.filter(pa.array(is_int)).cast(pa.int64()))
        errors = np.full(n, None, dtype=object)
        cells = values.to_pylist() if not is_int.all() else []
        for i in np.flatnonzero(~is_int):
            if cells[i].lstrip("-").isdigit():
                try:
                    number = int(cells[i])
                    if not -2 ** 63 <= number < 2 ** 63:
                        raise ValueError(f"split key {cells[i]!r} is outside the int64 range")
                    ints[i], is_int[i] = number, True
                except ValueError as e:
                    errors[i] = str(e)
        return is_int, ints, errors

    def _encode(self, features, rows: np.ndarray, key_as_int: Optional[bool]) -> List[bytes]:
        """Encodes ``rows`` (``example_encoding.ExampleEncoder``), one value per feature."""
        every_row = len(rows) == len(next(iter(features.values()))[1])
        take = pa.array(rows)

        def strings(values):
            return (values if every_row else values.take(take)).cast(pa.binary())

        offsets = pa.array(np.arange(len(rows) + 1, dtype=np.int32))
        arrays, names = [], []
        for name, (kind, values) in features.items():
            if kind == "bytes":
                flat = strings(values)
            elif kind == "float":
                flat = pa.array(values[rows], pa.float32())
            elif kind == "int":
                flat = pa.array(values[rows], pa.int64())
            elif key_as_int:
                flat = pa.array(values[0][rows], pa.int64())
            else:
                flat = strings(values[1])
            arrays.append(pa.ListArray.from_arrays(offsets, flat))
            names.append(name)
        return self._encoder.encode(pa.RecordBatch.from_arrays(arrays, names))


def _numpy(array: pa.Array) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array.to_numpy(zero_copy_only=False)


def convert_file(spec: DatasetSpec, path: str, constants: Sequence[Tuple[str, str]],
                 converter: Optional[ExampleConverter] = None) -> Iterator[Tuple[str, object]]:
    """Reads and converts one file, yielding ``("examples", Converted)``,
    ``("bad", message)`` and finally ``("summary", {"file", "good_rows", "bad_rows"})``.

    Every bad row's message is ``path:line: reason``; a missing column is reported once,
    and makes every row of the file bad.
    """
    converter = converter or ExampleConverter(spec)
    good = bad = 0
    missing_reported = False
    for batch in read_file(spec, path, dict(constants)):
        rejected = list(batch.bad)
        if batch.missing:
            if not missing_reported:
                yield "bad", (f"{path}: missing column(s) {batch.missing}; "
                              "every row of this file is unusable")
                missing_reported = True
            bad += len(batch.lines)
        elif len(batch.lines):
            converted = converter.convert(batch.columns, batch.lines)
            good += len(converted.examples)
            rejected += converted.bad
            yield "examples", converted
        bad += len(rejected)
        for line, reason in sorted(rejected):
            yield "bad", f"{path}:{line}: {reason}"
    yield "summary", {"file": path, "good_rows": good, "bad_rows": bad}
