"""Checking a table against its table schema: the header, then every column's cells, then submission labels.

Table schemas (``*.table.json`` in ``data_schema/``) follow the spirit of Frictionless Table Schema: ``dialect``
(``delimiter``, ``header``, ``exactHeader``), ``fields`` (``name``, ``type`` in
integer/number/string/uuid/date/boolean/enum, ``required`` meaning "the value may not be empty", ``optional``
meaning "the column may be absent", ``constraints`` with ``minimum``, ``maximum``, ``enum``, ``pattern``,
``unique``) and, for submissions, ``labels``. The checks are vectorised over whole columns with NumPy, pandas and
pyarrow, so a million-row table takes a few seconds; findings are reported in line order, at most ``max_problems``
for each rule, the rest counted.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.formats.kinds import _PARQUET_MAGIC, FileKind, _decode_utf8, _Found, _read_bytes, _short, load_schema
from inatcomp.formats.tables import _parse_text, _read_parquet_for_validation, _Table

__all__ = []  # nothing public: validate_file (inatcomp.formats.validate) is the entry point

_TYPE_PATTERNS = {
    "integer": r"[+-]?\d+",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "date": r"\d{4}-\d{2}-\d{2}",
    "number": r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?",
}
_TYPE_WORDS = {
    "integer": "an integer",
    "number": "a number",
    "uuid": "a UUID (8-4-4-4-12 hex digits)",
    "date": "a date YYYY-MM-DD",
    "boolean": "a boolean (true, false, t or f)",
    "string": "text",
    "enum": "one of the listed values",
}
_BOOLEANS = {"true": True, "false": False, "t": True, "f": False}


@dataclasses.dataclass
class _Checks:
    """Cell-level findings of one table: (row, column order, column, message), at most ``limit`` per rule."""

    table: _Table
    limit: int
    items: list[tuple[int, int, str, str]] = dataclasses.field(default_factory=list)
    extra: int = 0

    def report(self, mask: np.ndarray, order: int, column: str, describe: Callable[[int], str]) -> None:
        """Record the rows where ``mask`` is true; ``describe(row)`` gives the message."""
        rows = np.flatnonzero(mask)
        for row in rows[: self.limit]:
            self.items.append((int(row), order, column, describe(int(row))))
        self.extra += max(0, len(rows) - self.limit)


def _validate_table(path: Path, kind: FileKind, max_problems: int) -> _Found:
    schema = load_schema(kind)
    dialect = schema.get("dialect", {})
    delimiter = dialect.get("delimiter", ",")
    fields = schema["fields"]
    found = _Found(max_problems)
    with path.open("rb") as fh:
        magic = fh.read(4)
    ragged: list[tuple[int, str]] = []
    ragged_total = 0
    if magic == _PARQUET_MAGIC:
        columns, table = _read_parquet_for_validation(path)
        if not _parquet_columns_ok(columns, fields, found):
            return found
    else:
        data, gzipped = _read_bytes(path)
        _decode_utf8(data, gzipped)
        if not _header_ok(data.split(b"\n", 1)[0].rstrip(b"\r"), delimiter, dialect, fields, found):
            return found
        columns, table, ragged, ragged_total = _parse_text(data, gzipped, delimiter, max_problems)
    checks = _Checks(table, max_problems)
    frame = table.frame
    if dialect.get("exactHeader") and len(frame.columns) == len(fields):  # header already reported if it differs
        frame = frame.set_axis([f["name"] for f in fields], axis=1)
    if len(frame) == 0 and found.total == 0 and ragged_total == 0:
        found.add("", "no data rows after the header")
    for order, field in enumerate(fields):
        if field["name"] in frame.columns:
            _check_column(frame[field["name"]], field, order, checks)
    labels = _submission_labels(kind)
    if labels and fields[1]["name"] in frame.columns:
        _check_labels(frame[fields[1]["name"]], fields[1]["name"], labels, checks)
    located = [
        (table.line_key(row), order, table.where(row, column), message) for row, order, column, message in checks.items
    ]
    located += [(line, -1, f"line {line}", message) for line, message in ragged]
    located.sort(key=lambda item: (item[0], item[1]))
    for _line, _order, where, message in located:
        found.add(where, message)
    found.add_count(checks.extra + ragged_total - len(ragged))
    return found


_DELIMITER_WORDS = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}


def _header_ok(header: bytes, delimiter: str, dialect: dict, fields: list[dict], found: _Found) -> bool:
    """Check a text header; report and return False when the table cannot be read column by column."""
    text = header.decode("utf-8", errors="replace").lstrip("\ufeff")
    columns = text.split(delimiter)
    names = [f["name"] for f in fields]
    required = [f["name"] for f in fields if not f.get("optional")]
    sep_word = _DELIMITER_WORDS.get(delimiter, repr(delimiter))
    expected = ", ".join(names)
    if len(columns) == 1 and len(required) > 1:
        other = next((d for d in ("\t", ",", ";", "|") if d != delimiter and d in text), None)
        hint = f" (it looks {_DELIMITER_WORDS[other]}-separated)" if other else ""
        found.add(
            "line 1",
            f"header has 1 column {_short(text)}{hint}; expected {len(names)} {sep_word}-separated columns: {expected}",
        )
        return False
    if dialect.get("exactHeader") and columns != names:
        want = delimiter.join(names)
        if [c.strip().lower() for c in columns] == [n.lower() for n in names]:
            found.add("line 1", f"header is {text!r}, expected exactly {want!r} (case and spaces matter)")
            return True
        found.add("line 1", f"header is {_short(text)}, expected exactly {want!r}")
        return False
    duplicates = sorted(c for c, n in Counter(columns).items() if n > 1)
    if duplicates:
        found.add("line 1", f"duplicate column(s) {', '.join(duplicates)} in the header")
        return False
    missing = [n for n in required if n not in columns]
    extra = [c for c in columns if c not in names]
    if missing:
        found.add("line 1", f"missing column(s) {', '.join(missing)}; expected columns: {expected}")
    if extra:
        found.add("line 1", f"unexpected column(s) {', '.join(map(repr, extra))}; expected columns: {expected}")
    return not missing


def _parquet_columns_ok(columns: list[str], fields: list[dict], found: _Found) -> bool:
    names = [f["name"] for f in fields]
    missing = [f["name"] for f in fields if not f.get("optional") and f["name"] not in columns]
    extra = [c for c in columns if c not in names]
    if missing:
        found.add("", f"missing column(s) {', '.join(missing)}; expected columns: {', '.join(names)}")
    if extra:
        found.add("", f"unexpected column(s) {', '.join(map(repr, extra))}; expected columns: {', '.join(names)}")
    return not missing


def _as_text(column: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """String view of a column and its non-empty mask (missing values count as empty)."""
    if pd.api.types.is_string_dtype(column.dtype) and not column.hasnans:
        text = column.astype(str)
    else:
        text = column.astype(object).where(column.notna(), "").astype(str)
    present = (text != "").to_numpy(dtype=bool)
    return text, present


def _to_float(text: pd.Series, ok: np.ndarray) -> np.ndarray:
    """Float values of the strings where ``ok`` (already known to look numeric); NaN elsewhere."""
    try:
        values = pc.cast(pc.if_else(pa.array(ok), pa.array(text, type=pa.string()), None), pa.float64())
        return values.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return pd.to_numeric(text.where(ok, ""), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _check_column(column: pd.Series, field: dict, order: int, checks: _Checks) -> None:
    """Record the type, emptiness, enum, range, pattern and uniqueness findings of one column."""
    name, type_ = field["name"], field["type"]
    constraints = field.get("constraints", {})
    text, present = _as_text(column)

    def report(mask: np.ndarray, describe: Callable[[str], str]) -> None:
        checks.report(mask, order, name, lambda row: describe(text.iloc[row]))

    if field.get("required", False):
        report(~present, lambda v: f"empty value; expected {_TYPE_WORDS[type_]}")
    if type_ in ("integer", "number"):
        if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
            numeric = column.to_numpy(dtype=float, na_value=np.nan)
            bad = present & ~np.isfinite(numeric)
            if type_ == "integer":
                bad |= present & np.isfinite(numeric) & (numeric != np.floor(numeric))
        else:
            bad = present & ~text.str.fullmatch(_TYPE_PATTERNS[type_]).to_numpy(dtype=bool, na_value=False)
            numeric = _to_float(text, present & ~bad)
            bad |= present & ~bad & ~np.isfinite(numeric)
        report(bad, lambda v: f"{_short(v)} is not {_TYPE_WORDS[type_]}")
        valid = present & ~bad
        if "minimum" in constraints:
            low = constraints["minimum"]
            report(valid & (numeric < low), lambda v: f"{_short(v)} is below the minimum {low}")
        if "maximum" in constraints:
            high = constraints["maximum"]
            report(valid & (numeric > high), lambda v: f"{_short(v)} is above the maximum {high}")
        if "enum" in constraints:
            allowed = np.asarray(constraints["enum"], dtype=float)
            report(valid & ~np.isin(numeric, allowed), lambda v: f"{_short(v)} is not one of {_enum_words(allowed)}")
    elif type_ in ("uuid", "date"):
        if type_ == "date" and pd.api.types.is_datetime64_any_dtype(column.dtype):
            return
        bad = present & ~text.str.fullmatch(_TYPE_PATTERNS[type_]).to_numpy(dtype=bool, na_value=False)
        if type_ == "date":
            candidates = present & ~bad
            parsed = pd.to_datetime(text.where(candidates, None), format="%Y-%m-%d", errors="coerce")
            bad |= candidates & parsed.isna().to_numpy()
        report(bad, lambda v: f"{_short(v)} is not {_TYPE_WORDS[type_]}")
    elif type_ == "boolean":
        if not pd.api.types.is_bool_dtype(column.dtype):
            bad = present & ~text.str.lower().isin(list(_BOOLEANS)).to_numpy(dtype=bool)
            report(bad, lambda v: f"{_short(v)} is not {_TYPE_WORDS[type_]}")
    elif type_ == "enum":
        allowed = [str(v) for v in constraints.get("enum", [])]
        bad = present & ~text.isin(allowed).to_numpy(dtype=bool)
        report(bad, lambda v: f"{_short(v)} is not one of {', '.join(allowed)}")
    if type_ == "string" and "pattern" in constraints:
        pattern = constraints["pattern"]
        bad = present & ~text.str.fullmatch(pattern).to_numpy(dtype=bool, na_value=False)
        report(bad, lambda v: f"{_short(v)} does not match the pattern {pattern}")
    if constraints.get("unique"):
        duplicated = present & text.duplicated(keep="first").to_numpy(dtype=bool)
        if duplicated.any():
            first = pd.Series(np.arange(len(text))).groupby(text.to_numpy()).transform("min").to_numpy()
            checks.report(
                duplicated,
                order,
                name,
                lambda row: (
                    f"duplicate {name} {_short(text.iloc[row])} (first at {checks.table.where(int(first[row]))})"
                ),
            )


def _enum_words(values: np.ndarray) -> str:
    if len(values) <= 12:
        return ", ".join(f"{v:g}" for v in values)
    return f"{values[0]:g}, {values[1]:g}, ..., {values[-1]:g} ({len(values)} values, see the table schema)"


def _submission_labels(kind: FileKind) -> int | None:
    """Labels per row of a submission kind, from the years' table (its schema file says the same: tested)."""
    if not kind.value.startswith("submission_"):
        return None
    return SubmissionFormat(kind.value.removeprefix("submission_")).labels


def _check_labels(column: pd.Series, name: str, labels: int, checks: _Checks) -> None:
    """Submission ``predicted``: exactly ``labels`` integer ids separated by single spaces, none repeated."""
    text, present = _as_text(column)
    pattern = r"\d+" + (rf"( \d+){{{labels - 1}}}" if labels > 1 else "")
    good = text.str.fullmatch(pattern).to_numpy(dtype=bool, na_value=False)
    word = "id" if labels == 1 else "ids"

    def describe(row: int) -> str:
        value = text.iloc[row]
        tokens = value.split()
        if not all(t.isdigit() for t in tokens):
            return f"{_short(value)}: labels must be integer category ids"
        if len(tokens) != labels:
            return f"{_short(value)} has {len(tokens)} label(s); expected exactly {labels} category {word}"
        return f"{_short(value)}: labels must be separated by single spaces"

    checks.report(present & ~good, 1, name, describe)
    if labels < 2 or not good.any():
        return
    rows = np.flatnonzero(good)
    parts = text.iloc[rows].str.split(" ", expand=True)
    values = np.column_stack([pd.to_numeric(parts[i]).to_numpy(dtype=float) for i in range(labels)])
    repeated = np.zeros(len(rows), dtype=bool)
    for i in range(labels):
        for j in range(i + 1, labels):
            repeated |= values[:, i] == values[:, j]
    mask = np.zeros(len(text), dtype=bool)
    mask[rows[repeated]] = True
    checks.report(mask, 1, name, lambda row: f"{_short(text.iloc[row])} repeats a label; each label may appear once")
