"""Competition file formats: schemas and validation.

Formats checked here (see ``data_schema/`` next to this module for the machine-readable schemas):

* Observation export tables (``taxa``, ``observations``, ``photos``, ``observers``): tab-separated, header row,
  no quoting (a field may contain a ``"``), plain, gzipped or Parquet. Described by ``export_*.table.json``.
* Competition dataset JSON (COCO style) for 2017, 2018, 2019 and 2021, train/val (with ``annotations``) and test
  (without): ``dataset_inat{year}[_test].schema.json`` (JSON Schema draft 2020-12).
* Location files (``{split}2018_locations.json``): ``locations.schema.json``.
* Kaggle submissions (``submission_inat{year}.table.json``: comma-separated, header ``id,predicted`` or
  ``Id,Predicted``, an exact number of space-separated labels per row) and scoring solutions
  (``solution.table.json``: ``id,expected,usage``).

Table schemas follow the spirit of Frictionless Table Schema: ``dialect`` (``delimiter``, ``header``,
``exactHeader``), ``fields`` (``name``, ``type`` in integer/number/string/uuid/date/boolean/enum, ``required``
meaning "the value may not be empty", ``optional`` meaning "the column may be absent", ``constraints`` with
``minimum``, ``maximum``, ``enum``, ``pattern``, ``unique``) and, for submissions, ``labels``.

:func:`validate_file` never raises for a bad file: every problem becomes a :class:`Problem` naming the file, the
place (``line 12, column taxon_id``, ``$.images[3].width``, or empty for whole-file problems) and what was
expected. Table checks are vectorised with NumPy/pandas, so a million-row table takes a few seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import gzip
import io
import json
import logging
import os
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported where tables are read: validating a JSON file never pays for it
    import pandas as pd

# The file primitives live in inatcomp.fileio (no pandas there); re-exported for the stages that import them here.
from inatcomp.fileio import read_json, write_atomic, write_csv, write_csv_columns, write_json  # noqa: F401
from inatcomp.formats.competitions import COMPETITIONS, SubmissionFormat

_logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "data_schema"

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_MAX_VALUE_CHARS = 60
_MAX_MESSAGE_CHARS = 300


class FileKind(enum.Enum):
    """Every file kind that can be validated; the value is the schema file's stem in ``data_schema/``."""

    DATASET_INAT2017 = "dataset_inat2017"
    DATASET_INAT2017_TEST = "dataset_inat2017_test"
    DATASET_INAT2018 = "dataset_inat2018"
    DATASET_INAT2018_TEST = "dataset_inat2018_test"
    DATASET_INAT2019 = "dataset_inat2019"
    DATASET_INAT2019_TEST = "dataset_inat2019_test"
    DATASET_INAT2021 = "dataset_inat2021"
    DATASET_INAT2021_TEST = "dataset_inat2021_test"
    LOCATIONS = "locations"
    CATEGORIES = "categories"
    EXPORT_TAXA = "export_taxa"
    EXPORT_OBSERVATIONS = "export_observations"
    EXPORT_PHOTOS = "export_photos"
    EXPORT_OBSERVERS = "export_observers"
    SUBMISSION_INAT2017 = "submission_inat2017"
    SUBMISSION_INAT2018 = "submission_inat2018"
    SUBMISSION_INAT2019 = "submission_inat2019"
    SUBMISSION_INAT2021 = "submission_inat2021"
    SOLUTION = "solution"

    @property
    def is_table(self) -> bool:
        """Whether the kind is a delimited table (described by a ``.table.json``) rather than JSON."""
        return self.value.startswith(("export_", "submission_")) or self is FileKind.SOLUTION

    @property
    def is_dataset(self) -> bool:
        """Whether the kind is a competition dataset JSON."""
        return self.value.startswith("dataset_")

    @property
    def is_test(self) -> bool:
        """Whether the kind is a test-split dataset JSON (no annotations)."""
        return self.is_dataset and self.value.endswith("_test")

    @property
    def schema_filename(self) -> str:
        """The schema's file name inside ``data_schema/``."""
        return f"{self.value}.table.json" if self.is_table else f"{self.value}.schema.json"


@dataclasses.dataclass(frozen=True)
class Problem:
    """One validation finding.

    Attributes:
        file: The path as given.
        where: ``"line 12"``, ``"line 12, column taxon_id"``, ``"$.images[3].width"``, or ``""`` for whole-file
            problems.
        message: What was found and what was expected.
    """

    file: str
    where: str
    message: str

    def __str__(self) -> str:
        if self.where:
            return f"{self.file}: {self.where}: {self.message}"
        return f"{self.file}: {self.message}"


class _FileError(Exception):
    """A whole-file problem found while reading (empty, undecodable, unparsable)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where
        self.message = message


# --------------------------------------------------------------------------------------------------------------------
# Schemas


def load_schema(kind: FileKind) -> dict:
    """Read the schema of a file kind from the ``data_schema`` folder next to this module.

    Args:
        kind: The file kind.

    Returns:
        A fresh copy of the JSON Schema (JSON kinds) or table schema (table kinds).
    """
    return json.loads(_schema_text(kind))


@cache
def _schema_text(kind: FileKind) -> str:
    return (SCHEMA_DIR / kind.schema_filename).read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# Reading raw bytes


def _short(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_bytes(path: Path) -> tuple[bytes, bool]:
    """Return the file's bytes, gunzipped when it is gzip data, and whether it was gzipped."""
    raw = path.read_bytes()
    if not raw:
        raise _FileError("", "file is empty")
    if raw[:2] != _GZIP_MAGIC:
        return raw, False
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise _FileError("", f"corrupt gzip data ({err}); expected a valid .gz file") from None
    if not data:
        raise _FileError("", "file is empty (after gunzip)")
    return data, True


def _decode_utf8(data: bytes, gzipped: bool) -> str:
    """Decode UTF-8 strictly, turning errors into a :class:`_FileError` with line and byte offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        of = " of the decompressed data" if gzipped else ""
        if b"\x00" in data[:8192]:
            msg = f"binary data, not UTF-8 text (invalid byte {data[err.start : err.start + 1]!r} at byte offset "
            raise _FileError("", msg + f"{err.start}{of}); expected a UTF-8 text file") from None
        msg = f"invalid UTF-8: byte {data[err.start : err.start + 1]!r} at byte offset {err.start}{of} "
        msg += f"({err.reason}); expected UTF-8 text"
        raise _FileError(f"line {line}", msg) from None
    if "\x00" in text:
        raise _FileError("", f"NUL character at byte offset {data.index(0)}: looks like binary data, expected text")
    return text


def _load_json(path: Path) -> Any:
    data, gzipped = _read_bytes(path)
    text = _decode_utf8(data, gzipped)
    if not text.strip():
        raise _FileError("", "file contains only whitespace; expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _FileError(f"line {err.lineno}, column {err.colno}", f"malformed JSON: {err.msg}") from None
    except RecursionError:
        raise _FileError("", "malformed JSON: nested too deeply") from None


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
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".json")


def _stem(path: Path) -> tuple[str, str]:
    """Lower-case name without ``.gz`` and the format suffix, and that format suffix."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in _TEXT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


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
        import pyarrow.parquet as pq

        try:
            columns = list(pq.read_schema(path).names)
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
            found = _validate_table(path, kind, max_problems)
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


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[: _MAX_MESSAGE_CHARS - 3] + "..."


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


@dataclasses.dataclass
class _Found:
    """Problems collected so far (``where``, ``message``) and the total count, including suppressed ones."""

    limit: int
    items: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    total: int = 0

    def add(self, where: str, message: str) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append((where, message))

    def add_count(self, count: int) -> None:
        self.total += count


# --------------------------------------------------------------------------------------------------------------------
# JSON validation


def _json_path(parts: Iterable[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if re.fullmatch(r"\w+", part) else f"[{part!r}]")
    return out


def _validate_json(data: Any, kind: FileKind, max_problems: int) -> _Found:
    found = _Found(max_problems)
    shallow, items = _json_plan(kind)
    for error in shallow.iter_errors(data):
        found.add(_json_path(error.absolute_path), _error_message(error, kind))
    for key, (check, validator) in items.items():
        records = data if key is None else (data.get(key) if isinstance(data, dict) else None)
        if not isinstance(records, list):
            continue
        prefix = "$" if key is None else f"$.{key}"
        for index, record in enumerate(records):
            if check is not None and check(record):
                continue
            for error in validator.iter_errors(record):
                found.add(f"{prefix}[{index}]{_json_path(error.absolute_path)[1:]}", _error_message(error, kind))
    if kind in (FileKind.LOCATIONS, FileKind.CATEGORIES):
        if isinstance(data, list):
            _check_unique_ids(data, "$", found)
    elif isinstance(data, dict):
        _check_dataset_links(data, kind, found)
    return found


def _error_message(error: Any, kind: FileKind) -> str:
    if error.validator == "not" and kind.is_test:
        return "a test file must not have an 'annotations' key (that is the train/val flavour)"
    if error.validator == "anyOf" and kind is FileKind.LOCATIONS:
        return "record has neither 'date' nor 'date_c'; expected one of them"
    if error.validator == "type":
        return f"{_short(error.instance)} is not of type {error.validator_value!r}"
    if error.validator == "required":
        return f"{error.message.split(' is a required')[0]} is a required property, missing here"
    return error.message


@cache
def _json_plan(kind: FileKind) -> tuple[Any, dict[str | None, tuple[Callable[[Any], bool] | None, Any]]]:
    """Split a schema for speed: a validator without the big arrays' ``items``, and per array a fast yes/no check.

    Records failing the fast check (or every record, when the item schema is too rich for it) go through
    jsonschema for the messages, so results are the same as validating the whole document with jsonschema.
    """
    import jsonschema

    schema = load_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    defs = schema.get("$defs", {})
    arrays: dict[str | None, dict] = {}
    if schema.get("type") == "array" and "items" in schema:
        arrays[None] = schema
    for key, sub in schema.get("properties", {}).items():
        if isinstance(sub, dict) and sub.get("type") == "array" and "items" in sub:
            arrays[key] = sub
    items = {}
    for key, holder in arrays.items():
        item_schema = holder.pop("items")
        ref = item_schema.get("$ref", "")
        if ref.startswith("#/$defs/"):
            item_schema = defs[ref.removeprefix("#/$defs/")]
        items[key] = (_fast_checker(item_schema), jsonschema.Draft202012Validator(item_schema))
    return jsonschema.Draft202012Validator(schema), items


_FAST_OBJECT_KEYWORDS = {"type", "required", "properties", "additionalProperties", "description", "anyOf"}
_FAST_VALUE_KEYWORDS = {"type", "minimum", "maximum", "minLength", "description"}


def _fast_checker(schema: dict) -> Callable[[Any], bool] | None:
    """A quick yes/no check of a flat object schema, or None when the schema uses anything else."""
    if schema.get("type") != "object" or not set(schema) <= _FAST_OBJECT_KEYWORDS:
        return None
    if schema.get("additionalProperties", True) is not True:
        return None
    alternatives = [alt.get("required", []) for alt in schema.get("anyOf", [])]
    if any(set(alt) != {"required"} for alt in schema.get("anyOf", [])):
        return None
    props = []
    for name, sub in schema.get("properties", {}).items():
        if not set(sub) <= _FAST_VALUE_KEYWORDS:
            return None
        types = sub.get("type", [])
        types = frozenset([types] if isinstance(types, str) else types)
        props.append((name, types, sub.get("minimum"), sub.get("maximum"), sub.get("minLength")))
    required = list(schema.get("required", []))

    def check(record: Any) -> bool:
        if type(record) is not dict:
            return False
        if any(key not in record for key in required):
            return False
        if alternatives and not any(all(key in record for key in alt) for alt in alternatives):
            return False
        for name, types, low, high, min_length in props:
            if name not in record:
                continue
            value = record[name]
            if types and not _type_ok(value, types):
                return False
            if isinstance(value, int | float) and not isinstance(value, bool):
                if (low is not None and value < low) or (high is not None and value > high):
                    return False
            elif min_length is not None and isinstance(value, str) and len(value) < min_length:
                return False
        return True

    return check


def _type_ok(value: Any, types: frozenset[str]) -> bool:
    """JSON Schema ``type`` semantics (an integral float counts as an integer; a bool is not a number)."""
    if value is None:
        return "null" in types
    if isinstance(value, bool):
        return "boolean" in types
    if isinstance(value, int):
        return "integer" in types or "number" in types
    if isinstance(value, float):
        return "number" in types or ("integer" in types and value.is_integer())
    if isinstance(value, str):
        return "string" in types
    if isinstance(value, dict):
        return "object" in types
    if isinstance(value, list):
        return "array" in types
    return False


def _int_id(record: Any, key: str = "id") -> int | None:
    if isinstance(record, dict):
        value = record.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _check_unique_ids(records: list, where: str, found: _Found) -> set[int]:
    first: dict[int, int] = {}
    for index, record in enumerate(records):
        value = _int_id(record)
        if value is None:
            continue
        if value in first:
            found.add(f"{where}[{index}].id", f"duplicate id {value} (first used at {where}[{first[value]}])")
        else:
            first[value] = index
    return set(first)


_DATASET_LISTS = ("images", "categories", "annotations", "licenses")


def _check_dataset_links(data: dict, kind: FileKind, found: _Found) -> None:
    lists = {key: data.get(key) if isinstance(data.get(key), list) else None for key in _DATASET_LISTS}
    ids = {key: _check_unique_ids(records, f"$.{key}", found) for key, records in lists.items() if records is not None}
    images, licenses = lists["images"], ids.get("licenses")
    if images is not None and licenses is not None:
        for index, image in enumerate(images):
            license_id = _int_id(image, "license")
            if license_id is not None and license_id not in licenses:
                found.add(f"$.images[{index}].license", f"license {license_id} is not the id of any entry in licenses")
    annotations = lists["annotations"]
    if annotations is None:
        return
    categories = ids.get("categories")
    image_ids = ids.get("images")
    annotated: Counter[int] = Counter()
    for index, annotation in enumerate(annotations):
        image_id = _int_id(annotation, "image_id")
        if image_id is not None:
            annotated[image_id] += 1
            if image_ids is not None and image_id not in image_ids:
                found.add(f"$.annotations[{index}].image_id", f"image_id {image_id} is not the id of any image")
        category_id = _int_id(annotation, "category_id")
        if categories is not None and category_id is not None and category_id not in categories:
            found.add(f"$.annotations[{index}].category_id", f"category_id {category_id} is not the id of any category")
    if images is not None and not kind.is_test:
        for index, image in enumerate(images):
            image_id = _int_id(image)
            if image_id is not None and image_id not in annotated:
                found.add(f"$.images[{index}]", f"image {image_id} has no annotation; every train/val image needs one")


# --------------------------------------------------------------------------------------------------------------------
# Tables

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
class _Table:
    """A table read for validation: string cells (or native Parquet columns) and where each row came from."""

    frame: pd.DataFrame
    row_where: np.ndarray | None  # 1-based line number per row for text tables; None for Parquet ("row N")

    def line_key(self, row: int) -> int:
        """A sort key: the line number (text) or row number (Parquet)."""
        return row + 1 if self.row_where is None else int(self.row_where[row])

    def where(self, row: int, column: str | None = None) -> str:
        place = f"row {row + 1}" if self.row_where is None else f"line {int(self.row_where[row])}"
        return place if column is None else f"{place}, column {column}"


def _parse_text(
    data: bytes, gzipped: bool, delimiter: str, limit: int | None
) -> tuple[list[str], _Table, list[tuple[int, str]], int]:
    """Parse delimited UTF-8 text whose first line is the header.

    Args:
        data: The (gunzipped) bytes.
        gzipped: Whether they were gunzipped (for messages).
        delimiter: The field delimiter.
        limit: How many ragged lines to describe; None raises ValueError on the first one instead.

    Returns:
        The header's columns, the table of well-formed rows, up to ``limit`` (line number, message) pairs for the
        lines whose field count differs from the header's (left out of the table), and the number of such lines.
    """
    _decode_utf8(data, gzipped)  # raises _FileError with the byte offset
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    header = data[: ends[0]].decode("utf-8").rstrip("\r")
    columns = header.split(delimiter)
    delims = np.flatnonzero(arr == ord(delimiter))
    fields = np.bincount(np.searchsorted(ends, delims), minlength=len(ends))[: len(ends)] + 1
    bad = np.flatnonzero(fields[1:] != len(columns)) + 1
    if len(bad):
        starts = np.concatenate(([0], ends[:-1] + 1))
        if limit is None:
            line = int(bad[0])
            raise ValueError(f"line {line + 1}: {_fields_message(data, starts, ends, line, fields, len(columns))}")
        ragged = [
            (int(line) + 1, _fields_message(data, starts, ends, int(line), fields, len(columns)))
            for line in bad[:limit]
        ]
        keep = np.ones(len(ends), dtype=bool)
        keep[bad] = False
        lengths = np.diff(np.concatenate(([0], ends + 1)))
        lengths[-1] = len(data) - (ends[-2] + 1 if len(ends) > 1 else 0)
        data = arr[np.repeat(keep, lengths)].tobytes()
        lines = np.flatnonzero(keep[1:]) + 2
    else:
        lines = np.arange(2, len(ends) + 1)
        ragged = []
    frame = _read_regular_text(data, delimiter, columns)
    if len(frame) != len(lines):  # should not happen (e.g. lone CR line endings): fall back to row numbers
        _logger.warning("row/line mismatch (%d rows, %d lines); reporting row numbers", len(frame), len(lines))
        lines = np.arange(2, len(frame) + 2)
    frame.columns = columns
    return columns, _Table(frame, lines), ragged, len(bad)


def _read_regular_text(data: bytes, delimiter: str, columns: list[str]) -> pd.DataFrame:
    """Parse delimited text whose every line has ``len(columns)`` fields into string columns.

    Same semantics as ``pd.read_csv(sep=delimiter, quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)``,
    but with the (multi-threaded, about twice as fast) pyarrow CSV reader; pandas is the fallback.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names = [f"c{i}" for i in range(len(columns))]  # positional names: the header may repeat a column name
    if not data.partition(b"\n")[2]:
        return pd.DataFrame({n: pd.Series([], dtype=str) for n in names}).set_axis(columns, axis=1)
    try:
        table = pa_csv.read_csv(
            io.BytesIO(data),
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, quote_char=False, escape_char=False),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
            ),
        )
        frame = table.to_pandas()
    except (pa.ArrowInvalid, ValueError) as err:
        _logger.debug("pyarrow CSV reader failed (%s); using pandas", err)
        frame = pd.read_csv(
            io.BytesIO(data),
            sep=delimiter,
            quoting=csv.QUOTE_NONE,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            index_col=False,
            header=0,
            names=names,
            engine="c",
        )
    return frame.set_axis(columns, axis=1)


def _fields_message(data: bytes, starts: np.ndarray, ends: np.ndarray, line: int, fields: np.ndarray, want: int) -> str:
    text = data[starts[line] : ends[line]].rstrip(b"\r")
    if not text:
        return f"empty line; expected {want} fields"
    return f"{fields[line]} field(s), expected {want} like the header"


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read an export table: plain or gzipped tab-separated text, or Parquet.

    Text is read with ``sep="\\t"``, no quoting (a field may contain a ``"``), every cell a string and empty cells
    kept as empty strings.

    Args:
        path: The table file.

    Returns:
        The table, with string columns for text input and the stored types for Parquet.

    Raises:
        ValueError: Naming the file (and the line) when it is empty, not UTF-8, or has a malformed row.
    """
    import pandas as pd

    path = Path(path)
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == _PARQUET_MAGIC or _stem(path)[1] in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises many types
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    try:
        data, gzipped = _read_bytes(path)
        table = _parse_text(data, gzipped, "\t", None)[1]
    except _FileError as err:
        raise ValueError(f"{path}: {err.where + ': ' if err.where else ''}{err.message}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return table.frame


def _read_parquet_for_validation(path: Path) -> tuple[list[str], _Table]:
    import pyarrow.parquet as pq

    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types
        raise _FileError("", f"not a readable Parquet file ({_clip(str(err))})") from None
    return [str(c) for c in frame.columns], _Table(frame, None)


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
    import pandas as pd

    if pd.api.types.is_string_dtype(column.dtype) and not column.hasnans:
        text = column.astype(str)
    else:
        text = column.astype(object).where(column.notna(), "").astype(str)
    present = (text != "").to_numpy(dtype=bool)
    return text, present


def _to_float(text: pd.Series, ok: np.ndarray) -> np.ndarray:
    """Float values of the strings where ``ok`` (already known to look numeric); NaN elsewhere."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        values = pc.cast(pc.if_else(pa.array(ok), pa.array(text, type=pa.string()), None), pa.float64())
        return values.to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
        return pd.to_numeric(text.where(ok, ""), errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _check_column(column: pd.Series, field: dict, order: int, checks: _Checks) -> None:
    """Record the type, emptiness, enum, range, pattern and uniqueness findings of one column."""
    import pandas as pd

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
    import pandas as pd

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
