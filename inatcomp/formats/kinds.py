"""The file kinds, their schemas, a validation finding, and the strict reading every check starts from.

:class:`FileKind` names every format :func:`inatcomp.formats.validate.validate_file` checks; its value is the stem of
the schema file in ``data_schema/`` next to this module (:func:`load_schema`). A :class:`Problem` is one finding.
The rest is shared by the JSON checks (:mod:`inatcomp.formats.json_checks`), the table reader and checks
(:mod:`inatcomp.formats.tables`, :mod:`inatcomp.formats.table_checks`) and the kind guessing: raw bytes gunzipped,
strict UTF-8 with the byte offset of a bad byte, JSON parsed with the line and column of an error, and the
collector of problems that counts the suppressed ones. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import json
import zlib
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_DIR", "FileKind", "Problem", "load_schema"]

SCHEMA_DIR = Path(__file__).parent / "data_schema"

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_MAX_VALUE_CHARS = 60
_MAX_MESSAGE_CHARS = 300
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".json")


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


def _stem(path: Path) -> tuple[str, str]:
    """Lower-case name without ``.gz`` and the format suffix, and that format suffix."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in _TEXT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], suffix
    return name, ""


# --------------------------------------------------------------------------------------------------------------------
# Collecting problems


def _clip(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[: _MAX_MESSAGE_CHARS - 3] + "..."


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
