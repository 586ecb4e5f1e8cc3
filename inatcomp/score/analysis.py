"""Analyses of a scorer's top-1 mistakes: per supercategory, by number of training images, confused pairs, near misses.

They need a built dataset folder (``docs/formats.md`` §4): ``categories.json`` (the list of COCO category records)
and a train JSON (``train2018.json``, ``train2017.json``, ``train2019.json`` or ``train.json``) whose annotations give
the number of training images per class.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json

__all__ = ["DEFAULT_BINS", "TRAIN_JSON_NAMES", "DatasetInfo", "analyse", "load_dataset_info"]

#: Training-image-count bins of :func:`analyse`: inclusive (low, high), ``None`` meaning unbounded.
DEFAULT_BINS: tuple[tuple[int, int | None], ...] = (
    (0, 1),
    (2, 5),
    (6, 10),
    (11, 20),
    (21, 50),
    (51, 100),
    (101, 1000),
    (1001, None),
)
#: Train JSON names looked for in a dataset folder, in this order.
TRAIN_JSON_NAMES = ("train2018.json", "train2017.json", "train2019.json", "train.json")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the analyses need from a built dataset.

    Attributes:
        categories: The COCO category records.
        train_counts: Training images per category id.
    """

    categories: list[dict[str, Any]]
    train_counts: dict[int, int]


def load_dataset_info(folder: str | os.PathLike) -> DatasetInfo:
    """Read ``categories.json`` and the train JSON of a built dataset folder.

    Args:
        folder: The dataset folder.

    Returns:
        The categories and the training counts.

    Raises:
        ValueError: When the files are missing or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a dataset folder")
    train_path = next((folder / name for name in TRAIN_JSON_NAMES if (folder / name).is_file()), None)
    if train_path is None:
        raise ValueError(f"{folder}: no train JSON (looked for {', '.join(TRAIN_JSON_NAMES)})")
    train = read_json(train_path)
    if not isinstance(train, dict) or not isinstance(train.get("annotations"), list):
        raise ValueError(f"{train_path}: expected a COCO-style object with an 'annotations' list")
    categories_path = folder / "categories.json"
    if categories_path.is_file():
        categories = read_json(categories_path)
        if isinstance(categories, dict):
            categories = categories.get("categories")
    else:
        categories = train.get("categories")
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c for c in categories):
        raise ValueError(f"{categories_path}: expected a list of category records with an 'id'")
    try:
        ids = np.array([int(a["category_id"]) for a in train["annotations"]], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{train_path}: an annotation has no integer category_id ({err})") from None
    values, counts = np.unique(ids, return_counts=True)
    return DatasetInfo(categories=categories, train_counts=dict(zip(values.tolist(), counts.tolist())))


def _bin_label(low: int, high: int | None) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}–{high}"


def _category_codes(cat_ids: np.ndarray, records: dict[int, dict], key: str) -> np.ndarray | None:
    """Integer codes of a taxonomy field for sorted category ids (-1 when unknown); None if no record has it."""
    values = []
    for cid in cat_ids.tolist():
        record = records[cid]
        value = record.get(key)
        if not value and key == "genus":  # 2017 records have no genus: the first word of the name is one
            name = str(record.get("name") or "")
            value = name.split()[0] if " " in name.strip() else None
        values.append(str(value) if value else None)
    if not any(values):
        return None
    lookup: dict[str, int] = {}
    return np.array([-1 if v is None else lookup.setdefault(v, len(lookup)) for v in values], dtype=np.int64)


def _lookup(sorted_ids: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each value in ``sorted_ids`` (0 when absent) and whether it is there."""
    if not len(sorted_ids):
        return np.zeros(len(values), dtype=np.int64), np.zeros(len(values), dtype=bool)
    index = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    found = sorted_ids[index] == values
    return np.where(found, index, 0), found


def analyse(
    top1: np.ndarray,
    expected: np.ndarray,
    categories: list[dict[str, Any]],
    train_counts: dict[int, int],
    *,
    bins: Sequence[tuple[int, int | None]] = DEFAULT_BINS,
    top_confusions: int = 20,
) -> dict[str, Any]:
    """Top-1 analyses: per supercategory, by training-set size, the most confused pairs, near misses.

    Accuracies are means of per-class top-1 accuracies over the classes present in ``expected`` (classes absent
    from it are left out; predictions of them are plain mistakes).

    Args:
        top1: ``[n]`` top-1 predicted labels.
        expected: ``[n]`` expected labels.
        categories: COCO category records (id, name, supercategory, and the ranks kingdom … genus where known;
            records without a supercategory are grouped by kingdom).
        train_counts: Training images per category id (0 when absent).
        bins: Inclusive (low, high) training-count bins; ``high`` None is unbounded.
        top_confusions: How many confused pairs to list.

    Returns:
        A JSON-ready dictionary with ``images``, ``classes``, ``mean_class_accuracy``, ``supercategories`` (rows
        with supercategory, classes, train_images, images, accuracy), ``train_count_bins`` (bin, low, high,
        classes, images, accuracy), ``confusions`` (expected_id, expected, predicted_id, predicted, count) and
        ``mistakes`` (count, same_genus, same_family and their shares; None where the ranks are unknown).
    """
    top1 = np.asarray(top1, dtype=np.int64).ravel()
    expected = np.asarray(expected, dtype=np.int64).ravel()
    if len(top1) != len(expected):
        raise ValueError(f"top1 and expected differ in length: {len(top1)} and {len(expected)}")
    if not len(expected):
        raise ValueError("no images to analyse")
    records = {int(c["id"]): c for c in categories}
    hit = top1 == expected
    stats = _class_stats(expected, hit, train_counts)
    wrong = ~hit
    pairs = np.stack([expected[wrong], top1[wrong]], axis=1)
    return {
        "images": int(len(expected)),
        "classes": int(len(stats.classes)),
        "top1_accuracy": float(hit.mean()),
        "mean_class_accuracy": float(stats.accuracy.mean()),
        "supercategories": _supercategory_rows(stats, records),
        "train_count_bins": _train_count_rows(stats, bins),
        "confusions": _confusions(pairs, records, top_confusions),
        "mistakes": _mistakes(pairs, records),
    }


@dataclasses.dataclass(frozen=True)
class _ClassStats:
    """Per expected class: its id, images, top-1 accuracy and training images."""

    classes: np.ndarray
    images: np.ndarray
    accuracy: np.ndarray
    train: np.ndarray

    def group_row(self, mask: np.ndarray) -> dict[str, Any]:
        """The classes under ``mask`` together: their mean per-class accuracy."""
        return {
            "classes": int(mask.sum()),
            "train_images": int(self.train[mask].sum()),
            "images": int(self.images[mask].sum()),
            "accuracy": float(self.accuracy[mask].mean()) if mask.any() else None,
        }


def _class_stats(expected: np.ndarray, hit: np.ndarray, train_counts: dict[int, int]) -> _ClassStats:
    classes, inverse = np.unique(expected, return_inverse=True)
    images = np.bincount(inverse)
    return _ClassStats(
        classes=classes,
        images=images,
        accuracy=np.bincount(inverse, weights=hit) / images,
        train=np.array([int(train_counts.get(int(c), 0)) for c in classes], dtype=np.int64),
    )


def _supercategory_rows(stats: _ClassStats, records: dict[int, dict]) -> list[dict[str, Any]]:
    """One row per supercategory (the kingdom where a record has none), most classes first."""
    supers = np.array(
        [
            str(records.get(int(c), {}).get("supercategory") or records.get(int(c), {}).get("kingdom") or "(none)")
            for c in stats.classes
        ]
    )
    rows = [{"supercategory": str(s), **stats.group_row(supers == s)} for s in np.unique(supers)]
    rows.sort(key=lambda row: (-row["classes"], row["supercategory"]))
    return rows


def _train_count_rows(stats: _ClassStats, bins: Sequence[tuple[int, int | None]]) -> list[dict[str, Any]]:
    """One row per training-count bin that holds a class."""
    rows = []
    for low, high in bins:
        mask = (stats.train >= low) & (stats.train <= (np.iinfo(np.int64).max if high is None else high))
        if mask.any():
            row = stats.group_row(mask)
            del row["train_images"]
            rows.append({"bin": _bin_label(low, high), "low": low, "high": high, **row})
    return rows


def _category_name(records: dict[int, dict], cid: int) -> str:
    record = records.get(cid)
    return str(record.get("name", cid)) if record else f"(unknown category {cid})"


def _confusions(pairs: np.ndarray, records: dict[int, dict], top: int) -> list[dict[str, Any]]:
    """The ``top`` most frequent (expected, predicted) pairs among the mistakes."""
    confusions: list[dict[str, Any]] = []
    if len(pairs):
        unique_pairs, pair_counts = np.unique(pairs, axis=0, return_counts=True)
        order = np.lexsort((unique_pairs[:, 1], unique_pairs[:, 0], -pair_counts))[:top]
        for (exp_id, pred_id), count in zip(unique_pairs[order].tolist(), pair_counts[order].tolist()):
            confusions.append(
                {"expected_id": exp_id, "expected": _category_name(records, exp_id), "predicted_id": pred_id}
                | {"predicted": _category_name(records, pred_id), "count": count}
            )
    return confusions


def _mistakes(pairs: np.ndarray, records: dict[int, dict]) -> dict[str, Any]:
    """How many mistakes stay in the expected genus and family (None where the ranks are unknown)."""
    mistakes: dict[str, Any] = {"count": len(pairs)}
    cat_ids = np.array(sorted(records), dtype=np.int64)
    idx_exp, known_exp = _lookup(cat_ids, pairs[:, 0])
    idx_pred, known_pred = _lookup(cat_ids, pairs[:, 1])
    mistakes["unknown_predicted"] = int((~known_pred).sum())
    for rank in ("genus", "family"):
        codes = _category_codes(cat_ids, records, rank) if len(cat_ids) else None
        if codes is None:
            mistakes[f"same_{rank}"] = mistakes[f"same_{rank}_share"] = None
            continue
        both = known_pred & known_exp
        e_code = np.where(both, codes[idx_exp], -1)
        p_code = np.where(both, codes[idx_pred], -2)
        same = int(((e_code == p_code) & (e_code >= 0)).sum())
        mistakes[f"same_{rank}"] = same
        mistakes[f"same_{rank}_share"] = same / len(pairs) if len(pairs) else None
    return mistakes
