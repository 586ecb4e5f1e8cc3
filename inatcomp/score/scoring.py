"""Scoring files: a submission CSV against a solution, a prediction file against labels.

The entry points of ``inatcomp score`` and ``inatcomp score-pred``: the files are read and checked by
:mod:`inatcomp.score.readers`, aligned by id, scored by :mod:`inatcomp.score.metric` (top-k error per usage,
``docs/formats.md`` §4) and, given a dataset folder, analysed by :mod:`inatcomp.score.analysis`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.formats.predictions import expected_columns, index_of, open_predictions, top_k_columns
from inatcomp.score.analysis import DatasetInfo, analyse, load_dataset_info
from inatcomp.score.csvgrid import Problems
from inatcomp.score.metric import ScoreResult, score_arrays, top_k_hits
from inatcomp.score.readers import Solution, Submission, read_solution, read_submission

__all__ = ["align", "score_file", "score_predictions", "score_submission"]


def align(submission: Submission, solution: Solution) -> np.ndarray:
    """The submission's labels in the solution's row order.

    Raises:
        ValueError: When the submission has ids the solution lacks, or lacks some of the solution's ids.
    """
    problems = Problems(submission.path)
    unknown = np.flatnonzero(index_of(solution.ids, submission.ids) < 0)
    problems.add(submission.lines[unknown], lambda i: f"unknown id {submission.ids[unknown[i]]} (not in the solution)")
    where = index_of(submission.ids, solution.ids)
    found = where >= 0
    missing = solution.ids[~found]
    if len(missing):
        shown = ", ".join(str(v) for v in np.sort(missing)[:10].tolist())
        problems.add_file(
            f"{len(missing)} id(s) of the solution missing from the submission (e.g. {shown}"
            f"{'' if len(missing) <= 10 else ', ...'})"
        )
    problems.raise_if_any()
    return submission.labels[where]


def score_submission(
    submission: Submission, solution: Solution, *, k: int | None = None, dataset: DatasetInfo | None = None
) -> ScoreResult:
    """Score a parsed submission against a parsed solution.

    Args:
        submission: The submission.
        solution: The solution.
        k: The k to report besides top-1 (the submission's when None).
        dataset: Categories and training counts for :func:`analyse`.

    Returns:
        The result.
    """
    labels = align(submission, solution)
    result = score_arrays(
        labels, solution.expected, solution.public, k=k or submission.k, official_k=submission.official_k
    )
    result.submission = str(submission.path)
    result.format = submission.format
    if dataset is not None:
        result.analysis = analyse(labels[:, 0], solution.expected, dataset.categories, dataset.train_counts)
    return result


def score_predictions(
    pred_path: str | os.PathLike,
    val_json: str | os.PathLike,
    *,
    k: int = 3,
    chunk_rows: int | None = None,
    dataset: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Top-1 and top-k error (and log loss) of a prediction file against a labelled JSON, streaming.

    Every prediction row must have a label; val images missing from the predictions are an error too. A label
    outside the model's categories counts as a mistake. With ``dataset`` (a built release folder) the result
    also holds the analyses of :func:`analyse` (per supercategory, by training count,
    confused pairs, mistakes within genus and family), as ``inatcomp score --dataset`` gives for submissions.

    Returns:
        ``{"predictions", "labels", "images", "top1_error", "top<k>_error", "log_loss", "outside_head",
        "failed_images"}`` and, with ``dataset``, ``"analysis"``.

    Raises:
        ValueError: Unreadable files or ids that do not match.
    """
    preds = open_predictions(pred_path)
    truth = expected_columns(preds, val_json, source=pred_path)
    expected = truth.columns
    hits1 = hitsk = 0
    nll = 0.0
    top1 = np.empty(preds.n_images, dtype=np.int64)
    for start, chunk in preds.iter_chunks(chunk_rows):
        want = expected[start : start + len(chunk)]
        ranked = top_k_columns(chunk, max(k, 1))
        top1[start : start + len(chunk)] = ranked[:, 0]
        hits1 += int(top_k_hits(ranked, want, 1).sum())
        hitsk += int(top_k_hits(ranked, want, k).sum())
        p = np.where(want >= 0, chunk[np.arange(len(chunk)), np.maximum(want, 0)].astype(np.float64), 0.0)
        nll += float(-np.log(np.maximum(p, 1e-7)).sum())
    n = preds.n_images
    analysis = {}
    if dataset is not None:
        info = load_dataset_info(dataset)
        analysis["analysis"] = analyse(preds.category_ids[top1], truth.categories, info.categories, info.train_counts)
    return {
        "predictions": str(pred_path),
        "labels": str(val_json),
        "images": n,
        "top1_error": 1 - hits1 / n,
        f"top{k}_error": 1 - hitsk / n,
        "log_loss": nll / n,
        "outside_head": truth.outside_head,
        "failed_images": int(preds.header.get("failed_images", 0)),
        **analysis,
    }


def score_file(
    submission: str | os.PathLike,
    solution: str | os.PathLike | Solution,
    *,
    format: SubmissionFormat | None = None,
    k: int | None = None,
    dataset: str | os.PathLike | DatasetInfo | None = None,
    max_bytes: int | None = None,
) -> ScoreResult:
    """Read and score a submission CSV.

    Args:
        submission: The submission CSV.
        solution: The solution CSV, or a solution already read.
        format: Force the submission format (guessed when None).
        k: The k to report besides top-1 (the format's default when None).
        dataset: A dataset folder (or its info) for the analyses.
        max_bytes: Size limit of each file.

    Returns:
        The result.

    Raises:
        ValueError: On any problem of the files, naming the file and line.
    """
    sol = solution if isinstance(solution, Solution) else read_solution(solution, max_bytes=max_bytes)
    sub = read_submission(submission, format=format, k=k, max_bytes=max_bytes, max_rows=len(sol.ids))
    info = load_dataset_info(dataset) if isinstance(dataset, str | os.PathLike) else dataset
    return score_submission(sub, sol, k=k, dataset=info)
