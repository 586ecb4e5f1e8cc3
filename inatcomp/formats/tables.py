"""Reading and writing the kit's delimited tables: export tables in, big comma-separated files out.

Export tables (docs/formats.md §1.1) are tab-separated with a header row and no quoting (a field may contain a
``"``), plain, gzipped or Parquet. :func:`read_table` reads one as string columns; the validator reads through the
same parser, which keeps the line number of every row and sets aside the rows whose field count differs from the
header's, so each is reported by its line. Text is parsed with pyarrow's multi-threaded CSV reader, pandas being
the fallback. :func:`write_csv_columns` writes a release's solution, sample submission and provenance files.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from inatcomp.fileio import write_atomic, write_csv
from inatcomp.formats.kinds import _PARQUET_MAGIC, _clip, _decode_utf8, _FileError, _read_bytes, _stem

__all__ = ["read_table", "write_csv_columns"]

_logger = logging.getLogger(__name__)


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
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as err:  # noqa: BLE001 - pyarrow raises many types
        raise _FileError("", f"not a readable Parquet file ({_clip(str(err))})") from None
    return [str(c) for c in frame.columns], _Table(frame, None)


def _parquet_columns(path: Path) -> list[str]:
    """The column names of a Parquet file, from its schema alone (pyarrow's errors pass through)."""
    return list(pq.read_schema(path).names)


def write_csv_columns(path: str | os.PathLike, columns: dict[str, Any]) -> None:
    """Write equal-length columns as a comma-separated file atomically, fast (pyarrow) for big tables.

    Values are written unquoted; a value that would need quoting falls back to the csv module's quoting.
    """
    table = pa.table({name: pa.array(values) for name, values in columns.items()})
    buffer = io.BytesIO()
    try:
        buffer.write((",".join(columns) + "\n").encode("utf-8"))  # pyarrow quotes header names
        pa_csv.write_csv(table, buffer, pa_csv.WriteOptions(quoting_style="none", include_header=False))
    except pa.ArrowInvalid:  # a value with a comma, quote or newline: let the csv module quote it
        write_csv(path, list(columns), zip(*(table[name].to_pylist() for name in columns)))
        return
    write_atomic(path, buffer.getvalue())
