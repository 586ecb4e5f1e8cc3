"""The PNG plots of a score report: bar charts drawn on Matplotlib's Agg canvas directly (no global backend change).

Matplotlib takes about 0.3 s to import, so :mod:`inatcomp.score.report` imports this module only when it draws.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["bar_png"]


def bar_png(labels: Sequence[str], values: Sequence[float], *, title: str, xlabel: str, horizontal: bool) -> bytes:
    """A PNG bar chart of top-1 accuracies (shares in [0, 1], drawn as percentages), one bar per label."""
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
