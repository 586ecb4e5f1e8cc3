"""The leaderboard: submissions scored on their format's official metric and ranked like Kaggle, Public and Private.

Each submission is read by :func:`inatcomp.score.readers.read_submission` (one that fails keeps its error on the
board); the tables are written as CSV and Markdown, atomically, with safe cells (:mod:`inatcomp.score.tables`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from inatcomp.fileio import write_atomic
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.score.readers import Solution, read_solution, read_submission
from inatcomp.score.scoring import score_submission
from inatcomp.score.tables import csv_text, fixed, markdown_table, sanitize_cell

__all__ = [
    "LeaderboardEntry",
    "build_leaderboard",
    "competition_ranks",
    "leaderboard_csv",
    "leaderboard_markdown",
    "team_name",
    "write_leaderboard",
]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class LeaderboardEntry:
    """One submission on the leaderboard.

    Attributes:
        team: The team name (the file stem, sanitised).
        path: The submission file.
        public: Public score (official metric; lower is better), None if it failed or there are no Public rows.
        private: Private score, likewise.
        public_rank: Rank on the public board (ties share the best rank).
        private_rank: Rank on the private board.
        metric: The metric in words (e.g. ``top-3 error``).
        error: Why the submission could not be scored, or None.
    """

    team: str
    path: str
    public: float | None = None
    private: float | None = None
    public_rank: int | None = None
    private_rank: int | None = None
    metric: str | None = None
    error: str | None = None

    @property
    def change(self) -> int | None:
        """Places gained from the public to the private board (negative when it dropped)."""
        if self.public_rank is None or self.private_rank is None:
            return None
        return self.public_rank - self.private_rank


def team_name(path: str | os.PathLike) -> str:
    """A team name from a submission's file stem, safe for CSV and Markdown cells."""
    stem = Path(path).name
    for suffix in (".gz", ".csv"):
        stem = stem.removesuffix(suffix)
    return sanitize_cell("".join(ch if ch.isprintable() else "?" for ch in stem)[:100])


def competition_ranks(scores: Sequence[float | None]) -> list[int | None]:
    """Ranks for scores where lower is better; ties share the best rank (1, 1, 3); None stays unranked."""
    valid = sorted(s for s in scores if s is not None)
    return [None if s is None else 1 + sum(v < s for v in valid) for s in scores]


def build_leaderboard(
    submissions: Sequence[str | os.PathLike],
    solution: str | os.PathLike | Solution,
    *,
    format: SubmissionFormat | None = None,
    max_bytes: int | None = None,
) -> list[LeaderboardEntry]:
    """Score each submission on the official metric of its format and rank them like Kaggle.

    Args:
        submissions: The submission CSVs; one that fails to read is kept with its error.
        solution: The solution CSV (or one already read).
        format: Force every submission's format (guessed per file when None).
        max_bytes: Size limit of each file.

    Returns:
        The entries by private rank (then public rank, then team), failed ones last.

    Raises:
        ValueError: When the solution cannot be read.
    """
    sol = solution if isinstance(solution, Solution) else read_solution(solution, max_bytes=max_bytes)
    entries = []
    for path in submissions:
        entry = LeaderboardEntry(team=team_name(path), path=str(path))
        try:
            sub = read_submission(path, format=format, max_bytes=max_bytes, max_rows=len(sol.ids))
            result = score_submission(sub, sol)
        except ValueError as err:
            entry.error = "; ".join(str(err).splitlines())
            _logger.warning("%s", err)
        else:
            entry.public, entry.private = result.error("public"), result.error("private")
            entry.metric = result.official_metric
        entries.append(entry)
    for key in ("public", "private"):
        ranks = competition_ranks([getattr(e, key) for e in entries])
        for entry, rank in zip(entries, ranks):
            setattr(entry, f"{key}_rank", rank)
    big = len(entries) + 1
    entries.sort(
        key=lambda e: (e.error is not None, e.private_rank or big, e.public_rank or big, e.team, e.path),
    )
    return entries


def _change_text(change: int | None) -> str | None:
    if change is None:
        return None
    return f"▲ {change}" if change > 0 else f"▼ {-change}" if change < 0 else "0"


_LEADERBOARD_HEADERS = ["private rank", "team", "private score", "public score", "public rank", "change", "metric"]


def leaderboard_markdown(entries: Sequence[LeaderboardEntry]) -> str:
    """The leaderboard as a Markdown table; failed submissions list their error."""
    rows = [
        [
            e.private_rank,
            e.team,
            fixed(e.private),
            fixed(e.public),
            e.public_rank,
            _change_text(e.change),
            e.metric if e.error is None else f"error: {e.error}",
        ]
        for e in entries
    ]
    return markdown_table(_LEADERBOARD_HEADERS, rows, right=[True, False, True, True, True, True, False]) + "\n"


def leaderboard_csv(entries: Sequence[LeaderboardEntry]) -> str:
    """The leaderboard as CSV (scores and ranks as numbers, ``change`` a signed integer, ``error`` text)."""
    headers = ["private_rank", "team", "private_score", "public_score", "public_rank", "change", "metric", "error"]
    rows = [[e.private_rank, e.team, e.private, e.public, e.public_rank, e.change, e.metric, e.error] for e in entries]
    return csv_text(headers, rows)


def write_leaderboard(entries: Sequence[LeaderboardEntry], out: str | os.PathLike) -> list[Path]:
    """Write ``leaderboard.csv`` and ``leaderboard.md`` into a folder; returns the files."""
    out = Path(out)
    written = [
        write_atomic(out / "leaderboard.csv", leaderboard_csv(entries)),
        write_atomic(out / "leaderboard.md", leaderboard_markdown(entries)),
    ]
    _logger.info("leaderboard in %s", out)
    return written
