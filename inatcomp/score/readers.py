"""Reading submissions and solutions: the checked files the scorer and the leaderboard score.

Files read here (see ``docs/formats.md`` §4 and ``data_schema/``):

* **Submission**: comma-separated UTF-8 text, header ``id,predicted`` (iNat2017, 2018, 2019) or ``Id,Predicted``
  (iNat2021); ``predicted`` is category ids separated by spaces, most confident first (2017: 5 labels, 2018: 3,
  2019: 1, 2021: 5). A UTF-8 byte order mark, CRLF line endings, blank lines and fields wrapped in double quotes
  are tolerated. A submission is untrusted input: every problem (size over the limit, binary data, wrong
  encoding, wrong header, a malformed, negative, non-integer or huge number, too few or repeated labels, a
  duplicate, unknown or missing id) is reported in one :class:`ValueError` naming the file and the line.
* **Solution**: comma-separated, header with the columns ``id``, ``expected`` and ``usage`` (any order and case);
  ``usage`` is ``Public`` or ``Private``.

The bytes are cut into fields by :mod:`inatcomp.score.csvgrid`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.score.csvgrid import (
    DEFAULT_MAX_BYTES,
    MAX_DIGITS,
    CsvGrid,
    CsvText,
    Problems,
    check_unique,
    cut_fields,
    describe_int,
    int_field,
    read_csv_text,
    show_bytes,
)

__all__ = [
    "MAX_LABELS",
    "MAX_LINE_BYTES",
    "MAX_ROW_BYTES",
    "Solution",
    "Submission",
    "read_solution",
    "read_submission",
]

_logger = logging.getLogger(__name__)

#: At most this many labels are read per submission row.
MAX_LABELS = 25
#: At most this many bytes per submission line (a real row is about 40).
MAX_LINE_BYTES = 1024
#: With a known number of solution rows, a submission may hold at most this many bytes per row on average.
MAX_ROW_BYTES = 256


@dataclasses.dataclass
class Submission:
    """A parsed submission.

    Attributes:
        path: The file.
        format: Its format (given or guessed), or None when neither could tell and ``k`` was given.
        k: The k to report besides top-1.
        ids: ``[n]`` image ids.
        labels: ``[n, L]`` labels, most confident first, padded with -1.
        lines: ``[n]`` 1-based line number of each row.
        header: The header as read (byte order mark, line end and CSV quotes removed, as for every field).
        header_line: Its 1-based line number.
    """

    path: Path
    format: SubmissionFormat | None
    k: int
    ids: np.ndarray
    labels: np.ndarray
    lines: np.ndarray
    header: str
    header_line: int

    @property
    def official_k(self) -> int:
        """The k of the format's official metric (``k`` when the format is unknown)."""
        return self.format.official_k if self.format else self.k


def _guess_format(header_exact: str, counts: np.ndarray) -> SubmissionFormat | None:
    if header_exact == "Id,Predicted":
        return SubmissionFormat.INAT2021
    if not len(counts):
        return None
    frequency = np.bincount(counts)
    most = int(np.flatnonzero(frequency == frequency.max())[-1])  # ties: the larger count
    return {5: SubmissionFormat.INAT2017, 3: SubmissionFormat.INAT2018, 1: SubmissionFormat.INAT2019}.get(most)


def read_submission(
    path: str | os.PathLike,
    *,
    format: SubmissionFormat | None = None,
    k: int | None = None,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> Submission:
    """Read and check a submission CSV (untrusted input).

    Args:
        path: The CSV.
        format: Force the format; guessed from the header and the number of labels when None.
        k: The k to report besides top-1; the format's default when None.
        max_bytes: Size limit (:data:`DEFAULT_MAX_BYTES` when None).
        max_rows: The number of solution rows, when known: more rows, or more than :data:`MAX_ROW_BYTES` bytes per
            row, are refused before any parsing (bounding the work a hostile file can cause).

    Returns:
        The submission.

    Raises:
        ValueError: Listing every problem (up to :data:`~inatcomp.score.csvgrid.MAX_REPORTED`) with the file and line.
    """
    path = Path(path)
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    text = _submission_text(path, max_bytes=max_bytes, max_rows=max_rows)
    problems = Problems(path)
    grid = cut_fields(text, 2, problems)
    ids, ok = int_field(grid, 0, "id", problems)
    tokens = _label_tokens(grid, problems)
    ok &= tokens.ok
    format, k = _submission_format(path, text.header.strip(), tokens, format=format, k=k, problems=problems)
    need = max(k, format.official_k if format else 1)
    few = np.flatnonzero(tokens.ok & (tokens.counts < need))
    ok[few] = False
    problems.add(grid.text.lines[few], lambda i: f"{tokens.counts[few[i]]} label(s); expected at least {need}")
    labels = _label_matrix(grid, tokens, ok, problems)
    check_unique(ids[ok], grid.text.lines[ok], "id", problems)
    problems.raise_if_any()
    return Submission(
        path=path, format=format, k=k, ids=ids, labels=labels, lines=grid.text.lines,
        header=text.header.strip(), header_line=text.header_line,
    )  # fmt: skip


def _submission_text(path: Path, *, max_bytes: int | None, max_rows: int | None) -> CsvText:
    """The file's lines, once its size, header, row count and line lengths pass (nothing parsed yet).

    The size limit is ``max_bytes`` when given (``--max-size-mb``); left at its default, a submission to a
    solution of ``max_rows`` rows may hold at most 1,024 + ``max_rows`` × :data:`MAX_ROW_BYTES` bytes (and never
    more than :data:`DEFAULT_MAX_BYTES`), which bounds the work a hostile file can cause.
    """
    bound = None
    if max_bytes is None and max_rows is not None:
        max_bytes = min(DEFAULT_MAX_BYTES, 1024 + max_rows * MAX_ROW_BYTES)
        bound = (
            f"the bound for a solution of {max_rows:,} rows (1,024 + {MAX_ROW_BYTES} bytes per row); "
            "--max-size-mb sets the limit instead"
        )
    text = read_csv_text(path, max_bytes, bound=bound)
    header = text.header.strip()
    if header.lower().replace(" ", "") != "id,predicted":
        raise ValueError(
            f"{path}: line {text.header_line}: header {show_bytes(header.encode())}; expected 'id,predicted' "
            "(iNat2017-2019) or 'Id,Predicted' (iNat2021)"
        )
    if not len(text.lines):
        raise ValueError(f"{path}: no rows after the header")
    if max_rows is not None and len(text.lines) > max_rows:
        raise ValueError(
            f"{path}: line {text.lines[max_rows]}: more rows ({len(text.lines):,}) than the solution has images "
            f"({max_rows:,})"
        )
    problems = Problems(path)
    long = np.flatnonzero(text.ends - text.starts > MAX_LINE_BYTES)
    problems.add(
        text.lines[long],
        lambda i: f"{text.ends[long[i]] - text.starts[long[i]]:,} bytes long; at most {MAX_LINE_BYTES} expected",
    )
    problems.raise_if_any()
    return text


@dataclasses.dataclass(frozen=True)
class _LabelTokens:
    """The label tokens of every row: ``ok`` rows have only sound labels; ``counts`` labels per row."""

    ok: np.ndarray
    counts: np.ndarray
    sel: np.ndarray  #: the grid's tokens in the label field
    row: np.ndarray  #: each such token's row


def _label_tokens(grid: CsvGrid, problems: Problems) -> _LabelTokens:
    """Check every row's labels: integers, of at most :data:`MAX_DIGITS` digits, at most :data:`MAX_LABELS`."""
    rows = len(grid.ok)
    ok_labels = grid.ok.copy()
    stray_row, stray_field, stray_pos = grid.stray_bytes()
    bad = np.flatnonzero(stray_field == 1)
    bad_rows, first_bad = np.unique(stray_row[bad], return_index=True)
    bad_rows, first_bad = bad_rows[grid.ok[bad_rows]], bad[first_bad[grid.ok[bad_rows]]]
    ok_labels[bad_rows] = False

    def describe_bad(i: int) -> str:
        row, pos = bad_rows[i], int(stray_pos[first_bad[i]])
        start, end = int(grid.field_start[row, 1]), int(grid.field_end[row, 1])
        left = max(grid.text.data.rfind(b" ", max(start, pos - 64), pos) + 1, start, pos - 64)
        right = grid.text.data.find(b" ", pos, min(end, pos + 64))
        return describe_int(grid.text.data[left : min(end, pos + 64) if right < 0 else right], "label")

    problems.add(grid.text.lines[bad_rows], describe_bad)
    sel = np.flatnonzero(grid.tok_field == 1)
    huge = sel[grid.tok_len[sel] > MAX_DIGITS]
    huge_rows, huge_first = np.unique(grid.tok_row[huge], return_index=True)
    keep = ok_labels[huge_rows]
    huge_rows, huge_first = huge_rows[keep], huge[huge_first[keep]]
    ok_labels[huge_rows] = False
    problems.add(
        grid.text.lines[huge_rows],
        lambda i: describe_int(
            grid.text.data[grid.tok_start[huge_first[i]] : grid.tok_start[huge_first[i]] + 64].split()[0], "label"
        ),
    )
    counts = np.bincount(grid.tok_row[sel], minlength=rows)[:rows]
    many = np.flatnonzero(ok_labels & (counts > MAX_LABELS))
    ok_labels[many] = False
    problems.add(grid.text.lines[many], lambda i: f"{counts[many[i]]} labels; at most {MAX_LABELS} are allowed")
    return _LabelTokens(ok=ok_labels, counts=counts, sel=sel, row=grid.tok_row[sel])


def _submission_format(
    path: Path, header: str, tokens: _LabelTokens, *, format: SubmissionFormat | None, k: int | None,
    problems: Problems,
) -> tuple[SubmissionFormat | None, int]:  # fmt: skip
    """The format (given, or guessed from the header and the labels per row) and the k to report."""
    if format is None:
        format = _guess_format(header, tokens.counts[tokens.ok])
        if format is None and k is None:
            problems.raise_if_any()  # the rows' own problems first
            common = int(np.bincount(tokens.counts[tokens.ok]).argmax()) if tokens.ok.any() else 0
            raise ValueError(
                f"{path}: cannot tell the competition year from {common} label(s) per row; pass --format or --k"
            )
        _logger.debug("%s: format %s", path, format.value if format else "unknown")
    return format, k if k is not None else format.default_k


def _label_matrix(grid: CsvGrid, tokens: _LabelTokens, ok: np.ndarray, problems: Problems) -> np.ndarray:
    """``[rows, width]`` labels (-1 padded) of the sound rows; a row repeating a label is refused."""
    counts, sel, tok_row = tokens.counts, tokens.sel, tokens.row
    width = int(counts[ok].max()) if ok.any() else 1
    labels = np.full((len(ok), width), -1, dtype=np.int64)
    column = np.arange(len(sel)) - np.concatenate(([0], np.cumsum(counts)[:-1]))[tok_row]
    use = ok[tok_row] & (column < width)
    labels[tok_row[use], column[use]] = grid.tok_value[sel[use]]
    ordered = np.sort(labels, axis=1)
    repeated = np.flatnonzero(ok & ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))
    ok[repeated] = False

    def describe_repeat(i: int) -> str:
        row = ordered[repeated[i]]
        value = row[1:][(row[1:] == row[:-1]) & (row[1:] >= 0)][0]
        return f"label {value} repeated in {show_bytes(grid.field_bytes(repeated[i], 1))}"

    problems.add(grid.text.lines[repeated], describe_repeat)
    return labels


@dataclasses.dataclass
class Solution:
    """A parsed solution.

    Attributes:
        path: The file.
        ids: ``[n]`` image ids.
        expected: ``[n]`` expected labels.
        public: ``[n]`` True for Public rows, False for Private ones.
    """

    path: Path
    ids: np.ndarray
    expected: np.ndarray
    public: np.ndarray


def read_solution(path: str | os.PathLike, *, max_bytes: int | None = None) -> Solution:
    """Read and check a solution CSV (columns ``id``, ``expected``, ``usage`` in any order and case).

    Args:
        path: The CSV.
        max_bytes: Size limit (:data:`DEFAULT_MAX_BYTES` when None).

    Returns:
        The solution.

    Raises:
        ValueError: Listing the problems with the file and line.
    """
    path = Path(path)
    text = read_csv_text(path, max_bytes)
    problems = Problems(path)
    columns = [c.strip().lower() for c in text.header.split(",")]
    missing = [c for c in ("id", "expected", "usage") if c not in columns]
    if missing or len(set(columns)) != len(columns):
        raise ValueError(
            f"{path}: line {text.header_line}: header {show_bytes(text.header.encode())}; expected the columns id, "
            "expected, usage"
        )
    if not len(text.lines):
        raise ValueError(f"{path}: no rows after the header")
    grid = cut_fields(text, len(columns), problems)
    ids, ok_id = int_field(grid, columns.index("id"), "id", problems)
    expected, ok_exp = int_field(grid, columns.index("expected"), "expected label", problems)
    where = columns.index("usage")
    start, length = grid.field_start[:, where], grid.field_end[:, where] - grid.field_start[:, where]
    word = np.zeros((len(start), 7), dtype=np.uint8)
    for c in range(7):
        has = np.flatnonzero(grid.ok & (length > c))
        word[has, c] = text.arr[start[has] + c] | 0x20  # lower case
    public = (length == 6) & (word == np.frombuffer(b"public\0", dtype=np.uint8)).all(axis=1)
    private = (length == 7) & (word == np.frombuffer(b"private", dtype=np.uint8)).all(axis=1)
    bad_usage = np.flatnonzero(grid.ok & ~public & ~private)
    problems.add(
        text.lines[bad_usage],
        lambda i: f"usage {show_bytes(grid.field_bytes(bad_usage[i], where))}; expected Public or Private",
    )
    ok = ok_id & ok_exp
    check_unique(ids[ok], text.lines[ok], "id", problems)
    problems.raise_if_any()
    return Solution(path=path, ids=ids, expected=expected, public=public)
