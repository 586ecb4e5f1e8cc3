"""Reading an iNaturalist Open Data observation export (the four tables of docs/formats.md §1).

Each table may be plain tab-separated text (``taxa.csv``), gzipped (``taxa.csv.gz``) or Parquet
(``taxa.parquet``). Only the columns a stage uses are read, with pyarrow's multi-threaded parser, so a
30-million-photo export fits in memory. Extra columns are ignored. When the fast parser rejects a file,
the schema validator (:func:`inatcomp.formats.validate.validate_file`) finds the line and column to report.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from inatcomp.formats.kinds import FileKind
from inatcomp.formats.validate import validate_file

__all__ = [
    "TABLE_COLUMNS",
    "ExportTables",
    "ancestry_parents",
    "explain_table_error",
    "find_table",
    "read_columns",
    "read_export",
]

_logger = logging.getLogger(__name__)

#: Columns each stage reads from each table, with their Arrow types.
TABLE_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "taxa": {"taxon_id": pa.int64(), "ancestry": pa.string(), "rank_level": pa.float64(), "rank": pa.string(),
             "name": pa.string(), "active": pa.bool_()},
    "observations": {"observation_uuid": pa.string(), "observer_id": pa.int64(), "latitude": pa.float64(),
                     "longitude": pa.float64(), "positional_accuracy": pa.float64(), "taxon_id": pa.int64(),
                     "quality_grade": pa.string(), "observed_on": pa.string()},
    "photos": {"photo_id": pa.int64(), "observation_uuid": pa.string(), "observer_id": pa.int64(),
               "extension": pa.string(), "license": pa.string(), "width": pa.int64(), "height": pa.int64(),
               "position": pa.int64()},
    "observers": {"observer_id": pa.int64(), "login": pa.string(), "name": pa.string()},
}  # fmt: skip

_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")


def find_table(folder: str | os.PathLike, name: str) -> Path:
    """The file of table ``name`` in an export folder, whichever of the accepted forms it has.

    Raises:
        ValueError: None or more than one form is present.
    """
    folder = Path(folder)
    found = [folder / f"{name}{suffix}" for suffix in _SUFFIXES if (folder / f"{name}{suffix}").is_file()]
    if not found:
        raise ValueError(f"{folder}: no {name} table (expected one of {', '.join(name + s for s in _SUFFIXES)})")
    if len(found) > 1:
        raise ValueError(f"{folder}: more than one {name} table ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _explain(path: Path, table: str, error: Exception) -> ValueError:
    """A ValueError naming the file, line and column, found by the schema validator."""
    problems = validate_file(path, FileKind(f"export_{table}"), max_problems=5)
    if problems:
        detail = "; ".join(str(p) for p in problems[:5])
        return ValueError(f"malformed {table} table: {detail}")
    return ValueError(f"{path}: malformed {table} table: {error}")


def explain_table_error(path: Path, table: str, error: str) -> ValueError:
    """A one-line ValueError for a table the engine could not read: the schema validator's file, line and column
    when it finds the fault, else the file and the engine's message."""
    truncated_at = _gzip_truncated_at(path) if path.suffix == ".gz" else None
    if truncated_at is not None:
        return ValueError(
            f"{path}: line {truncated_at}: the gzip stream ends before its end marker (a truncated file; "
            f"expected a complete .gz {table} table)"
        )
    try:
        problems = validate_file(path, FileKind(f"export_{table}"), max_problems=3)
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as failure:
        return ValueError(f"{path}: cannot read the {table} table ({failure}; {error})")
    if problems:
        return ValueError(f"malformed {table} table: {'; '.join(str(p) for p in problems[:3])}")
    return ValueError(f"{path}: cannot read the {table} table ({error})")


def _gzip_truncated_at(path: Path) -> int | None:
    """The line a truncated gzip file breaks off in (counted from 1, the header's), or None when it is whole."""
    lines = 0
    try:
        with gzip.open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                lines += block.count(b"\n")
    except (EOFError, OSError, zlib.error):
        return lines + 1
    return None


def read_columns(path: str | os.PathLike, table: str, columns: list[str] | None = None) -> pa.Table:
    """Read the given columns (default: all that :data:`TABLE_COLUMNS` lists) of one export table.

    Booleans may be written ``true``/``false`` or ``t``/``f``; empty fields are nulls; a field may
    contain a ``"`` (the export does not quote).

    Raises:
        ValueError: A column is missing or a value does not parse; the message names file, line, column.
    """
    path = Path(path)
    wanted = columns if columns is not None else list(TABLE_COLUMNS[table])
    types = {c: TABLE_COLUMNS[table][c] for c in wanted}
    if path.suffix == ".parquet":
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as error:
            raise ValueError(f"{path}: not a readable Parquet file ({error})") from error
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(schema.names)})")
        data = pq.read_table(path, columns=wanted)
        try:
            return pa.table({c: _convert(data[c], types[c]) for c in wanted})
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise _explain(path, table, error) from error
    read_options = pacsv.ReadOptions(block_size=1 << 24)
    parse_options = pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False, escape_char=False)
    convert_options = pacsv.ConvertOptions(
        column_types=types,
        include_columns=wanted,
        true_values=["true", "t", "True", "TRUE"],
        false_values=["false", "f", "False", "FALSE"],
        null_values=[""],
        strings_can_be_null=False,
    )
    try:
        return pacsv.read_csv(
            path, read_options=read_options, parse_options=parse_options, convert_options=convert_options
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError, KeyError) as error:
        raise _explain(path, table, error) from error
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read {table} table ({error})") from error


def _convert(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Cast a Parquet column to its export type; text columns may spell nulls as '' and booleans as t/f."""
    if column.type == target:
        return column
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = pc.utf8_trim_whitespace(column.cast(pa.string()))
        if pa.types.is_string(target):
            return text
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        if pa.types.is_boolean(target):
            lower = pc.utf8_lower(text)
            valid = pc.or_(pc.is_null(lower), pc.is_in(lower, pa.array(["true", "t", "false", "f"])))
            if not pc.all(valid).as_py():
                raise pa.ArrowInvalid("a boolean is not true/false/t/f")
            return pc.if_else(pc.is_null(lower), pa.scalar(None, pa.bool_()), pc.is_in(lower, pa.array(["true", "t"])))
        return text.cast(target)
    return column.cast(target)


@dataclasses.dataclass
class ExportTables:
    """The four tables of an export, as Arrow tables with the columns the builder uses."""

    taxa: pa.Table
    observations: pa.Table
    photos: pa.Table
    observers: pa.Table
    folder: Path


def read_export(folder: str | os.PathLike, *, columns: dict[str, list[str]] | None = None) -> ExportTables:
    """Read the four tables of an export folder.

    Args:
        folder: Folder holding ``taxa``, ``observations``, ``photos`` and ``observers`` tables.
        columns: Per table, the columns to read (default: those of :data:`TABLE_COLUMNS`).

    Raises:
        ValueError: A table is missing or malformed.
    """
    columns = columns or {}
    tables = {}
    for name in TABLE_COLUMNS:
        path = find_table(folder, name)
        tables[name] = read_columns(path, name, columns.get(name))
        _logger.info("read %s: %d rows", path, tables[name].num_rows)
    return ExportTables(folder=Path(folder), **tables)


def ancestry_parents(ancestry: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The parent id (last ancestor) of each taxon from its ancestry string; -1 for the root.

    Accepts ``/`` and ``\\`` as separators; separators at either end are ignored.

    Raises:
        ValueError: A part of an ancestry is not an integer.
    """
    # Stray separators at either end ("48460/1/") name no ancestor: trimmed, as taxonomy.split_ancestry skips them.
    parts = pc.split_pattern(pc.utf8_trim(pc.replace_substring(ancestry, "\\", "/"), "/"), "/")
    lengths = pc.list_value_length(parts).to_numpy(zero_copy_only=False)
    last = pc.take(pc.list_flatten(parts), pa.array(np.cumsum(lengths) - 1))
    last = pc.if_else(pc.equal(last, ""), pa.scalar(None, pa.string()), last)
    try:
        return pc.cast(last, pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as error:
        raise ValueError(f"taxa ancestry: a part is not an integer ({error})") from error
