"""Validating a file of any competition format: its kind guessed, then the checks of that kind.

Formats checked here (see ``data_schema/`` next to this module for the machine-readable schemas):

* Observation export tables (``taxa``, ``observations``, ``photos``, ``observers``): tab-separated, header row,
  no quoting (a field may contain a ``"``), plain, gzipped or Parquet. Described by ``export_*.table.json``.
* Competition dataset JSON (COCO style) for 2017, 2018, 2019 and 2021, train/val (with ``annotations``) and test
  (without): ``dataset_inat{year}[_test].schema.json`` (JSON Schema draft 2020-12).
* Location files (``{split}2018_locations.json``): ``locations.schema.json``.
* Kaggle submissions (``submission_inat{year}.table.json``: comma-separated, header ``id,predicted`` or
  ``Id,Predicted``, an exact number of space-separated labels per row) and scoring solutions
  (``solution.table.json``: ``id,expected,usage``).

This module guesses a file's kind and runs the checks of its phase: :mod:`inatcomp.formats.json_checks` (JSON
Schema, then the links between records) or :mod:`inatcomp.formats.table_checks` (table schemas: header, cells,
labels), both starting from the strict reading of :mod:`inatcomp.formats.kinds`.

:func:`validate_file` never raises for a bad file: every problem becomes a :class:`Problem` naming the file, the
place (``line 12, column taxon_id``, ``$.images[3].width``, or empty for whole-file problems) and what was
expected. Table checks are vectorised with NumPy/pandas, so a million-row table takes a few seconds.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

from inatcomp.formats.competitions import COMPETITIONS
from inatcomp.formats.json_checks import _validate_json
from inatcomp.formats.kinds import (
    _GZIP_MAGIC,
    _PARQUET_MAGIC,
    FileKind,
    Problem,
    _clip,
    _FileError,
    _load_json,
    _short,
    _stem,
    load_schema,
)

__all__ = ["guess_kind", "validate_file"]

_logger = logging.getLogger(__name__)


def _table_modules() -> tuple[ModuleType, ModuleType]:
    """The table reader and the table checks (:mod:`inatcomp.formats.tables`, :mod:`inatcomp.formats.table_checks`)."""
    # lazy: they import pandas and pyarrow (about 0.5 s), which validating or guessing a JSON file never needs
    from inatcomp.formats import table_checks, tables

    return tables, table_checks


# --------------------------------------------------------------------------------------------------------------------
# Guessing the kind

_TABLE_NAMES = {
    "taxa": FileKind.EXPORT_TAXA,
    "observations": FileKind.EXPORT_OBSERVATIONS,
    "photos": FileKind.EXPORT_PHOTOS,
    "observers": FileKind.EXPORT_OBSERVERS,
}
# From the one table of the years' facts: a year in the name, or (for an ``id,predicted`` header) the labels.
_SUBMISSION_BY_YEAR = {str(c.year): FileKind(f"submission_{f.value}") for f, c in COMPETITIONS.items()}
_SUBMISSION_BY_LABELS = {
    c.labels: FileKind(f"submission_{f.value}") for f, c in reversed(COMPETITIONS.items()) if c.columns[0] == "id"
}
_YEAR_RE = re.compile(r"(?<!\d)(2017|2018|2019|2021)(?!\d)")


def _kind_from_table_name(path: Path) -> FileKind | None:
    stem, suffix = _stem(path)
    if suffix == ".json":
        return None
    for table, kind in _TABLE_NAMES.items():
        if stem == table or re.search(rf"(^|[_\-.]){table}$", stem):
            return kind
    return None


def _dataset_kind(year: int, test: bool) -> FileKind:
    return FileKind(f"dataset_inat{year}{'_test' if test else ''}")


def _kind_from_json(data: Any, path: Path) -> FileKind:
    name = path.name.lower()
    if isinstance(data, list):
        if "locations" in name or (data and isinstance(data[0], dict) and {"lat", "lon"} <= data[0].keys()):
            return FileKind.LOCATIONS
        if "categories" in name or (data and isinstance(data[0], dict) and {"id", "name"} <= data[0].keys()):
            return FileKind.CATEGORIES
        raise ValueError(f"{path}: cannot tell the file kind: a JSON list that is not a location file")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: cannot tell the file kind: JSON top level is {type(data).__name__}, not an object")
    if "images" not in data and "categories" not in data:
        raise ValueError(f"{path}: cannot tell the file kind: JSON object without 'images' or 'categories'")
    test = "annotations" not in data
    year = None
    categories = data.get("categories")
    if isinstance(categories, list) and categories and isinstance(categories[0], dict):
        keys = categories[0].keys()
        if "common_name" in keys or "image_dir_name" in keys:
            year = 2021
        elif "kingdom" in keys:
            year = 2018 if "supercategory" in keys else 2019
        elif "supercategory" in keys:
            year = 2017
    images = data.get("images")
    first_image = images[0] if isinstance(images, list) and images else None
    if year is None and isinstance(first_image, dict) and {"latitude", "location_uncertainty"} & first_image.keys():
        year = 2021
    if year is None:
        info = data.get("info")
        info_year = info.get("year") if isinstance(info, dict) else None
        if str(info_year) in _SUBMISSION_BY_YEAR:
            year = int(info_year)
    if year is None and (match := _YEAR_RE.search(name)):
        year = int(match.group(1))
    if year is None:
        raise ValueError(f"{path}: cannot tell the competition year from the categories, images, info or name")
    return _dataset_kind(year, test)


def _first_lines(path: Path, count: int = 2) -> list[str]:
    """The first lines of a (possibly gzipped) text file, decoded leniently."""
    with path.open("rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == _GZIP_MAGIC else open
    lines: list[str] = []
    with opener(path, "rb") as fh:  # type: ignore[operator]
        for raw in fh:
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff"))
            if len(lines) >= count:
                break
    return lines


def _kind_from_header(columns: list[str], path: Path, first_row: str | None) -> FileKind | None:
    lowered = [c.strip().lower() for c in columns]
    if lowered == ["id", "predicted"]:
        if match := _YEAR_RE.search(path.name):
            return _SUBMISSION_BY_YEAR[match.group(1)]
        if columns == ["Id", "Predicted"]:
            return FileKind.SUBMISSION_INAT2021
        if first_row is not None and first_row.count(",") == 1:
            labels = len(first_row.split(",", 1)[1].split())
            if labels in _SUBMISSION_BY_LABELS:
                return _SUBMISSION_BY_LABELS[labels]
        return None
    if lowered == ["id", "expected", "usage"]:
        return FileKind.SOLUTION
    for kind in _TABLE_NAMES.values():
        names = {f["name"] for f in load_schema(kind)["fields"] if not f.get("optional")}
        if names and names <= set(columns) and set(columns) <= {f["name"] for f in load_schema(kind)["fields"]}:
            return kind
    return None


def guess_kind(path: str | os.PathLike) -> FileKind:
    """Guess a file's kind from its name and content.

    Names: ``taxa.csv``, ``observations.csv.gz``, ``photos.parquet``, ``observers...`` are export tables;
    ``*locations*.json`` is a location file. Content: a dataset JSON's year comes from its categories (2021 have
    ``common_name``; 2018 ``kingdom`` and ``supercategory``; 2019 ``kingdom`` only; 2017 ``supercategory`` only),
    then its images, ``info.year`` or a year in the name; no ``annotations`` key means the test flavour. A CSV
    header ``Id,Predicted`` is a 2021 submission, ``id,predicted`` a 2017/2018/2019 one (year from the name, else
    from the number of labels in the first row), ``id,expected,usage`` a solution; a tab-separated header is
    matched against the export tables' columns.

    Args:
        path: The file.

    Returns:
        The kind.

    Raises:
        ValueError: Naming the file, when the kind cannot be told (including unreadable or malformed files).
    """
    path = Path(path)
    kind = _kind_from_table_name(path)
    if kind is not None:
        return kind
    if not path.is_file():
        raise ValueError(f"{path}: cannot tell the file kind: no such file")
    with path.open("rb") as fh:
        magic = fh.read(4)
    stem, suffix = _stem(path)
    if magic == _PARQUET_MAGIC or suffix in (".parquet", ".pq"):
        tables, _ = _table_modules()
        try:
            columns = tables._parquet_columns(path)
        except Exception as err:  # noqa: BLE001 - any pyarrow failure means "unreadable"
            raise ValueError(f"{path}: cannot tell the file kind: not a readable Parquet file ({err})") from None
        kind = _kind_from_header(columns, path, None)
        if kind is None:
            raise ValueError(f"{path}: cannot tell the file kind from the Parquet columns {columns}")
        return kind
    if suffix == ".json" or (not suffix and magic[:1] in (b"{", b"[")):
        try:
            data = _load_json(path)
        except _FileError as err:
            raise ValueError(
                f"{path}: cannot tell the file kind: {err.where + ': ' if err.where else ''}{err}"
            ) from None
        return _kind_from_json(data, path)
    try:
        lines = _first_lines(path)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot tell the file kind: unreadable ({err})") from None
    if not lines:
        raise ValueError(f"{path}: cannot tell the file kind: the file is empty")
    header = lines[0]
    first_row = lines[1] if len(lines) > 1 else None
    for delimiter in ("\t", ","):
        if delimiter in header:
            kind = _kind_from_header(header.split(delimiter), path, first_row)
            if kind is not None:
                return kind
    if "solution" in stem:
        return FileKind.SOLUTION
    raise ValueError(f"{path}: cannot tell the file kind from the name or the header {_short(header)}")


# --------------------------------------------------------------------------------------------------------------------
# Validation entry point


def validate_file(path: str | os.PathLike, kind: FileKind | None = None, *, max_problems: int = 200) -> list[Problem]:
    """Validate one file against its schema and the cross-record rules a schema cannot express.

    Never raises for a bad file: unreadable, empty, binary, malformed or invalid content all become problems.

    Args:
        path: The file.
        kind: Its kind; ``None`` guesses it with :func:`guess_kind` (an unguessable file is one problem).
        max_problems: At most this many problems are returned, followed by one more saying how many were
            suppressed.

    Returns:
        The problems found, empty when the file is valid.
    """
    file = os.fspath(path)
    path = Path(path)
    if not path.exists():
        return [Problem(file, "", "no such file")]
    if not path.is_file():
        return [Problem(file, "", "not a regular file")]
    max_problems = max(1, int(max_problems))
    try:
        data = None
        if kind is None:
            kind, data = _guess_for_validation(path)
        _logger.debug("validating %s as %s", file, kind.value)
        if kind.is_table:
            _, table_checks = _table_modules()
            found = table_checks._validate_table(path, kind, max_problems)
        else:
            found = _validate_json(_load_json(path) if data is None else data, kind, max_problems)
    except _FileError as err:
        return [Problem(file, err.where, err.message)]
    except ValueError as err:
        return [Problem(file, "", str(err).removeprefix(f"{path}: ").removeprefix(f"{file}: "))]
    except (OSError, MemoryError) as err:
        return [Problem(file, "", f"cannot read the file: {err}")]
    except Exception as err:  # noqa: BLE001 - a bad file must never crash validation
        _logger.exception("unexpected error while validating %s", file)
        return [Problem(file, "", f"cannot validate the file: {type(err).__name__}: {err}")]
    problems = [Problem(file, where, _clip(message)) for where, message in found.items]
    if found.total > len(problems):
        problems.append(Problem(file, "", f"{found.total - len(problems)} more problem(s) suppressed"))
    return problems


def _guess_for_validation(path: Path) -> tuple[FileKind, Any]:
    """Like :func:`guess_kind`, but read errors of a JSON file surface as their own problem.

    Returns:
        The kind, and the parsed JSON when it had to be read (else None).
    """
    if path.stat().st_size == 0:
        raise _FileError("", "file is empty")
    if _stem(path)[1] == ".json" and _kind_from_table_name(path) is None:
        data = _load_json(path)
        return _kind_from_json(data, path), data
    return guess_kind(path), None
