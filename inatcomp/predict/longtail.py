"""Post-hoc long-tail tools for prediction files: logit adjustment, its prior and its fitted τ.

**Logit adjustment** (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021): a model trained on
a long-tailed train set with plain cross-entropy scores ``log p(y | x) ≈ f_y(x) + log π_y + const``, where ``π``
is the train class prior. Subtracting ``τ · log π_y`` from the logits (equivalently, multiplying the
probabilities by ``π_y^-τ`` and renormalising) moves the model towards a balanced prior (``τ = 1``: the
balanced error's Bayes rule); a negative ``τ`` moves it the other way. Which ``τ`` suits a test set depends on
the test's class distribution and on the prior the model was trained under:

* plain cross-entropy, random batches, balanced test (iNat2018's val): ``τ ≈ +1``;
* class-balanced batches (or the logit-adjusted loss), test that follows train's long tail: ``τ ≈ -1``
  (puts the train prior back);
* the model's prior already matches the test's: ``τ = 0``, the identity.

:func:`fit_tau` chooses ``τ`` on a labelled val prediction for a **target distribution**: val's own
(``TargetPrior.VAL``), or train's (``TargetPrior.TRAIN``, each val image weighted by ``π_train(y) / π_val(y)``,
for an organizer who says the test follows train, as the kit's presets do) — a balanced val alone cannot tell
how a long-tailed test should be predicted.

Every adjusted prediction file records what was applied in its header (``logit_adjust``: τ, the prior's source,
and the fit when there was one). Classes without train images get a count of 1 (their log prior stays finite).

**τ-normalisation** (Kang et al., "Decoupling representation and classifier for long-tailed recognition",
ICLR 2020) changes a model's classifier rather than a prediction file: it is
:func:`inatcomp.predict.taunorm.tau_normalise`.

This module imports no torch: ``submit`` and ``ensemble`` start at once.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json, resolve_checkpoint
from inatcomp.formats.predictions import (
    Predictions,
    PredictionWriter,
    expected_columns,
    index_of,
    load_labels,
    open_predictions,
)

__all__ = [
    "SAMPLER_PRIOR_POWER",
    "ClassPrior",
    "TargetPrior",
    "TauFit",
    "adjust_predictions",
    "adjust_scores",
    "class_prior",
    "fit_tau",
    "prior_of_predictions",
    "resolve_adjustment",
    "tau_grid",
    "target_weights",
    "tau_towards",
]

_logger = logging.getLogger(__name__)

#: Below this effective sample size a fitted τ is reported as untrustworthy (a warning).
FEW_EFFECTIVE_IMAGES = 50
#: Probabilities are taken as at least this before their log (the smallest float16 subnormal).
_TINY = 2.0**-24


class TargetPrior(enum.Enum):
    """The class distribution :func:`fit_tau` fits τ for."""

    VAL = "val"  #: val's own distribution (balanced for the iNat2018-style presets)
    TRAIN = "train"  #: train's distribution: val images weighted by π_train / π_val (a test that follows train)


@dataclasses.dataclass(frozen=True)
class ClassPrior:
    """Train images per class over a prediction file's columns.

    Attributes:
        counts: ``[n_classes]`` train images of each column's category (floored at 1 in :attr:`log_prior`).
        source: Where the counts come from (a training JSON or a checkpoint), for the header.
    """

    counts: np.ndarray
    source: str

    @property
    def log_prior(self) -> np.ndarray:
        """``log π`` per column, float64; a class without train images counts as one image."""
        counts = np.maximum(np.asarray(self.counts, dtype=np.float64), 1.0)
        return np.log(counts / counts.sum())

    @property
    def without_images(self) -> int:
        """Columns whose category has no train image."""
        return int((np.asarray(self.counts) <= 0).sum())


def _counts_from_metadata(metadata: Any, category_ids: np.ndarray) -> np.ndarray | None:
    """The train class counts checkpoint metadata records, over ``category_ids``; ``None`` without them."""
    counts, ids = (
        (metadata.get("class_counts"), metadata.get("category_ids")) if isinstance(metadata, Mapping) else (None, None)
    )
    if not counts or not ids or len(counts) != len(ids):
        return None
    where = index_of(np.asarray(ids, dtype=np.int64), category_ids)
    return np.where(where >= 0, np.asarray(counts, dtype=np.int64)[np.maximum(where, 0)], 0)


def class_prior(source: str | os.PathLike, category_ids: np.ndarray | Sequence[int]) -> ClassPrior:
    """The train prior over ``category_ids`` from a training JSON (its annotations) or a checkpoint's metadata.

    Args:
        source: A labelled training JSON, or a checkpoint (file, stem or run folder) trained by ``inatcomp
            train`` (its metadata records ``class_counts``).
        category_ids: The columns the prior is for.

    Raises:
        ValueError: Neither a labelled JSON nor a checkpoint with class counts, naming the source.
    """
    category_ids = np.asarray(category_ids, dtype=np.int64)
    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        try:
            metadata = read_json(path)
        except ValueError as error:
            raise ValueError(f"--prior {source}: {error}") from None
        if isinstance(metadata, Mapping) and "annotations" not in metadata and "class_counts" in metadata:
            counts = _counts_from_metadata(metadata, category_ids)
        else:
            _, labels = load_labels(path)
            ids, n = np.unique(labels, return_counts=True)
            where = index_of(ids, category_ids)
            counts = np.where(where >= 0, n[np.maximum(where, 0)], 0)
    else:
        try:
            counts = _counts_from_metadata(read_json(resolve_checkpoint(source).with_suffix(".json")), category_ids)
        except ValueError as error:
            raise ValueError(f"--prior {source}: neither a training JSON nor a checkpoint ({error})") from None
    if counts is None:
        raise ValueError(
            f"--prior {source}: its metadata records no class_counts (a checkpoint from before they were "
            "recorded): give the training JSON"
        )
    if int(np.asarray(counts).sum()) <= 0:
        raise ValueError(f"--prior {source}: no train image of any of the {len(category_ids)} categories")
    return ClassPrior(counts=np.asarray(counts, dtype=np.int64), source=str(source))


def prior_of_predictions(preds: Predictions) -> ClassPrior:
    """The train prior of the checkpoint a prediction file came from (an ensemble: its first member's).

    Raises:
        ValueError: No checkpoint with class counts behind the file (give ``--prior TRAIN.json``).
    """
    header, seen = preds.header, set()
    while True:
        if header.get("checkpoint"):
            try:
                return class_prior(header["checkpoint"], preds.category_ids)
            except ValueError:
                break
        members = (header.get("ensemble") or {}).get("members") or []
        if not members or members[0] in seen:
            break
        seen.add(members[0])
        try:
            header = open_predictions(members[0]).header
        except ValueError:
            break
    raise ValueError(
        f"{preds.path}: no checkpoint with train class counts behind these predictions; give --prior TRAIN.json"
    )


def adjust_scores(scores: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Probabilities ``∝ p · π^-τ`` (``log p − τ · log π``, softmax), float32; ``τ = 0`` returns them unchanged.

    Args:
        scores: ``[n, C]`` probabilities.
        log_prior: ``[C]`` log train prior.
        tau: τ (positive: towards balanced; negative: towards the train prior).
    """
    scores = np.asarray(scores, dtype=np.float32)
    if tau == 0:
        return scores
    logits = np.log(np.maximum(scores, _TINY)) - np.float32(tau) * log_prior.astype(np.float32)[None, :]
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


#: The power α of the class prior a batch sampler trains under: class ``y`` is drawn with probability ∝ π_y^α
#: (``inatcomp train --sampler``; the logit-adjusted loss and balanced softmax train as α = 0 whatever the sampler).
SAMPLER_PRIOR_POWER = {"random": 1.0, "sqrt": 0.5, "class-balanced": 0.0}


def tau_towards(*, trained_power: float, target: TargetPrior | str) -> float:
    """The τ that moves a model trained under ``π^trained_power`` to the target's prior (no fitting).

    A model's logits carry ``α · log π`` of the prior it was trained under; the target's is ``log π`` for a test
    that follows train (``train``) and 0 for a balanced one (``val``, as the presets' val): ``τ = α − α_target``.
    Class-balanced batches towards a test that follows train: ``τ = −1``; square-root batches: ``−0.5``; random
    batches towards a balanced test: ``+1`` (Menon et al.'s post-hoc rule).

    Args:
        trained_power: α of the training prior (:data:`SAMPLER_PRIOR_POWER`).
        target: The test's distribution, as the organizer publishes it.
    """
    return float(trained_power) - (1.0 if TargetPrior(target) is TargetPrior.TRAIN else 0.0)


def tau_grid(low: float = -2.0, high: float = 2.0, step: float = 0.1) -> np.ndarray:
    """The τ values :func:`fit_tau` tries by default: ``low`` to ``high`` in ``step``s (0 always included)."""
    count = int(round((high - low) / step))
    return np.unique(np.round(np.append(low + step * np.arange(count + 1), 0.0), 6))


@dataclasses.dataclass(frozen=True)
class TauFit:
    """τ chosen on val predictions.

    Attributes:
        tau: The chosen τ (lowest weighted top-1 error; ties: nearest 0).
        top1_error: Its weighted val top-1 error.
        unadjusted_top1_error: The weighted val top-1 error at τ = 0.
        target: The distribution it was fitted for.
        errors: The weighted top-1 error of each τ tried, ``{τ: error}``.
        effective_images: Kish's effective sample size of the weighted val images, ``(Σw)² / Σw²``: all of them
            for ``val``; for ``train`` a balanced val's few head-class images carry most of the weight.
    """

    tau: float
    top1_error: float
    unadjusted_top1_error: float
    target: str
    errors: dict[float, float]
    effective_images: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the grid's errors keyed by τ as text)."""
        out = dataclasses.asdict(self)
        out["errors"] = {f"{t:g}": round(e, 6) for t, e in self.errors.items()}
        return out


def target_weights(expected: np.ndarray, *, prior: ClassPrior, target: TargetPrior | str) -> np.ndarray:
    """Each labelled image's weight in an error under the target distribution.

    Args:
        expected: Each image's column in the head (``-1``: not in it).
        prior: The train prior over the columns.
        target: ``val``: every image counts once (one outside the head too: always a mistake); ``train``: an image
            of class ``y`` counts ``π_train(y) / π_here(y)``, ``π_here`` being the share of these images in ``y``
            (importance weights: the weighted error is the one expected on a set that follows train's class
            distribution; images outside the head, whose train share is 0, weigh 0).
    """
    expected = np.asarray(expected, dtype=np.int64)
    if TargetPrior(target) is TargetPrior.VAL:
        return np.ones(len(expected), dtype=np.float64)
    here = np.bincount(np.maximum(expected[expected >= 0], 0), minlength=len(prior.counts)).astype(np.float64)
    train = np.maximum(prior.counts.astype(np.float64), 1.0)
    ratio = (train / train.sum()) / np.maximum(here / max(here.sum(), 1.0), 1e-12)
    return np.where(expected >= 0, ratio[np.maximum(expected, 0)], 0.0)


def fit_tau(
    val_predictions: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    prior: ClassPrior,
    target: TargetPrior | str = TargetPrior.VAL,
    taus: Sequence[float] | np.ndarray | None = None,
    chunk_rows: int | None = None,
) -> TauFit:
    """Choose τ on labelled val predictions: the lowest top-1 error under the target distribution.

    Args:
        val_predictions: The model's (or ensemble's) val prediction folder.
        labels: The labelled val JSON.
        prior: The train prior over the predictions' columns (:func:`class_prior`).
        target: ``val`` (each val image counts once) or ``train`` (val images weighted by ``π_train / π_val`` of
            their class, so the error is the one expected on a test that follows train's distribution).
        taus: The τ values tried (default :func:`tau_grid`).
        chunk_rows: Rows per chunk.

    Raises:
        ValueError: Images without labels, or a val file none of whose classes are in the head.
    """
    target = TargetPrior(target)
    preds = open_predictions(val_predictions)
    expected = expected_columns(preds, labels, source=val_predictions).columns
    grid = np.asarray(tau_grid() if taus is None else taus, dtype=np.float64)
    weights = target_weights(expected, prior=prior, target=target)
    if weights.sum() <= 0:
        raise ValueError(f"{val_predictions}: no val image of a class in the head; τ cannot be fitted")
    log_prior = prior.log_prior
    wrong = np.zeros(len(grid), dtype=np.float64)
    for start, chunk in preds.iter_chunks(chunk_rows):
        want = expected[start : start + len(chunk)]
        w = weights[start : start + len(chunk)]
        log_p = np.log(np.maximum(chunk.astype(np.float32), _TINY))  # once per chunk; the argmax needs no softmax
        for i, tau in enumerate(grid):
            predicted = (log_p - np.float32(tau) * log_prior.astype(np.float32)[None, :]).argmax(axis=1)
            wrong[i] += float(w[predicted != want].sum())
    errors = wrong / weights.sum()
    pick = int(np.lexsort((np.abs(grid), np.round(errors, 12)))[0])
    zero = int(np.argmin(np.abs(grid)))
    fit = TauFit(
        tau=float(grid[pick]), top1_error=float(errors[pick]), unadjusted_top1_error=float(errors[zero]),
        target=target.value, errors={float(t): float(e) for t, e in zip(grid, errors)},
        effective_images=float(weights.sum() ** 2 / np.square(weights).sum()),
    )  # fmt: skip
    _logger.info("fitted τ = %g on %s (target %s, %.0f effective images): top-1 error %.4f (τ = 0: %.4f)", fit.tau,
                 val_predictions, target.value, fit.effective_images, fit.top1_error,
                 fit.unadjusted_top1_error)  # fmt: skip
    if fit.effective_images < FEW_EFFECTIVE_IMAGES:
        _logger.warning(
            "%s: τ was fitted on %.0f effective images (target %s): too few to trust; where the organizer publishes "
            "the test's distribution, τ follows from the training prior (inatcomp.predict.longtail.tau_towards)",
            val_predictions,
            fit.effective_images,
            target.value,
        )
    return fit


def adjust_predictions(
    predictions: str | os.PathLike,
    *,
    tau: float,
    prior: ClassPrior | None = None,
    out: str | os.PathLike,
    fit: TauFit | None = None,
    chunk_rows: int | None = None,
) -> Path:
    """Write the logit-adjusted copy of a prediction folder (``out`` may be the folder itself), streaming.

    Args:
        predictions: The prediction folder (probabilities).
        tau: τ.
        prior: The train prior (default: :func:`prior_of_predictions`).
        out: The folder to write.
        fit: How τ was fitted, recorded in the header.
        chunk_rows: Rows per chunk.

    Returns:
        The written folder.
    """
    preds = open_predictions(predictions)
    if preds.header.get("score_kind", "prob") != "prob":
        raise ValueError(f"{predictions}: scores are {preds.header['score_kind']}, not probabilities; adjust members")
    prior = prior if prior is not None else prior_of_predictions(preds)
    record = {"tau": float(tau), "prior": prior.source, "classes_without_train_images": prior.without_images}
    if fit is not None:
        record["fit"] = fit.to_dict()
    header = {k: v for k, v in preds.header.items() if k not in ("format", "n_images", "n_classes", "files")}
    header["logit_adjust"] = [*header.get("logit_adjust", []), record]
    log_prior = prior.log_prior
    with PredictionWriter(out, image_ids=preds.image_ids, category_ids=preds.category_ids, header=header) as writer:
        for _, chunk in preds.iter_chunks(chunk_rows):
            writer.write(adjust_scores(chunk, log_prior, tau))
    _logger.info("%s: logit-adjusted with τ = %g (prior %s)", out, tau, prior.source)
    return Path(out)


def resolve_adjustment(
    predictions: str | os.PathLike,
    *,
    tau: float | None = None,
    fit_on: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    target: TargetPrior | str = TargetPrior.VAL,
    prior: str | os.PathLike | None = None,
) -> tuple[float, ClassPrior, TauFit | None] | None:
    """The logit adjustment the command line asks for: τ given, or fitted on val predictions; ``None`` for none.

    Args:
        predictions: The predictions to adjust (their columns; their checkpoint's counts when ``prior`` is None).
        tau: ``--logit-adjust TAU``.
        fit_on: ``--fit-logit-adjust VAL_PRED``: val predictions of the same model or ensemble, unadjusted.
        labels: The labelled val JSON of ``fit_on``.
        target: The distribution τ is fitted for.
        prior: ``--prior``: a training JSON or checkpoint (default: the predictions' checkpoint).

    Returns:
        (τ, the prior, the fit or ``None``), or ``None`` when neither ``tau`` nor ``fit_on`` is given.

    Raises:
        ValueError: Both or a fit without labels, or val predictions over other categories.
    """
    if tau is None and fit_on is None:
        return None
    if tau is not None and fit_on is not None:
        raise ValueError("give --logit-adjust TAU or --fit-logit-adjust VAL_PRED, not both")
    preds = open_predictions(predictions)
    chosen = class_prior(prior, preds.category_ids) if prior else prior_of_predictions(preds)
    if fit_on is None:
        return float(tau), chosen, None  # type: ignore[arg-type]
    if labels is None:
        raise ValueError("--fit-logit-adjust needs --labels VAL.json (the labels of its val predictions)")
    val = open_predictions(fit_on)
    if not np.array_equal(val.category_ids, preds.category_ids):
        raise ValueError(f"--fit-logit-adjust {fit_on}: its categories are not those of {predictions} (same model?)")
    fit = fit_tau(fit_on, labels, prior=chosen, target=target)
    return fit.tau, chosen, fit
