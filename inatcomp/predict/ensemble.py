"""Ensembles of prediction files: ``inatcomp ensemble``.

Members are prediction folders (:mod:`inatcomp.predict.engine`) over the same images and the same categories, in any
order: each member is aligned to the first one's rows and columns (images and categories may be permuted), and
members whose image or category *sets* differ are refused with a message saying what differs. The output keeps
the first member's order. Everything streams in row chunks, so memory stays at a few chunks whatever the size.

Modes (:class:`EnsembleMode`), each with weights normalised to sum to 1:

* ``mean-prob``: the weighted mean of the probabilities.
* ``mean-logit``: the softmax of the weighted mean of the log-probabilities (a geometric mean, renormalised).
* ``rank``: the softmax of the weighted mean rank of each category (0 for the lowest score, C-1 for the highest):
  robust to members whose probabilities are scaled differently; the output's order is what counts.

:func:`fit_weights` chooses the weights on validation predictions: a coordinate search on a simplex grid (moving
one grid step of weight from one member to another at a time) minimising top-1 error, ties broken by log loss.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.formats.predictions import (
    Predictions,
    PredictionWriter,
    ScoreKind,
    expected_columns,
    index_of,
    open_predictions,
)

__all__ = ["EnsembleMode", "FitResult", "align_members", "combine", "ensemble", "fit_weights"]

_logger = logging.getLogger(__name__)

#: Log-probabilities are taken of at least this (the smallest float16 subnormal).
_TINY = 2.0**-24


class EnsembleMode(enum.Enum):
    """How member scores are combined."""

    MEAN_PROB = "mean-prob"
    MEAN_LOGIT = "mean-logit"
    RANK = "rank"


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=1, keepdims=True)
    return x


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of each score in its row: 0 for the lowest, C-1 for the highest."""
    order = np.argsort(scores, axis=1)
    ranks = np.empty(scores.shape, dtype=np.float32)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1], dtype=np.float32)[None, :], axis=1)
    return ranks


def combine(chunks: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray, mode: EnsembleMode) -> np.ndarray:
    """Combine aligned member chunks ``[rows, C]`` into float32 scores whose rows sum to 1 (as the members' do).

    Args:
        chunks: One chunk per member, same rows and columns.
        weights: One non-negative weight per member (normalised here).
        mode: The combination.
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out = np.zeros(chunks[0].shape, dtype=np.float32)
    for weight, chunk in zip(w, chunks):
        if weight == 0:
            continue
        if mode is EnsembleMode.MEAN_PROB:
            out += np.float32(weight) * chunk.astype(np.float32)
        elif mode is EnsembleMode.MEAN_LOGIT:
            out += np.float32(weight) * np.log(np.maximum(chunk.astype(np.float32), _TINY))
        else:
            out += np.float32(weight) * _ranks(chunk)
    return out if mode is EnsembleMode.MEAN_PROB else _softmax(out)


def _differences(what: str, ref: np.ndarray, other: np.ndarray) -> str:
    only_ref, only_other = np.setdiff1d(ref, other), np.setdiff1d(other, ref)
    parts = []
    if len(only_ref):
        parts.append(f"{len(only_ref)} {what} only in the first (e.g. {only_ref[:5].tolist()})")
    if len(only_other):
        parts.append(f"{len(only_other)} only here (e.g. {only_other[:5].tolist()})")
    return "; ".join(parts)


@dataclasses.dataclass
class _Member:
    preds: Predictions
    rows: np.ndarray | None  # member row of each reference row, None when in the same order
    cols: np.ndarray | None  # member column of each reference column, None when in the same order

    def read(self, start: int, stop: int) -> np.ndarray:
        chunk = self.preds.read_rows(start, stop) if self.rows is None else self.preds.take_rows(self.rows[start:stop])
        return chunk if self.cols is None else chunk[:, self.cols]


def align_members(paths: Sequence[str | os.PathLike]) -> list[_Member]:
    """Open prediction folders and align each to the first (rows and columns).

    Raises:
        ValueError: Fewer than one file, or a member whose category or image id set differs from the first's.
    """
    if not paths:
        raise ValueError("no prediction files given")
    opened = [open_predictions(p) for p in paths]
    ref = opened[0]
    members = []
    for path, preds in zip(paths, opened):
        if preds.n_classes != ref.n_classes or not np.array_equal(
            np.sort(preds.category_ids), np.sort(ref.category_ids)
        ):
            raise ValueError(
                f"{path}: its {preds.n_classes} categories differ from the {ref.n_classes} of {paths[0]}: "
                f"{_differences('categories', ref.category_ids, preds.category_ids)}; members must predict the "
                "same category set"
            )
        if preds.n_images != ref.n_images or not np.array_equal(np.sort(preds.image_ids), np.sort(ref.image_ids)):
            raise ValueError(
                f"{path}: its {preds.n_images} images differ from the {ref.n_images} of {paths[0]}: "
                f"{_differences('image ids', ref.image_ids, preds.image_ids)}; members must predict the same images"
            )
        same_rows = np.array_equal(preds.image_ids, ref.image_ids)
        same_cols = np.array_equal(preds.category_ids, ref.category_ids)
        if not (same_rows and same_cols):
            _logger.info("%s: aligned to %s (%s)", path, paths[0], "columns" if same_rows else "rows")
        members.append(
            _Member(
                preds,
                None if same_rows else index_of(preds.image_ids, ref.image_ids),
                None if same_cols else index_of(preds.category_ids, ref.category_ids),
            )
        )
    return members


def _chunks(members: list[_Member], chunk_rows: int | None) -> Iterator[tuple[int, list[np.ndarray]]]:
    ref = members[0].preds
    step = chunk_rows or max(1, ref.default_chunk_rows() // max(len(members), 1))
    for start in range(0, ref.n_images, step):
        yield start, [m.read(start, start + step) for m in members]


def _check_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    w = np.ones(count) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise ValueError(f"{len(w)} weight(s) for {count} prediction file(s)")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {w.tolist()}")
    return w / w.sum()


def ensemble(
    paths: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    weights: Sequence[float] | None = None,
    mode: EnsembleMode | str = EnsembleMode.MEAN_PROB,
    chunk_rows: int | None = None,
    extra_header: dict[str, Any] | None = None,
) -> Path:
    """Combine prediction folders into one, streaming in row chunks.

    Args:
        paths: The members (aligned to the first one's rows and columns).
        out: The prediction folder to write.
        weights: One per member (equal when None); normalised to sum to 1.
        mode: The combination.
        chunk_rows: Rows per chunk (about 64 MB of float32 scores over all members when None).
        extra_header: More header fields (e.g. how the weights were fitted).

    Returns:
        The output folder.

    Raises:
        ValueError: Members that do not match, or bad weights.
    """
    mode = EnsembleMode(mode)
    members = align_members(paths)
    w = _check_weights(weights, len(members))
    ref = members[0].preds
    header = {
        "created_by": "inatcomp ensemble",
        "ensemble": {"mode": mode.value, "members": [str(p) for p in paths], "weights": w.tolist()},
        "members_failed_images": [int(m.preds.header.get("failed_images", 0)) for m in members],
        **(extra_header or {}),
    }
    kind = ScoreKind.RANK if mode is EnsembleMode.RANK else ScoreKind.PROB
    with PredictionWriter(
        out, image_ids=ref.image_ids, category_ids=ref.category_ids, header=header, score_kind=kind
    ) as writer:
        for _, chunks in _chunks(members, chunk_rows):
            writer.write(combine(chunks, w, mode))
    _logger.info("%s: %s of %d members, weights %s", out, mode.value, len(members), np.round(w, 4).tolist())
    return Path(out)


@dataclasses.dataclass
class FitResult:
    """Weights chosen on validation predictions.

    Attributes:
        weights: One per member, summing to 1.
        top1_error: The ensemble's val top-1 error with them.
        log_loss: Its val log loss.
        evaluated: How many weight vectors were tried.
        member_top1_errors: Each member's own val top-1 error.
    """

    weights: list[float]
    top1_error: float
    log_loss: float
    evaluated: int
    member_top1_errors: list[float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)


def _evaluate(
    members: list[_Member], expected: np.ndarray, candidates: np.ndarray, mode: EnsembleMode, chunk_rows: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 mistakes and summed negative log-likelihood of each candidate weight vector, in one pass."""
    errors = np.zeros(len(candidates), dtype=np.int64)
    nll = np.zeros(len(candidates), dtype=np.float64)
    for start, chunks in _chunks(members, chunk_rows):
        want = expected[start : start + len(chunks[0])]
        rows = np.arange(len(want))
        for i, w in enumerate(candidates):
            scores = combine(chunks, w, mode)
            errors[i] += int((scores.argmax(axis=1) != want).sum())
            p = np.where(want >= 0, scores[rows, np.maximum(want, 0)], 0.0)
            nll[i] += float(-np.log(np.maximum(p, 1e-7)).sum())
    return errors, nll


def fit_weights(
    val_paths: Sequence[str | os.PathLike],
    labels: str | os.PathLike,
    *,
    mode: EnsembleMode | str = EnsembleMode.MEAN_PROB,
    steps: int = 10,
    chunk_rows: int | None = None,
) -> FitResult:
    """Choose ensemble weights on validation predictions by coordinate search on a simplex grid.

    Starting from (nearly) equal weights on the grid of ``1/steps``, each round tries every move of one grid
    step of weight from one member to another and takes the best if it lowers the top-1 error, or keeps it and
    lowers the log loss; it stops when no move helps.

    Args:
        val_paths: Validation prediction folders, one per member (aligned like :func:`ensemble`).
        labels: The labelled val JSON.
        mode: The combination the weights are for.
        steps: Grid steps of the simplex (weights are multiples of ``1/steps``).
        chunk_rows: Rows per chunk.

    Raises:
        ValueError: Members that do not match, or images without labels.
    """
    mode = EnsembleMode(mode)
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    members = align_members(val_paths)
    ref = members[0].preds
    expected = expected_columns(ref, labels, source=val_paths[0]).columns
    m = len(members)
    singles = np.eye(m)
    single_errors, _ = _evaluate(members, expected, singles, mode, chunk_rows)
    current = np.full(m, steps // m, dtype=np.int64)
    current[: steps - int(current.sum())] += 1
    best_err, best_nll = _evaluate(members, expected, current[None, :] / steps, mode, chunk_rows)
    best = (int(best_err[0]), float(best_nll[0]))
    evaluated = m + 1
    for _ in range(steps * m):
        moves = []
        for i in range(m):
            for j in range(m):
                if i != j and current[i] > 0:
                    move = current.copy()
                    move[i] -= 1
                    move[j] += 1
                    moves.append(move)
        if not moves:
            break
        candidates = np.asarray(moves)
        errors, nll = _evaluate(members, expected, candidates / steps, mode, chunk_rows)
        evaluated += len(candidates)
        pick = int(np.lexsort((nll, errors))[0])
        if (int(errors[pick]), float(nll[pick])) >= best:
            break
        current, best = candidates[pick], (int(errors[pick]), float(nll[pick]))
        _logger.debug("weights %s: %d top-1 mistakes, nll %.4f", (current / steps).tolist(), *best)
    n = ref.n_images
    result = FitResult(
        weights=(current / steps).tolist(),
        top1_error=best[0] / n,
        log_loss=best[1] / n,
        evaluated=evaluated,
        member_top1_errors=(single_errors / n).tolist(),
    )
    _logger.info(
        "fitted weights %s: val top-1 error %.4f (members %s)",
        result.weights,
        result.top1_error,
        np.round(result.member_top1_errors, 4).tolist(),
    )
    return result
