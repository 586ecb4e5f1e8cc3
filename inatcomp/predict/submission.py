"""Kaggle submissions from prediction files, and checking a submission against a test file.

``inatcomp submit`` writes a year's CSV (docs/formats.md §4: header ``id,predicted``, or ``Id,Predicted`` for 2021; 5
labels in 2017 and 2021, 3 in 2018, 1 in 2019; category ids separated by single spaces, most confident first)
from a prediction folder, streaming in row chunks and renaming a temporary file into place at the end.

``inatcomp validate SUBMISSION --against TEST.json`` reads the submission with :mod:`inatcomp.score.readers`' hardened
reader (size limit, encoding, malformed or repeated labels, duplicate ids: each named by its line) and adds what
only the test file can tell: the year's exact header, every test image exactly once, exactly the year's number
of labels per row, and every label a category id of the test file. Problems are
:class:`inatcomp.formats.kinds.Problem`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.formats.kinds import Problem
from inatcomp.formats.predictions import index_of, open_predictions, top_k_columns
from inatcomp.predict.longtail import adjust_scores
from inatcomp.score.readers import read_submission

__all__ = ["read_test_ids", "validate_submission", "write_submission"]

_logger = logging.getLogger(__name__)

_LINE = re.compile(r"line (\d+): (.*)", re.DOTALL)


def write_submission(
    pred: str | os.PathLike,
    *,
    format: SubmissionFormat | str,
    out: str | os.PathLike,
    chunk_rows: int | None = None,
    logit_adjust: tuple[float, Any] | None = None,
) -> Path:
    """Write a submission CSV from a prediction folder, most confident label first, streaming.

    Args:
        pred: The prediction folder.
        format: The competition year's format.
        out: The CSV to write (``submissions/NAME.csv`` by convention).
        chunk_rows: Rows per chunk (about 64 MB of float32 scores when None).
        logit_adjust: ``(τ, prior)``: rank the labels by the logit-adjusted probabilities
            (:func:`~inatcomp.predict.longtail.adjust_scores` with the
            :class:`~inatcomp.predict.longtail.ClassPrior`'s log prior).

    Returns:
        The CSV.

    Raises:
        ValueError: An unreadable prediction folder, or fewer categories than the format's labels.
    """
    format = SubmissionFormat(format)
    preds = open_predictions(pred)
    if preds.n_classes < format.labels:
        raise ValueError(f"{pred}: {preds.n_classes} categories; {format.value} needs {format.labels} labels per row")
    if preds.header.get("failed_images"):  # predict warned when it met them; said again here, not warned twice
        _logger.info(
            "%s: %d row(s) are uniform: their images were unreadable when predicted (failed_image_ids in the header)",
            pred, preds.header["failed_images"],
        )  # fmt: skip
    if logit_adjust is not None:
        tau, log_prior = float(logit_adjust[0]), logit_adjust[1].log_prior
        _logger.info("%s: labels ranked after logit adjustment, τ = %g (prior %s)", pred, tau, logit_adjust[1].source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(format.header + "\n")
            for start, chunk in preds.iter_chunks(chunk_rows):
                if logit_adjust is not None:
                    chunk = adjust_scores(chunk, log_prior, tau)
                labels = preds.category_ids[top_k_columns(chunk, format.labels)]
                ids = preds.image_ids[start : start + len(chunk)]
                fh.writelines(f"{i},{' '.join(map(str, row))}\n" for i, row in zip(ids.tolist(), labels.tolist()))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _logger.info("%s: %d rows, %s", out, preds.n_images, format.value)
    return out


def read_test_ids(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The image ids and category ids of a competition JSON (test or not).

    Raises:
        ValueError: Not a readable competition JSON.
    """
    data = read_json(path)
    try:
        image_ids = np.asarray([int(im["id"]) for im in data["images"]], dtype=np.int64)
        category_ids = np.asarray([int(c["id"]) for c in data.get("categories") or []], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a readable competition JSON ({type(error).__name__}: {error})") from None
    return image_ids, category_ids


def _from_error(file: str, path: Path, error: ValueError) -> list[Problem]:
    problems = []
    for message in str(error).split("\n"):
        for prefix in (f"{path}: ", f"{file}: "):
            message = message.removeprefix(prefix)
        match = _LINE.fullmatch(message)
        problems.append(Problem(file, f"line {match[1]}", match[2]) if match else Problem(file, "", message))
    return problems


def validate_submission(
    path: str | os.PathLike,
    test_json: str | os.PathLike,
    *,
    format: SubmissionFormat | str | None = None,
    max_bytes: int | None = None,
    max_problems: int = 200,
) -> list[Problem]:
    """Check a submission against a test file; never raises for a bad submission.

    Args:
        path: The submission CSV.
        test_json: The test JSON whose images and categories the submission must cover.
        format: The year's format; guessed from the header and labels when None.
        max_bytes: Size limit of the submission (:data:`inatcomp.score.csvgrid.DEFAULT_MAX_BYTES` when None).
        max_problems: At most this many problems, then one saying how many more there were.

    Returns:
        The problems (empty when valid), each naming its line where it has one.

    Raises:
        ValueError: The test JSON cannot be read.
    """
    file = os.fspath(path)
    path = Path(path)
    format = SubmissionFormat(format) if format is not None else None
    test_ids, category_ids = read_test_ids(test_json)
    if not path.is_file():
        return [Problem(file, "", "no such file" if not path.exists() else "not a regular file")]
    try:
        # A loose row bound (the reader's guard against hostile files) so that extra rows are named one by one.
        sub = read_submission(path, format=format, max_bytes=max_bytes, max_rows=2 * len(test_ids) + 100)
    except ValueError as error:
        return _from_error(file, path, error)
    fmt = format or sub.format
    problems: list[tuple[int, str]] = []
    # The header as the scorer reads it (quotes around standard CSV fields are fine, as on Kaggle).
    if fmt is not None and sub.header != fmt.header:
        problems.append((sub.header_line, f"header {sub.header!r}; expected {fmt.header!r} ({fmt.value})"))
    counts = (sub.labels >= 0).sum(axis=1)
    if fmt is not None:
        for row in np.flatnonzero(counts != fmt.labels)[: max_problems + 1]:
            problems.append(
                (int(sub.lines[row]), f"{counts[row]} label(s); expected exactly {fmt.labels} ({fmt.value})")
            )
    unknown = np.flatnonzero(index_of(test_ids, sub.ids) < 0)
    for row in unknown[: max_problems + 1]:
        problems.append((int(sub.lines[row]), f"id {sub.ids[row]} is not an image of {test_json}"))
    if len(category_ids):
        bad = (sub.labels >= 0) & (index_of(category_ids, sub.labels.ravel()) < 0).reshape(sub.labels.shape)
        for row in np.flatnonzero(bad.any(axis=1))[: max_problems + 1]:
            label = sub.labels[row][bad[row]][0]
            problems.append((int(sub.lines[row]), f"label {label} is not a category id of {test_json}"))
    else:
        _logger.warning("%s has no categories: labels not checked against them", test_json)
    problems.sort()
    found = [Problem(file, f"line {line}", message) for line, message in problems]
    missing = test_ids[index_of(sub.ids, test_ids) < 0]
    if len(missing):
        shown = ", ".join(map(str, np.sort(missing)[:10].tolist()))
        more = ", ..." if len(missing) > 10 else ""
        found.append(Problem(file, "", f"{len(missing)} image id(s) of {test_json} missing (e.g. {shown}{more})"))
    if len(found) > max_problems:
        extra = len(found) - max_problems
        found = found[:max_problems] + [Problem(file, "", f"{extra} more problem(s) suppressed")]
    return found
