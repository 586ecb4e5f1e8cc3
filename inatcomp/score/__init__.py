"""Scoring: ``inatcomp score``, ``leaderboard`` and ``score-pred`` — the metric, the analyses, reports, the leaderboard.

The modules, in the order a submission goes through them: :mod:`~inatcomp.score.csvgrid` (untrusted CSV bytes cut
into lines, fields and numbers, every problem named by file and line), :mod:`~inatcomp.score.readers` (submissions
and solutions, :func:`read_submission`, :func:`read_solution`), :mod:`~inatcomp.score.metric` (top-k error per
usage on arrays), :mod:`~inatcomp.score.analysis` (top-1 accuracy per supercategory, by number of training images,
confused pairs, near misses), :mod:`~inatcomp.score.scoring` (the entry points :func:`score_file` and
:func:`score_predictions`), :mod:`~inatcomp.score.leaderboard` (Kaggle-like Public and Private ranks),
:mod:`~inatcomp.score.report` (JSON, Markdown and PNG reports; plots in :mod:`~inatcomp.score.plots`) and
:mod:`~inatcomp.score.tables` (cells safe against CSV injection). It may import :mod:`inatcomp.formats`,
:mod:`inatcomp.fileio` and :mod:`inatcomp.options`, and never torch: every command here is a file command. The
scorer's names are imported at once (NumPy only); the report writers' load on first use (PEP 562), since
``inatcomp validate`` reads submissions through this package and needs no report (their plots import Matplotlib
only when they draw).
"""

from __future__ import annotations

from inatcomp import lazy_exports
from inatcomp.score.analysis import DatasetInfo, analyse, load_dataset_info
from inatcomp.score.leaderboard import LeaderboardEntry, build_leaderboard, leaderboard_markdown, write_leaderboard
from inatcomp.score.metric import ScoreResult, rank_labels, score_arrays, top_k_error, top_k_hits
from inatcomp.score.readers import Solution, Submission, read_solution, read_submission
from inatcomp.score.scoring import score_file, score_predictions, score_submission

__all__ = [
    "DatasetInfo",
    "LeaderboardEntry",
    "ScoreResult",
    "Solution",
    "Submission",
    "analyse",
    "build_leaderboard",
    "leaderboard_markdown",
    "load_dataset_info",
    "prediction_score_markdown",
    "rank_labels",
    "read_solution",
    "read_submission",
    "score_arrays",
    "score_file",
    "score_markdown",
    "score_predictions",
    "score_submission",
    "top_k_error",
    "top_k_hits",
    "write_leaderboard",
    "write_score_report",
]

_LAZY = {
    "prediction_score_markdown": "report",
    "score_markdown": "report",
    "write_score_report": "report",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
