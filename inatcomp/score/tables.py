"""Markdown and CSV tables safe to publish: the cells of the score reports and the leaderboard.

Text that reaches a CSV or Markdown cell (team names from file stems, category names, error messages) is made safe
against CSV injection: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
``'`` (numbers are written as numbers).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

__all__ = ["csv_text", "fixed", "markdown_cell", "markdown_table", "percent", "sanitize_cell"]

_INJECTION_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NONE = "—"


def sanitize_cell(value: Any) -> str:
    """A string cell safe against CSV injection: prefixed with ``'`` when it starts with = + - @ tab or CR."""
    text = str(value)
    return "'" + text if text.startswith(_INJECTION_STARTS) else text


def markdown_cell(value: Any) -> str:
    """A Markdown table cell: numbers as given, strings sanitised, pipes escaped, one line."""
    if value is None:
        return _NONE
    if isinstance(value, int | float):
        return str(value)
    text = sanitize_cell(value).replace("\r", " ").replace("\n", " ")
    return text.replace("|", "\\|")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: Sequence[bool] = ()) -> str:
    """A GitHub Markdown table; ``right[i]`` right-aligns column i. String cells are sanitised."""
    align = ["---:" if i < len(right) and right[i] else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(markdown_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(markdown_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text with string cells sanitised; ints and floats written as numbers, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([sanitize_cell(h) for h in headers])
    for row in rows:
        writer.writerow(["" if c is None else c if isinstance(c, int | float) else sanitize_cell(c) for c in row])
    return buffer.getvalue()


def fixed(value: float | None, digits: int = 5) -> str | None:
    """A number with ``digits`` decimals (an error or a score), None kept."""
    return None if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str | None:
    """A share as a percentage with one decimal, None kept."""
    return None if value is None else f"{100 * value:.1f} %"
