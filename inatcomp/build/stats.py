"""The release's statistics: classes and images per supercategory and split, and the long-tail plot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from inatcomp.build.arrays import _sorted_unique
from inatcomp.build.layout import _PARTS
from inatcomp.build.rules import Split
from inatcomp.fileio import write_atomic, write_json


def _stats_and_plot(
    out: Path, cat_frame: pd.DataFrame, category: np.ndarray, split: np.ndarray, observer_id: np.ndarray, sizes: dict
) -> tuple[dict, dict[str, int]]:
    """The statistics and the long-tail plot (written to ``long_tail.png``), and the audit's observers per split."""
    per_split = {s: len(_sorted_unique(observer_id[split == c])) for s, c in _PARTS.items()}
    stats = _stats(cat_frame, category, split, sizes)
    _long_tail_plot(out / "long_tail.png", category, split, len(cat_frame))
    return stats, per_split


def _write_stats(out: Path, stats: dict) -> None:
    """Write ``stats.json`` and ``stats.md``."""
    write_json(out / "stats.json", stats, indent=2)
    write_atomic(out / "stats.md", _stats_markdown(stats))


def _stats(cat_frame: pd.DataFrame, category: np.ndarray, split: np.ndarray, sizes: dict[str, int]) -> dict:
    """Classes and images per supercategory and split, and train images per class: ``stats.json``."""
    supercat = cat_frame["supercategory"].to_numpy()
    names, of_class = (
        np.unique(supercat.astype(str), return_inverse=True)
        if len(supercat)
        else (np.zeros(0, str), np.zeros(0, np.int64))
    )
    classes = np.bincount(of_class, minlength=len(names))
    of_image = of_class[category] if len(category) else np.zeros(0, np.int64)
    per_split = {
        part: np.bincount(of_image[split == code], minlength=len(names))
        for part, code in (("train", 0), ("val", 1), ("test", 2))
    }
    rows = [
        {
            "supercategory": str(names[i]),
            "classes": int(classes[i]),
            **{part: int(counts[i]) for part, counts in per_split.items()},
        }
        for i in sorted(range(len(names)), key=lambda i: (-int(classes[i]), str(names[i])))
    ]
    train_counts = np.bincount(category[split == Split.TRAIN], minlength=len(cat_frame))
    return {
        "classes": len(cat_frame),
        "images": sizes,
        "per_supercategory": rows,
        "train_images_per_class": {
            "min": int(train_counts.min()) if len(train_counts) else 0,
            "median": float(np.median(train_counts)) if len(train_counts) else 0.0,
            "max": int(train_counts.max()) if len(train_counts) else 0,
        },
    }


def _stats_markdown(stats: dict) -> str:
    """``stats.md``: the statistics as a table, and the long-tail plot."""
    lines = [
        "# Dataset statistics",
        "",
        "| supercategory | classes | train | val | test |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in stats["per_supercategory"]:
        lines.append(
            f"| {row['supercategory']} | {row['classes']:,} | {row['train']:,} | {row['val']:,} | {row['test']:,} |"
        )
    totals = {k: sum(r[k] for r in stats["per_supercategory"]) for k in ("classes", "train", "val", "test")}
    lines.append(
        f"| **total** | {totals['classes']:,} | {totals['train']:,} | {totals['val']:,} | {totals['test']:,} |"
    )
    t = stats["train_images_per_class"]
    lines += ["", f"Train images per class: min {t['min']}, median {t['median']:g}, max {t['max']}.", ""]
    lines.append("![long tail](long_tail.png)")
    return "\n".join(lines) + "\n"


def _long_tail_plot(path: Path, category: np.ndarray, split: np.ndarray, n_classes: int) -> None:
    """Train images per class, classes sorted by count, on a log scale: a PNG drawn with Pillow (fast to import)."""
    counts = np.sort(np.bincount(category[split == Split.TRAIN], minlength=n_classes))[::-1]
    width, height, left, right, top, bottom = 600, 350, 70, 20, 36, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=14)
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # plot box: y0 is the bottom edge
    top_decade = max(1, int(np.ceil(np.log10(max(int(counts.max(initial=1)), 1) * 1.05))))
    n = max(len(counts), 1)

    def x_of(rank: np.ndarray | float) -> np.ndarray | float:
        return x0 + (np.asarray(rank, dtype=np.float64) - 1) / max(n - 1, 1) * (x1 - x0)

    def y_of(value: np.ndarray | float) -> np.ndarray | float:
        logs = np.log10(np.maximum(np.asarray(value, dtype=np.float64), 1))
        return y0 - logs / top_decade * (y0 - y1)

    for decade in range(top_decade + 1):
        y = float(y_of(10.0**decade))
        draw.line([(x0, y), (x1, y)], fill="#e6e6e6")
        draw.line([(x0 - 4, y), (x0, y)], fill="black")
        draw.text((x0 - 7, y), f"{10**decade:,}", fill="black", font=font, anchor="rm")
    step = max(1, 10 ** int(np.floor(np.log10(n))))
    step *= 5 if n / step > 8 else (2 if n / step > 4 else 1)
    for tick in range(0, n + 1, step):
        x = float(x_of(max(tick, 1)))
        draw.line([(x, y0), (x, y0 + 4)], fill="black")
        draw.text((x, y0 + 6), f"{tick:,}", fill="black", font=font, anchor="mt")
    if len(counts):
        # One point per pixel column (the largest count in it) keeps the curve's shape at any class count.
        columns = np.round(x_of(np.arange(1, len(counts) + 1))).astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(columns)) + 1]
        xs = columns[starts].astype(np.float64)
        ys = y_of(counts[starts])
        if len(xs) == 1:
            draw.point((float(xs[0]), float(ys[0])), fill="#2a6f3f")
        else:
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill="#2a6f3f", width=2)
    draw.rectangle([x0, y1, x1, y0], outline="black")
    draw.text(((x0 + x1) / 2, 10), "Long tail of the train split", fill="black", font=title_font, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 6), "class (sorted by train images)", fill="black", font=font, anchor="md")
    label = Image.new("RGB", (160, 16), "white")
    ImageDraw.Draw(label).text((80, 8), "train images", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (4, int((y0 + y1) / 2) - 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    write_atomic(path, buffer.getvalue())
