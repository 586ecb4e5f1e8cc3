"""Reports of scores: JSON, Markdown and PNG files, and Kaggle-like leaderboard tables.

Every file is written to a temporary name in its folder and renamed, so a reader never sees half a file. Text
that reaches a CSV or Markdown cell (team names from file stems, category names, error messages) is made safe
against CSV injection: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading
``'`` (numbers are written as numbers). Plots use Matplotlib's Agg canvas directly (no global backend change).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inatcomp.fileio import write_atomic
from inatcomp.score.scoring import (
    ScoreResult,
    Solution,
    SubmissionFormat,
    read_solution,
    read_submission,
    score_submission,
)

_logger = logging.getLogger(__name__)

_INJECTION_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NONE = "—"


# --------------------------------------------------------------------------------------------------------------------
# Safe cells and atomic files


def sanitize_cell(value: Any) -> str:
    """A string cell safe against CSV injection: prefixed with ``'`` when it starts with = + - @ tab or CR."""
    text = str(value)
    return "'" + text if text.startswith(_INJECTION_STARTS) else text


def _md_cell(value: Any) -> str:
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
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_text(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text with string cells sanitised; ints and floats written as numbers, None as an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([sanitize_cell(h) for h in headers])
    for row in rows:
        writer.writerow(["" if c is None else c if isinstance(c, int | float) else sanitize_cell(c) for c in row])
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 5) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f} %"


# --------------------------------------------------------------------------------------------------------------------
# One score


def score_markdown(result: ScoreResult) -> str:
    """The score and its analyses as a Markdown document."""
    name = Path(result.submission).name if result.submission else "predictions"
    fmt = result.format.value if result.format else "unknown format"
    parts = [
        f"# Score: {_md_cell(name)}",
        "",
        f"Format {fmt}; official metric {result.official_metric} (lower is better); {result.images['all']:,} images.",
        "",
    ]
    ks = sorted(int(key[3:]) for key in result.errors)
    rows = [
        [label, f"{result.images[key]:,}", *(_fmt(result.errors[f"top{k}"][key]) for k in ks)]
        for label, key in (("Public", "public"), ("Private", "private"), ("All", "all"))
    ]
    parts.append(markdown_table(["usage", "images", *(f"top-{k} error" for k in ks)], rows, right=[False] + [True] * 5))
    analysis = result.analysis
    if analysis:
        parts += ["", *_analysis_markdown(analysis)]
    return "\n".join(parts) + "\n"


def prediction_score_markdown(result: dict[str, Any]) -> str:
    """A Markdown report of :func:`inatcomp.score.scoring.score_predictions`: its figures, then any analyses."""
    figures = [(key, value) for key, value in result.items() if key != "analysis"]
    rows = [[key, f"{value:.4f}" if isinstance(value, float) else value] for key, value in figures]
    parts = [markdown_table(["metric", "value"], rows)]
    if result.get("analysis"):
        parts += ["", *_analysis_markdown(result["analysis"])]
    return "\n".join(parts) + "\n"


def _analysis_markdown(analysis: dict[str, Any]) -> list[str]:
    parts = [
        "## Per supercategory",
        "",
        f"Mean per-class top-1 accuracy over {analysis['classes']:,} classes: "
        f"{_pct(analysis['mean_class_accuracy'])} (image-level top-1 accuracy {_pct(analysis['top1_accuracy'])}).",
        "",
        markdown_table(
            ["supercategory", "classes", "train images", "test images", "top-1 accuracy"],
            [
                [r["supercategory"], r["classes"], r["train_images"], r["images"], _pct(r["accuracy"])]
                for r in analysis["supercategories"]
            ],
            right=[False, True, True, True, True],
        ),
        "",
        "## By number of training images",
        "",
        markdown_table(
            ["training images per class", "classes", "test images", "top-1 accuracy"],
            [[r["bin"], r["classes"], r["images"], _pct(r["accuracy"])] for r in analysis["train_count_bins"]],
            right=[False, True, True, True],
        ),
        "",
        "## Most confused pairs (top-1)",
        "",
    ]
    if analysis["confusions"]:
        parts.append(
            markdown_table(
                ["expected", "predicted", "count"],
                [
                    [f"{c['expected']} ({c['expected_id']})", f"{c['predicted']} ({c['predicted_id']})", c["count"]]
                    for c in analysis["confusions"]
                ],
                right=[False, False, True],
            )
        )
    else:
        parts.append("No mistakes.")
    mistakes = analysis["mistakes"]
    parts += [
        "",
        "## Near misses",
        "",
        f"Of {mistakes['count']:,} top-1 mistakes, {_pct(mistakes['same_genus_share']) or 'unknown'} stay in the "
        f"right genus and {_pct(mistakes['same_family_share']) or 'unknown'} in the right family; "
        f"{mistakes['unknown_predicted']:,} predict a category id the dataset does not have.",
    ]
    return parts


def _bar_png(labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str, horizontal: bool) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height = max(3.0, 0.35 * len(labels) + 1.2) if horizontal else 4.0
    figure = Figure(figsize=(7.0, height), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    percent = [100 * v for v in values]
    if horizontal:
        axes.barh(list(labels)[::-1], percent[::-1], color="#4c72b0")
        axes.set_xlabel("top-1 accuracy (%)")
        axes.set_xlim(0, 100)
        axes.set_ylabel(xlabel)
    else:
        axes.bar(list(labels), percent, color="#4c72b0")
        axes.set_ylabel("top-1 accuracy (%)")
        axes.set_ylim(0, 100)
        axes.set_xlabel(xlabel)
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_score_report(result: ScoreResult, out: str | os.PathLike) -> list[Path]:
    """Write ``score.json``, ``score.md`` and, with an analysis, the PNG plots into a folder.

    Args:
        result: The score.
        out: The folder (created when missing).

    Returns:
        The files written.
    """
    out = Path(out)
    written = [
        write_atomic(out / "score.json", json.dumps(result.to_dict(), indent=2) + "\n"),
        write_atomic(out / "score.md", score_markdown(result)),
    ]
    analysis = result.analysis
    if analysis:
        bins = analysis["train_count_bins"]
        written.append(
            write_atomic(
                out / "accuracy_by_train_count.png",
                _bar_png(
                    [b["bin"] for b in bins],
                    [b["accuracy"] for b in bins],
                    title="Mean per-class top-1 accuracy by training-set size",
                    xlabel="training images per class",
                    horizontal=False,
                ),
            )
        )
        supers = analysis["supercategories"]
        written.append(
            write_atomic(
                out / "accuracy_by_supercategory.png",
                _bar_png(
                    [f"{s['supercategory']} ({s['classes']})" for s in supers],
                    [s["accuracy"] for s in supers],
                    title="Mean per-class top-1 accuracy by supercategory (classes)",
                    xlabel="supercategory",
                    horizontal=True,
                ),
            )
        )
    _logger.info("report in %s: %s", out, ", ".join(p.name for p in written))
    return written


# --------------------------------------------------------------------------------------------------------------------
# Leaderboard


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
            _fmt(e.private),
            _fmt(e.public),
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
