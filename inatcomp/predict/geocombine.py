"""The geo prior combined with image predictions, and evaluated on a labelled split.

**Combination** (:func:`apply_prior`, :func:`evaluate_prior`): ``p(y | image, place) ∝ p(y | image) · P(y |
place, date)``, renormalised per image, streaming the prediction file in row chunks. Images without a usable
location keep their row bit for bit; an image with a place but no date gets the prior averaged over the year.
Prediction files hold probabilities (``score_kind`` ``prob``: also ``--average logit`` predictions, the softmax
of the mean logits); rank-ensemble scores (``rank``) are refused, since they are not probabilities.

The prior itself (its network, training and files) is :mod:`inatcomp.predict.geoprior`; the places and dates are
read by :mod:`inatcomp.predict.geodata`; its map is drawn by :mod:`inatcomp.predict.geomap`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.formats.predictions import PredictionWriter, expected_columns, index_of, open_predictions, top_k_columns
from inatcomp.predict.geodata import Locations, find_locations, load_locations
from inatcomp.predict.geoprior import GeoPrior, load_prior
from inatcomp.score.metric import top_k_hits

__all__ = ["apply_prior", "evaluate_prior"]

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------------
# Combining with image predictions


@dataclasses.dataclass
class _Chunk:
    start: int
    original: np.ndarray  # float16 [r, C]
    combined: np.ndarray  # float32 [r, C]; rows without a location equal the original
    located: np.ndarray  # bool [r]
    prior: np.ndarray | None  # float32 [located rows, C] in the prediction's columns (neutral where unknown)


def _prior_source(preds: Any, locations: str | os.PathLike | None) -> Path:
    if locations is not None:
        return Path(locations)
    data = preds.header.get("data")
    if not data:
        raise ValueError(f"{preds.path}: header names no data JSON; give the locations (--locations)")
    return find_locations(data)


def _combined_chunks(
    preds: Any, prior: GeoPrior, table: Locations, chunk_rows: int | None, stats: dict[str, int], *, keep_prior: bool
) -> Iterator[_Chunk]:
    """Stream a prediction file's rows with the prior applied (see :func:`apply_prior`).

    Memory is a few float32 copies of one chunk (the prior's scores, the product, the combined rows).
    """
    kind = preds.header.get("score_kind", "prob")
    if kind != "prob":
        raise ValueError(
            f"{preds.path}: score_kind {kind!r}: the scores are not probabilities; apply the prior to each member "
            "before a rank ensemble, or ensemble with mean-prob"
        )
    column = index_of(prior.category_ids, preds.category_ids)
    known = column >= 0
    if not known.all():
        _logger.warning(
            "%d of %d categories of %s have no prior (no located training image): a neutral factor for them",
            int((~known).sum()), preds.n_classes, preds.path,
        )  # fmt: skip
    stats["categories_without_prior"] = int((~known).sum())
    lat, lon, day = table.lookup(preds.image_ids)
    has_place = np.isfinite(lat)
    if not has_place.any():
        _logger.warning("no image of %s has a location in %s: predictions unchanged", preds.path, table.source)
    for start, chunk in preds.iter_chunks(chunk_rows):
        rows = slice(start, start + len(chunk))
        combined = chunk.astype(np.float32)
        if (combined < 0).any() or not np.isfinite(combined).all():
            raise ValueError(f"{preds.path}: rows {start}-{start + len(chunk) - 1} hold negative or non-finite scores")
        located = has_place[rows].copy()
        kept = None
        if located.any():
            d = day[rows][located] if prior.use_dates else None
            raw = prior.scores(lat=lat[rows][located], lon=lon[rows][located], day=d)
            factor = raw[:, np.maximum(column, 0)]
            if not known.all():
                factor[:, ~known] = raw.mean(axis=1, keepdims=True)
            del raw
            idx = np.flatnonzero(located)
            product = combined[idx] * factor
            total = product.sum(axis=1, keepdims=True)
            ok = (total[:, 0] > 0) & np.isfinite(total[:, 0])
            stats["zero_products"] += int((~ok).sum())
            product /= np.where(ok[:, None], total, 1.0)
            combined[idx[ok]] = product[ok]
            located[idx[~ok]] = False
            kept = factor[ok] if keep_prior else None
            if prior.use_dates:
                stats["located_without_date"] += int((~np.isfinite(d[ok])).sum())
        stats["with_location"] += int(located.sum())
        yield _Chunk(start, chunk, combined, located, kept)


def apply_prior(
    predictions: str | os.PathLike,
    *,
    prior: GeoPrior | str | os.PathLike,
    out: str | os.PathLike,
    locations: Locations | str | os.PathLike | None = None,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Multiply a prediction file's probabilities by the prior, renormalise, and write a new prediction file.

    Images without a usable location (none in ``locations``, missing or absurd) keep their row unchanged; an image
    with a place but no date gets the prior averaged over the year. ``out`` may be ``predictions`` itself (it is
    replaced when the new file is complete).

    Args:
        predictions: A prediction folder (``NAME.pred``) of probabilities.
        prior: A :class:`~inatcomp.predict.geoprior.GeoPrior` or the path of a saved one.
        out: The prediction folder to write.
        locations: Location file or 2021 dataset JSON with the images' places; default: from the data JSON named
            in the prediction header (:func:`~inatcomp.predict.geodata.find_locations`).
        chunk_rows: Rows per chunk (default: about 64 MB of float32).

    Returns:
        What was done: ``images``, ``with_location``, ``without_location``, ``located_without_date``,
        ``categories_without_prior``, ``zero_products`` (rows left unchanged because every product was 0).

    Raises:
        ValueError: Unreadable inputs, or scores that are not probabilities.
    """
    preds = open_predictions(predictions)
    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    table = locations if isinstance(locations, Locations) else load_locations(_prior_source(preds, locations))
    stats = {"with_location": 0, "located_without_date": 0, "zero_products": 0, "categories_without_prior": 0}
    structural = {"format", "n_images", "n_classes", "score_kind", "files"}
    header = {k: v for k, v in preds.header.items() if k not in structural}
    with PredictionWriter(out, image_ids=preds.image_ids, category_ids=preds.category_ids, header=header) as writer:
        for chunk in _combined_chunks(preds, prior, table, chunk_rows, stats, keep_prior=False):
            rows = chunk.combined.astype("<f2")
            rows[~chunk.located] = chunk.original[~chunk.located]
            writer.write(rows)
        result = {
            "images": preds.n_images,
            **stats,
            "without_location": preds.n_images - stats["with_location"],
        }
        writer.header["geo_prior"] = {
            "prior": str(prior.path) if prior.path else None,
            "locations": str(table.source),
            "input": str(predictions),
            "use_dates": prior.use_dates,
            **result,
        }
    _logger.info(
        "%s: geo prior applied to %d of %d images (%d without a location left unchanged)",
        out, stats["with_location"], preds.n_images, result["without_location"],
    )  # fmt: skip
    return result


def evaluate_prior(
    predictions: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    prior: GeoPrior | str | os.PathLike,
    locations: Locations | str | os.PathLike | None = None,
    k: int = 3,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Top-1 and top-k error of image predictions with and without the prior (nothing is written).

    Args:
        predictions: Prediction folder of a labelled split (val).
        labels: The labelled competition JSON.
        prior: A :class:`~inatcomp.predict.geoprior.GeoPrior` or the path of a saved one.
        locations: The split's places (default: from ``labels``, :func:`~inatcomp.predict.geodata.find_locations`).
        k: The k of the top-k error.
        chunk_rows: Rows per chunk.

    Returns:
        ``images``, ``with_location``, ``use_dates``, ``image`` and ``combined`` (each ``top1_error``,
        ``top<k>_error``), ``prior_alone`` (the prior's own errors on the located images), ``top1_gain`` and
        ``top<k>_gain`` (error points removed by the prior, as fractions), and the application counts.

    Raises:
        ValueError: Unreadable files, ids that do not match.
    """
    preds = open_predictions(predictions)
    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    table = locations if isinstance(locations, Locations) else load_locations(find_locations(labels, locations))
    expected = expected_columns(preds, labels, source=predictions).columns
    stats = {"with_location": 0, "located_without_date": 0, "zero_products": 0, "categories_without_prior": 0}
    hits = {name: [0, 0] for name in ("image", "combined", "prior_alone")}
    for chunk in _combined_chunks(preds, prior, table, chunk_rows, stats, keep_prior=True):
        want = expected[chunk.start : chunk.start + len(chunk.original)]
        for name, scores, target in (
            ("image", chunk.original, want),
            ("combined", chunk.combined, want),
            ("prior_alone", chunk.prior, want[chunk.located]),
        ):
            if scores is None or not len(scores):
                continue
            ranked = top_k_columns(scores, max(k, 1))
            hits[name][0] += int(top_k_hits(ranked, target, 1).sum())
            hits[name][1] += int(top_k_hits(ranked, target, k).sum())
    n, located = preds.n_images, stats["with_location"]

    def errors(name: str, total: int) -> dict[str, float | None]:
        h1, hk = hits[name]
        return {"top1_error": 1 - h1 / total if total else None, f"top{k}_error": 1 - hk / total if total else None}

    image, combined = errors("image", n), errors("combined", n)
    return {
        "predictions": str(predictions),
        "labels": str(labels),
        "prior": str(prior.path) if prior.path else None,
        "use_dates": prior.use_dates,
        "images": n,
        "k": k,
        **stats,
        "image": image,
        "combined": combined,
        "prior_alone": errors("prior_alone", located),
        "top1_gain": image["top1_error"] - combined["top1_error"],
        f"top{k}_gain": image[f"top{k}_error"] - combined[f"top{k}_error"],
    }
