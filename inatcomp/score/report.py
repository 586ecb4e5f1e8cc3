"""Reports of one score: JSON, Markdown and PNG files.

Every file is written to a temporary name in its folder and renamed, so a reader never sees half a file; table cells
are made safe by :mod:`inatcomp.score.tables`. The plots come from :mod:`inatcomp.score.plots` (Matplotlib), imported
only when a report with an analysis is written.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from inatcomp.fileio import write_atomic
from inatcomp.score.metric import ScoreResult
from inatcomp.score.tables import fixed, markdown_cell, markdown_table, percent

__all__ = ["prediction_score_markdown", "score_markdown", "write_score_report"]

_logger = logging.getLogger(__name__)


def score_markdown(result: ScoreResult) -> str:
    """The score and its analyses as a Markdown document."""
    name = Path(result.submission).name if result.submission else "predictions"
    fmt = result.format.value if result.format else "unknown format"
    parts = [
        f"# Score: {markdown_cell(name)}",
        "",
        f"Format {fmt}; official metric {result.official_metric} (lower is better); {result.images['all']:,} images.",
        "",
    ]
    ks = sorted(int(key[3:]) for key in result.errors)
    rows = [
        [label, f"{result.images[key]:,}", *(fixed(result.errors[f"top{k}"][key]) for k in ks)]
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
        f"{percent(analysis['mean_class_accuracy'])} "
        f"(image-level top-1 accuracy {percent(analysis['top1_accuracy'])}).",
        "",
        markdown_table(
            ["supercategory", "classes", "train images", "test images", "top-1 accuracy"],
            [
                [r["supercategory"], r["classes"], r["train_images"], r["images"], percent(r["accuracy"])]
                for r in analysis["supercategories"]
            ],
            right=[False, True, True, True, True],
        ),
        "",
        "## By number of training images",
        "",
        markdown_table(
            ["training images per class", "classes", "test images", "top-1 accuracy"],
            [[r["bin"], r["classes"], r["images"], percent(r["accuracy"])] for r in analysis["train_count_bins"]],
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
        f"Of {mistakes['count']:,} top-1 mistakes, {percent(mistakes['same_genus_share']) or 'unknown'} stay in the "
        f"right genus and {percent(mistakes['same_family_share']) or 'unknown'} in the right family; "
        f"{mistakes['unknown_predicted']:,} predict a category id the dataset does not have.",
    ]
    return parts


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
        # lazy: Matplotlib takes about 0.3 s to import; only a report with an analysis draws
        from inatcomp.score.plots import bar_png

        bins = analysis["train_count_bins"]
        written.append(
            write_atomic(
                out / "accuracy_by_train_count.png",
                bar_png(
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
                bar_png(
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
