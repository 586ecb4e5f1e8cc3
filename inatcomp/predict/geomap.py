"""The geo prior drawn on a map: ``inatcomp geoprior map``.

:func:`plot_prior_map` draws one category's prior (:mod:`inatcomp.predict.geoprior`) over the world, equirectangular,
on Matplotlib's Agg canvas directly (no global backend change). Matplotlib takes about half a second to import, so
the map lives apart from the prior's combination with predictions (:mod:`inatcomp.predict.geocombine`), which every
``inatcomp predict`` imports.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from inatcomp.fileio import write_atomic
from inatcomp.predict.geoprior import GeoPrior, load_prior

__all__ = ["plot_prior_map"]


def plot_prior_map(
    prior: GeoPrior | str | os.PathLike,
    *,
    out: str | os.PathLike,
    category_id: int | None = None,
    day: float | None = None,
    points: tuple[Sequence[float], Sequence[float]] | None = None,
    resolution: float = 1.0,
    title: str | None = None,
) -> Path:
    """An equirectangular PNG map of one category's prior (longitude across, latitude up).

    Args:
        prior: A :class:`~inatcomp.predict.geoprior.GeoPrior` or the path of a saved one.
        out: The PNG to write.
        category_id: The category (default: the one with the most training observations).
        day: Fraction of the year for a prior with dates (default: averaged over the year).
        points: ``(lat, lon)`` of observations to mark on the map (e.g. the training images of the category).
        resolution: Grid step in degrees.
        title: Plot title (default: the category and the day).

    Raises:
        ValueError: A category the prior does not have, or a bad resolution.
    """
    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    if category_id is None:
        counts = prior.metadata.get("observations_per_category") or [0]
        category_id = int(prior.category_ids[int(np.argmax(counts))])
    columns = np.flatnonzero(prior.category_ids == category_id)
    if not len(columns):
        raise ValueError(f"category {category_id}: not in the prior (its categories: {len(prior.category_ids)})")
    if not 0.05 <= resolution <= 30:
        raise ValueError(f"resolution must be in [0.05, 30] degrees, got {resolution}")
    lons = np.arange(-180 + resolution / 2, 180, resolution)
    lats = np.arange(90 - resolution / 2, -90, -resolution)
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    days = None if day is None else np.full(grid_lat.size, float(day))
    values = prior.scores(lat=grid_lat.ravel(), lon=grid_lon.ravel(), day=days, columns=columns)
    image = values[:, 0].reshape(grid_lat.shape)
    figure = Figure(figsize=(9.0, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(
        image, extent=(-180, 180, -90, 90), origin="upper", cmap="viridis", vmin=0, vmax=1, aspect="auto"
    )
    if points is not None and len(points[0]):
        axes.scatter(points[1], points[0], s=6, c="#ff3030", marker="o", linewidths=0, label="training images")
        axes.legend(loc="lower left", fontsize=8)
    when = "averaged over the year" if prior.use_dates and day is None else ""
    if prior.use_dates and day is not None:
        when = f"day {int(day * 365) + 1} of the year"
    axes.set_title(title or f"geo prior of category {category_id}" + (f", {when}" if when else ""))
    axes.set_xlabel("longitude (°)")
    axes.set_ylabel("latitude (°)")
    axes.set_xticks(range(-180, 181, 60))
    axes.set_yticks(range(-90, 91, 30))
    label = "P(category | place, date)" if prior.use_dates else "P(category | place)"
    figure.colorbar(shown, ax=axes, label=label, fraction=0.03)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(out, buffer.getvalue())
