"""The metric on arrays: top-k hits and error of ranked labels, per usage (the Public and Private leaderboards).

An image's error is 0 if its expected label is among the first k predicted labels and 1 otherwise; the score is the
mean over the images of each usage (``docs/formats.md`` §4). Everything here works on NumPy arrays: the files are
read by :mod:`inatcomp.score.readers` and scored by :mod:`inatcomp.score.scoring`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from inatcomp.formats.competitions import SubmissionFormat

__all__ = [
    "USAGE_KEYS",
    "ScoreResult",
    "Usage",
    "rank_labels",
    "score_arrays",
    "top_k_error",
    "top_k_hits",
]

_logger = logging.getLogger(__name__)


class Usage(enum.Enum):
    """A solution row's leaderboard."""

    PUBLIC = "Public"
    PRIVATE = "Private"


#: The keys of the per-usage figures: the two leaderboards and all rows together.
USAGE_KEYS = ("public", "private", "all")


def top_k_hits(ranked_labels: np.ndarray, expected: np.ndarray, k: int) -> np.ndarray:
    """Whether each image's expected label is among its first ``k`` ranked labels.

    Args:
        ranked_labels: ``[n, L]`` integer labels, most confident first; negative values are padding. A label
            repeated in a row counts once. When ``k > L`` all ``L`` labels are used.
        expected: ``[n]`` expected labels (non-negative).
        k: How many leading labels count (≥ 1).

    Returns:
        ``[n]`` booleans.

    Raises:
        ValueError: On mismatched shapes or ``k < 1``.
    """
    ranked = np.asarray(ranked_labels)
    expected = np.asarray(expected)
    if ranked.ndim == 1:
        ranked = ranked[:, None]
    if ranked.ndim != 2 or expected.ndim != 1 or len(ranked) != len(expected):
        raise ValueError(f"ranked_labels must be [n, L] and expected [n]; got {ranked.shape} and {expected.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k > ranked.shape[1]:
        _logger.debug("k=%d is more than the %d labels given: using all of them", k, ranked.shape[1])
    return (ranked[:, :k] == expected[:, None]).any(axis=1)


def top_k_error(ranked_labels: np.ndarray, expected: np.ndarray, k: int) -> float:
    """Top-k error: the share of images whose expected label is not among their first ``k`` ranked labels.

    Args:
        ranked_labels: ``[n, L]`` integer labels, most confident first (see :func:`top_k_hits`).
        expected: ``[n]`` expected labels.
        k: How many leading labels count.

    Returns:
        The error in [0, 1].

    Raises:
        ValueError: On mismatched shapes, ``k < 1`` or no images.
    """
    hits = top_k_hits(ranked_labels, expected, k)
    if not len(hits):
        raise ValueError("no images to score")
    return float(1.0 - hits.mean())


def rank_labels(
    scores: np.ndarray, k: int | None = None, labels: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """Turn ``[n, C]`` class scores into ranked labels, highest score first.

    Args:
        scores: ``[n, C]`` scores (probabilities or logits).
        k: Keep the first ``k`` labels (all when None).
        labels: The label of each score column (``0 .. C-1`` when None).

    Returns:
        ``[n, min(k, C)]`` labels.
    """
    scores = np.asarray(scores)
    n_classes = scores.shape[1]
    k = n_classes if k is None else min(k, n_classes)
    if k < n_classes:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1), axis=1)
    else:
        order = np.argsort(-scores, axis=1)
    return order if labels is None else np.asarray(labels)[order]


@dataclasses.dataclass
class ScoreResult:
    """Top-1 and top-k error for each usage, and optionally the analyses.

    Attributes:
        k: The k reported besides top-1.
        official_k: The k of the competition's metric.
        images: Number of images per usage key (``public``, ``private``, ``all``).
        errors: ``{"top1": {usage key: error or None}, "top<k>": {...}}``; None where a usage has no images.
        submission: The submission file, if any.
        format: The submission format, if known.
        analysis: The result of :func:`inatcomp.score.analysis.analyse`, if a dataset was given.
    """

    k: int
    official_k: int
    images: dict[str, int]
    errors: dict[str, dict[str, float | None]]
    submission: str | None = None
    format: SubmissionFormat | None = None
    analysis: dict[str, Any] | None = None

    def error(self, usage: str = "all", k: int | None = None) -> float | None:
        """The top-k error (``k`` defaults to the official one) for a usage key."""
        return self.errors[f"top{self.official_k if k is None else k}"][usage]

    @property
    def official_metric(self) -> str:
        """The official metric in words, e.g. ``top-3 error``."""
        return f"top-{self.official_k} error"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        return {
            "submission": self.submission,
            "format": self.format.value if self.format else None,
            "k": self.k,
            "official_metric": self.official_metric,
            "official": {key: self.error(key) for key in USAGE_KEYS},
            "images": self.images,
            "errors": self.errors,
            "analysis": self.analysis,
        }


def score_arrays(
    ranked_labels: np.ndarray,
    expected: np.ndarray,
    usage: np.ndarray | None = None,
    *,
    k: int,
    official_k: int | None = None,
) -> ScoreResult:
    """Score ranked labels against expected labels, per usage.

    Args:
        ranked_labels: ``[n, L]`` labels, most confident first.
        expected: ``[n]`` expected labels.
        usage: ``[n]`` booleans, True for Public rows; None counts every row as Private.
        k: The k reported besides top-1.
        official_k: The k of the official metric (``k`` when None).

    Returns:
        The errors (without analysis).
    """
    expected = np.asarray(expected)
    public = np.zeros(len(expected), dtype=bool) if usage is None else np.asarray(usage, dtype=bool)
    masks = {"public": public, "private": ~public, "all": np.ones(len(expected), dtype=bool)}
    errors: dict[str, dict[str, float | None]] = {}
    for kk in sorted({1, k, official_k or k}):
        hits = top_k_hits(ranked_labels, expected, kk)
        errors[f"top{kk}"] = {
            key: (float(1.0 - hits[mask].mean()) if mask.any() else None) for key, mask in masks.items()
        }
    images = {key: int(mask.sum()) for key, mask in masks.items()}
    return ScoreResult(k=k, official_k=official_k or k, images=images, errors=errors)
