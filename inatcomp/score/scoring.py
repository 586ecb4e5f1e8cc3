"""Scoring: top-k error of Kaggle submissions against a solution, and analyses of the mistakes.

Files read here (see ``docs/formats.md`` §4 and ``data_schema/``):

* **Submission**: comma-separated UTF-8 text, header ``id,predicted`` (iNat2017, 2018, 2019) or ``Id,Predicted``
  (iNat2021); ``predicted`` is category ids separated by spaces, most confident first (2017: 5 labels, 2018: 3,
  2019: 1, 2021: 5). A UTF-8 byte order mark, CRLF line endings, blank lines and fields wrapped in double quotes
  are tolerated. A submission is untrusted input: every problem (size over the limit, binary data, wrong
  encoding, wrong header, a malformed, negative, non-integer or huge number, too few or repeated labels, a
  duplicate, unknown or missing id) is reported in one :class:`ValueError` naming the file and the line.
* **Solution**: comma-separated, header with the columns ``id``, ``expected`` and ``usage`` (any order and case);
  ``usage`` is ``Public`` or ``Private``.
* **Dataset folder** (optional, for the analyses): ``categories.json`` (the list of COCO category records) and a
  train JSON (``train2018.json``, ``train2017.json``, ``train2019.json`` or ``train.json``) whose annotations
  give the number of training images per class.

The metric: an image's error is 0 if its expected label is among the first k predicted labels and 1 otherwise;
the score is the mean over the images of each usage. Parsing is vectorised NumPy over the file's bytes, so the
149,394 rows of an iNat2018 test submission are read and scored in a fraction of a second.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.formats.predictions import index_of

_logger = logging.getLogger(__name__)

#: Default size limit of a submission or solution file (200 MB).
DEFAULT_MAX_BYTES = 200_000_000
#: At most this many labels are read per submission row.
MAX_LABELS = 25
#: At most this many digits per number (so that every value fits in a signed 64-bit integer).
MAX_DIGITS = 18
#: At most this many bytes per submission line (a real row is about 40).
MAX_LINE_BYTES = 1024
#: With a known number of solution rows, a submission may hold at most this many bytes per row on average.
MAX_ROW_BYTES = 256
#: At most this many problems are spelt out in an error message.
MAX_REPORTED = 20
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

_POW10 = 10 ** np.arange(MAX_DIGITS + 1, dtype=np.int64)
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SHOW_CHARS = 40


class Usage(enum.Enum):
    """A solution row's leaderboard."""

    PUBLIC = "Public"
    PRIVATE = "Private"


#: The keys of the per-usage figures: the two leaderboards and all rows together.
USAGE_KEYS = ("public", "private", "all")


# --------------------------------------------------------------------------------------------------------------------
# The metric on arrays


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
        analysis: The result of :func:`analyse`, if a dataset was given.
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


# --------------------------------------------------------------------------------------------------------------------
# Analyses


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


# --------------------------------------------------------------------------------------------------------------------
# Reading files


class _Problems:
    """Problems found in one file, formatted lazily (a hostile file may have millions)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._groups: list[tuple[np.ndarray, Callable[[int], str]]] = []
        self._whole: list[str] = []

    def add(self, lines: np.ndarray, describe: Callable[[int], str]) -> None:
        """Add one problem per entry of ``lines`` (1-based line numbers); ``describe(i)`` words the i-th."""
        if len(lines):
            self._groups.append((np.asarray(lines), describe))

    def add_file(self, message: str) -> None:
        """Add a problem of the whole file."""
        self._whole.append(message)

    def raise_if_any(self) -> None:
        """Raise one ValueError listing the first problems in line order, and how many there are."""
        total = len(self._whole) + sum(len(lines) for lines, _ in self._groups)
        if not total:
            return
        messages = [f"{self.path}: {m}" for m in self._whole]
        if self._groups:
            lines = np.concatenate([lines for lines, _ in self._groups])
            group = np.concatenate([np.full(len(g), i) for i, (g, _) in enumerate(self._groups)])
            index = np.concatenate([np.arange(len(g)) for g, _ in self._groups])
            for j in np.lexsort((group, lines))[: max(MAX_REPORTED - len(messages), 1)]:
                describe = self._groups[group[j]][1]
                messages.append(f"{self.path}: line {lines[j]}: {describe(int(index[j]))}")
        if total > len(messages):
            messages.append(f"{self.path}: ... and {total - len(messages)} more problem(s)")
        raise ValueError("\n".join(messages))


def _show(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return repr(text if len(text) <= _SHOW_CHARS else text[: _SHOW_CHARS - 3] + "...")


@dataclasses.dataclass
class _Text:
    """A file's bytes split into lines: header and the non-empty lines after it."""

    data: bytes
    arr: np.ndarray
    header: str
    starts: np.ndarray  # start offset of each data line
    ends: np.ndarray  # end offset (exclusive)
    lines: np.ndarray  # 1-based line number
    header_line: int


def _read_text(path: Path, max_bytes: int | None, *, bound: str | None = None) -> _Text:
    """Read a CSV's bytes safely: size limit, binary data, encoding, BOM, CRLF, quoting, lines.

    Args:
        bound: What the limit is, for the message (default: ``--max-size-mb``'s).
    """
    limit = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    what = bound or f"the size limit (--max-size-mb, default {DEFAULT_MAX_BYTES / 1e6:.0f} MB)"
    try:
        if path.is_dir():
            raise ValueError(f"{path}: is a folder, not a file")
        size = path.stat().st_size
        if size > limit:
            raise ValueError(f"{path}: {size:,} bytes, over {limit:,} bytes: {what}")
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise ValueError(f"{path}: cannot read ({err.strerror or err})") from None
    if len(data) > limit:
        raise ValueError(f"{path}: over {limit:,} bytes: {what}")
    if not data.strip():
        raise ValueError(f"{path}: file is empty")
    if data.startswith(_UTF16_BOMS):
        raise ValueError(f"{path}: UTF-16 text (byte order mark {data[:2]!r}); expected UTF-8")
    if data[:2] == b"\x1f\x8b" or data[:4] == b"PK\x03\x04":
        raise ValueError(f"{path}: compressed data (gzip or zip); unpack it and give the CSV")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ValueError(f"{path}: line {line}: binary data (NUL byte at byte offset {nul}); expected a CSV text file")
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.max() >= 0x80:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise ValueError(
                f"{path}: line {line}: invalid UTF-8 (byte {data[err.start : err.start + 1]!r} at byte offset "
                f"{err.start}); expected UTF-8 text (wrong encoding?)"
            ) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        stray = data.find(b"\r")
        if stray >= 0:
            line = data.count(b"\n", 0, stray) + 1
            raise ValueError(f"{path}: line {line}: carriage return without line feed; expected LF or CRLF line ends")
    if b'"' in data:
        data = _unquote(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if not data.endswith(b"\n"):
        ends = np.append(ends, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    numbers = np.arange(1, len(ends) + 1)
    nonempty = ends > starts
    first = int(np.argmax(nonempty))
    header = data[starts[first] : ends[first]].decode("utf-8", "replace")
    keep = nonempty.copy()
    keep[: first + 1] = False
    return _Text(data, arr, header, starts[keep], ends[keep], numbers[keep], first + 1)


def _unquote(data: bytes) -> bytes:
    """Remove CSV double quotes around fields, line by line (a field that needs them stays quoted)."""
    out = []
    for raw in data.split(b"\n"):
        if b'"' in raw:
            try:
                fields = next(csv.reader(io.StringIO(raw.decode("utf-8"))), [])
            except csv.Error:
                fields = None
            if fields is not None and not any(("," in f or '"' in f) for f in fields):
                raw = ",".join(fields).encode("utf-8")
        out.append(raw)
    return b"\n".join(out)


_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[ord("0") : ord("9") + 1] = True
_ALLOWED = _DIGIT.copy()
_ALLOWED[[ord(" "), ord(","), ord("\n")]] = True


@dataclasses.dataclass
class _Grid:
    """A CSV's data lines cut into fields, with every run of digits and every stray byte placed in its cell.

    Offsets index ``text.data``; rows index ``text.starts``. Field offsets are meaningful for ``ok`` rows only.
    """

    text: _Text
    ok: np.ndarray  # [rows] the row has the header's number of fields
    field_start: np.ndarray  # [rows, columns]
    field_end: np.ndarray  # [rows, columns] (exclusive)
    tok_row: np.ndarray  # digit runs: row, field, start offset, length, value (up to MAX_DIGITS digits)
    tok_field: np.ndarray
    tok_start: np.ndarray
    tok_len: np.ndarray
    tok_value: np.ndarray
    commas: np.ndarray  # offsets of the commas, in order
    first_comma: np.ndarray  # [rows] index in ``commas`` of each row's first comma

    def stray_bytes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bytes other than digits, spaces, commas and line feeds: their rows, fields and offsets.

        Computed on demand: only a field that may hold several numbers (the labels) needs them; a one-number
        field is invalid with any stray byte already, and a solution's usage column is letters throughout.
        """
        base = int(self.text.starts[0])
        pos = np.flatnonzero(~_ALLOWED[self.text.arr[base:]]) + base
        row = np.searchsorted(self.text.ends, pos)
        return row, np.searchsorted(self.commas, pos) - self.first_comma[row], pos

    def field_bytes(self, row: int, column: int, limit: int = 200) -> bytes:
        """The bytes of one field, clipped to ``limit``."""
        start = int(self.field_start[row, column])
        return self.text.data[start : min(int(self.field_end[row, column]), start + limit)]

    def line_bytes(self, row: int, limit: int = 200) -> bytes:
        """The bytes of one data line, clipped to ``limit``."""
        start = int(self.text.starts[row])
        return self.text.data[start : min(int(self.text.ends[row]), start + limit)]


def _grid(text: _Text, columns: int, problems: _Problems) -> _Grid:
    """Cut the data lines into ``columns`` comma-separated fields and tokenise them, all vectorised."""
    arr, rows = text.arr, len(text.starts)
    base = int(text.starts[0])
    body = arr[base:]
    digit = _DIGIT[body]
    edges = np.diff(digit.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    newline = body == ord("\n")
    comma = body == ord(",")
    # Events (line feeds, commas, starts of digit runs) in byte order; cumulative counts place each in its cell.
    events = np.flatnonzero(newline | comma | (edges[:-1] == 1))
    ev_newline, ev_comma = newline[events], comma[events]
    physical = np.cumsum(ev_newline) - ev_newline  # line feeds before the event: the physical line after `base`
    # Every physical line after the first data line, blank ones after the last row included, has an entry.
    to_row = np.full(int(np.count_nonzero(newline)) + 2, -1, dtype=np.int64)
    to_row[text.lines - text.lines[0]] = np.arange(rows)
    ev_row = to_row[physical]
    commas_before = np.cumsum(ev_comma) - ev_comma
    last_newline = np.maximum.accumulate(np.where(ev_newline, np.arange(len(events)), -1))
    ev_field = commas_before - np.where(last_newline >= 0, commas_before[np.maximum(last_newline, 0)], 0)
    commas = events[ev_comma] + base
    comma_row = ev_row[ev_comma]
    counts = np.bincount(comma_row, minlength=rows)[:rows]
    ok = counts == columns - 1
    wrong = np.flatnonzero(~ok)
    problems.add(
        text.lines[wrong],
        lambda i: (
            f"{counts[wrong[i]] + 1} field(s) in {_show(text.data[text.starts[wrong[i]] : text.ends[wrong[i]]])}"
            f"; expected {columns} separated by commas"
        ),
    )
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    field_start = np.empty((rows, columns), dtype=np.int64)
    field_end = np.empty((rows, columns), dtype=np.int64)
    field_start[:, 0] = text.starts
    field_end[:, -1] = text.ends
    for j in range(columns - 1):
        at = commas[np.minimum(first + j, len(commas) - 1)] if len(commas) else np.zeros(rows, dtype=np.int64)
        field_end[:, j] = at
        field_start[:, j + 1] = at + 1

    t_start = np.flatnonzero(edges == 1)
    length = np.flatnonzero(edges == -1) - t_start
    value = np.zeros(len(t_start), dtype=np.int64)
    t_end = t_start + length
    for j in range(1, min(int(length.max()) if len(length) else 0, MAX_DIGITS) + 1):
        has = np.flatnonzero(length >= j)
        value[has] += (body[t_end[has] - j].astype(np.int64) - ord("0")) * _POW10[j - 1]
    t_start += base
    ev_token = ~ev_newline & ~ev_comma
    tok_row, tok_field = ev_row[ev_token], ev_field[ev_token]
    return _Grid(text, ok, field_start, field_end, tok_row, tok_field, t_start, length, value, commas, first)


def _describe_int(raw: bytes, what: str) -> str:
    """Why a field is not a valid non-negative integer."""
    text = raw.decode("utf-8", "replace")
    if not text:
        return f"empty {what}; expected a non-negative integer"
    if text.isascii() and text.isdigit():
        return f"{what} {_show(raw)} is too large (more than {MAX_DIGITS} digits)"
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        return f"negative {what} {text}; expected a non-negative integer"
    return f"{what} {_show(raw)} is not an integer"


def _int_field(grid: _Grid, column: int, what: str, problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
    """Parse field ``column`` of every row as one non-negative integer; returns the values and the valid rows."""
    rows = len(grid.ok)
    sel = np.flatnonzero(grid.tok_field == column)
    row = grid.tok_row[sel]
    count = np.bincount(row, minlength=rows)[:rows]
    value = np.full(rows, -1, dtype=np.int64)
    length = np.zeros(rows, dtype=np.int64)
    value[row] = grid.tok_value[sel]
    length[row] = grid.tok_len[sel]
    span = grid.field_end[:, column] - grid.field_start[:, column]
    # One run of digits spanning the whole field: any other byte in it (a sign, a space, a letter) fails this.
    valid = grid.ok & (count == 1) & (length == span) & (length <= MAX_DIGITS)
    invalid = np.flatnonzero(grid.ok & ~valid)
    problems.add(grid.text.lines[invalid], lambda i: _describe_int(grid.field_bytes(invalid[i], column).strip(), what))
    return value, valid


def _check_unique(ids: np.ndarray, lines: np.ndarray, what: str, problems: _Problems) -> None:
    top = int(ids.max(initial=0))
    if top <= 8 * len(ids) + (1 << 20) and not (np.bincount(ids, minlength=1) > 1).any():
        return  # the common case, in linear time
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    repeat = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1]) + 1
    if len(repeat):
        first_of = np.searchsorted(sorted_ids, sorted_ids[repeat])
        problems.add(
            lines[order[repeat]],
            lambda i: f"duplicate {what} {sorted_ids[repeat[i]]} (first on line {lines[order[first_of[i]]]})",
        )


@dataclasses.dataclass
class Submission:
    """A parsed submission.

    Attributes:
        path: The file.
        format: Its format (given or guessed), or None when neither could tell and ``k`` was given.
        k: The k to report besides top-1.
        ids: ``[n]`` image ids.
        labels: ``[n, L]`` labels, most confident first, padded with -1.
        lines: ``[n]`` 1-based line number of each row.
        header: The header as read (byte order mark, line end and CSV quotes removed, as for every field).
        header_line: Its 1-based line number.
    """

    path: Path
    format: SubmissionFormat | None
    k: int
    ids: np.ndarray
    labels: np.ndarray
    lines: np.ndarray
    header: str
    header_line: int

    @property
    def official_k(self) -> int:
        """The k of the format's official metric (``k`` when the format is unknown)."""
        return self.format.official_k if self.format else self.k


def _guess_format(header_exact: str, counts: np.ndarray) -> SubmissionFormat | None:
    if header_exact == "Id,Predicted":
        return SubmissionFormat.INAT2021
    if not len(counts):
        return None
    frequency = np.bincount(counts)
    most = int(np.flatnonzero(frequency == frequency.max())[-1])  # ties: the larger count
    return {5: SubmissionFormat.INAT2017, 3: SubmissionFormat.INAT2018, 1: SubmissionFormat.INAT2019}.get(most)


def read_submission(
    path: str | os.PathLike,
    *,
    format: SubmissionFormat | None = None,
    k: int | None = None,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> Submission:
    """Read and check a submission CSV (untrusted input).

    Args:
        path: The CSV.
        format: Force the format; guessed from the header and the number of labels when None.
        k: The k to report besides top-1; the format's default when None.
        max_bytes: Size limit (:data:`DEFAULT_MAX_BYTES` when None).
        max_rows: The number of solution rows, when known: more rows, or more than :data:`MAX_ROW_BYTES` bytes per
            row, are refused before any parsing (bounding the work a hostile file can cause).

    Returns:
        The submission.

    Raises:
        ValueError: Listing every problem (up to :data:`MAX_REPORTED`) with the file and line.
    """
    path = Path(path)
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    text = _submission_text(path, max_bytes=max_bytes, max_rows=max_rows)
    problems = _Problems(path)
    grid = _grid(text, 2, problems)
    ids, ok = _int_field(grid, 0, "id", problems)
    tokens = _label_tokens(grid, problems)
    ok &= tokens.ok
    format, k = _submission_format(path, text.header.strip(), tokens, format=format, k=k, problems=problems)
    need = max(k, format.official_k if format else 1)
    few = np.flatnonzero(tokens.ok & (tokens.counts < need))
    ok[few] = False
    problems.add(grid.text.lines[few], lambda i: f"{tokens.counts[few[i]]} label(s); expected at least {need}")
    labels = _label_matrix(grid, tokens, ok, problems)
    _check_unique(ids[ok], grid.text.lines[ok], "id", problems)
    problems.raise_if_any()
    return Submission(
        path=path, format=format, k=k, ids=ids, labels=labels, lines=grid.text.lines,
        header=text.header.strip(), header_line=text.header_line,
    )  # fmt: skip


def _submission_text(path: Path, *, max_bytes: int | None, max_rows: int | None) -> _Text:
    """The file's lines, once its size, header, row count and line lengths pass (nothing parsed yet).

    The size limit is ``max_bytes`` when given (``--max-size-mb``); left at its default, a submission to a
    solution of ``max_rows`` rows may hold at most 1,024 + ``max_rows`` × :data:`MAX_ROW_BYTES` bytes (and never
    more than :data:`DEFAULT_MAX_BYTES`), which bounds the work a hostile file can cause.
    """
    bound = None
    if max_bytes is None and max_rows is not None:
        max_bytes = min(DEFAULT_MAX_BYTES, 1024 + max_rows * MAX_ROW_BYTES)
        bound = (
            f"the bound for a solution of {max_rows:,} rows (1,024 + {MAX_ROW_BYTES} bytes per row); "
            "--max-size-mb sets the limit instead"
        )
    text = _read_text(path, max_bytes, bound=bound)
    header = text.header.strip()
    if header.lower().replace(" ", "") != "id,predicted":
        raise ValueError(
            f"{path}: line {text.header_line}: header {_show(header.encode())}; expected 'id,predicted' "
            "(iNat2017-2019) or 'Id,Predicted' (iNat2021)"
        )
    if not len(text.lines):
        raise ValueError(f"{path}: no rows after the header")
    if max_rows is not None and len(text.lines) > max_rows:
        raise ValueError(
            f"{path}: line {text.lines[max_rows]}: more rows ({len(text.lines):,}) than the solution has images "
            f"({max_rows:,})"
        )
    problems = _Problems(path)
    long = np.flatnonzero(text.ends - text.starts > MAX_LINE_BYTES)
    problems.add(
        text.lines[long],
        lambda i: f"{text.ends[long[i]] - text.starts[long[i]]:,} bytes long; at most {MAX_LINE_BYTES} expected",
    )
    problems.raise_if_any()
    return text


@dataclasses.dataclass(frozen=True)
class _LabelTokens:
    """The label tokens of every row: ``ok`` rows have only sound labels; ``counts`` labels per row."""

    ok: np.ndarray
    counts: np.ndarray
    sel: np.ndarray  #: the grid's tokens in the label field
    row: np.ndarray  #: each such token's row


def _label_tokens(grid: _Grid, problems: _Problems) -> _LabelTokens:
    """Check every row's labels: integers, of at most :data:`MAX_DIGITS` digits, at most :data:`MAX_LABELS`."""
    rows = len(grid.ok)
    ok_labels = grid.ok.copy()
    stray_row, stray_field, stray_pos = grid.stray_bytes()
    bad = np.flatnonzero(stray_field == 1)
    bad_rows, first_bad = np.unique(stray_row[bad], return_index=True)
    bad_rows, first_bad = bad_rows[grid.ok[bad_rows]], bad[first_bad[grid.ok[bad_rows]]]
    ok_labels[bad_rows] = False

    def describe_bad(i: int) -> str:
        row, pos = bad_rows[i], int(stray_pos[first_bad[i]])
        start, end = int(grid.field_start[row, 1]), int(grid.field_end[row, 1])
        left = max(grid.text.data.rfind(b" ", max(start, pos - 64), pos) + 1, start, pos - 64)
        right = grid.text.data.find(b" ", pos, min(end, pos + 64))
        return _describe_int(grid.text.data[left : min(end, pos + 64) if right < 0 else right], "label")

    problems.add(grid.text.lines[bad_rows], describe_bad)
    sel = np.flatnonzero(grid.tok_field == 1)
    huge = sel[grid.tok_len[sel] > MAX_DIGITS]
    huge_rows, huge_first = np.unique(grid.tok_row[huge], return_index=True)
    keep = ok_labels[huge_rows]
    huge_rows, huge_first = huge_rows[keep], huge[huge_first[keep]]
    ok_labels[huge_rows] = False
    problems.add(
        grid.text.lines[huge_rows],
        lambda i: _describe_int(
            grid.text.data[grid.tok_start[huge_first[i]] : grid.tok_start[huge_first[i]] + 64].split()[0], "label"
        ),
    )
    counts = np.bincount(grid.tok_row[sel], minlength=rows)[:rows]
    many = np.flatnonzero(ok_labels & (counts > MAX_LABELS))
    ok_labels[many] = False
    problems.add(grid.text.lines[many], lambda i: f"{counts[many[i]]} labels; at most {MAX_LABELS} are allowed")
    return _LabelTokens(ok=ok_labels, counts=counts, sel=sel, row=grid.tok_row[sel])


def _submission_format(
    path: Path, header: str, tokens: _LabelTokens, *, format: SubmissionFormat | None, k: int | None,
    problems: _Problems,
) -> tuple[SubmissionFormat | None, int]:  # fmt: skip
    """The format (given, or guessed from the header and the labels per row) and the k to report."""
    if format is None:
        format = _guess_format(header, tokens.counts[tokens.ok])
        if format is None and k is None:
            problems.raise_if_any()  # the rows' own problems first
            common = int(np.bincount(tokens.counts[tokens.ok]).argmax()) if tokens.ok.any() else 0
            raise ValueError(
                f"{path}: cannot tell the competition year from {common} label(s) per row; pass --format or --k"
            )
        _logger.debug("%s: format %s", path, format.value if format else "unknown")
    return format, k if k is not None else format.default_k


def _label_matrix(grid: _Grid, tokens: _LabelTokens, ok: np.ndarray, problems: _Problems) -> np.ndarray:
    """``[rows, width]`` labels (-1 padded) of the sound rows; a row repeating a label is refused."""
    counts, sel, tok_row = tokens.counts, tokens.sel, tokens.row
    width = int(counts[ok].max()) if ok.any() else 1
    labels = np.full((len(ok), width), -1, dtype=np.int64)
    column = np.arange(len(sel)) - np.concatenate(([0], np.cumsum(counts)[:-1]))[tok_row]
    use = ok[tok_row] & (column < width)
    labels[tok_row[use], column[use]] = grid.tok_value[sel[use]]
    ordered = np.sort(labels, axis=1)
    repeated = np.flatnonzero(ok & ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1))
    ok[repeated] = False

    def describe_repeat(i: int) -> str:
        row = ordered[repeated[i]]
        value = row[1:][(row[1:] == row[:-1]) & (row[1:] >= 0)][0]
        return f"label {value} repeated in {_show(grid.field_bytes(repeated[i], 1))}"

    problems.add(grid.text.lines[repeated], describe_repeat)
    return labels


@dataclasses.dataclass
class Solution:
    """A parsed solution.

    Attributes:
        path: The file.
        ids: ``[n]`` image ids.
        expected: ``[n]`` expected labels.
        public: ``[n]`` True for Public rows, False for Private ones.
    """

    path: Path
    ids: np.ndarray
    expected: np.ndarray
    public: np.ndarray


def read_solution(path: str | os.PathLike, *, max_bytes: int | None = None) -> Solution:
    """Read and check a solution CSV (columns ``id``, ``expected``, ``usage`` in any order and case).

    Args:
        path: The CSV.
        max_bytes: Size limit (:data:`DEFAULT_MAX_BYTES` when None).

    Returns:
        The solution.

    Raises:
        ValueError: Listing the problems with the file and line.
    """
    path = Path(path)
    text = _read_text(path, max_bytes)
    problems = _Problems(path)
    columns = [c.strip().lower() for c in text.header.split(",")]
    missing = [c for c in ("id", "expected", "usage") if c not in columns]
    if missing or len(set(columns)) != len(columns):
        raise ValueError(
            f"{path}: line {text.header_line}: header {_show(text.header.encode())}; expected the columns id, "
            "expected, usage"
        )
    if not len(text.lines):
        raise ValueError(f"{path}: no rows after the header")
    grid = _grid(text, len(columns), problems)
    ids, ok_id = _int_field(grid, columns.index("id"), "id", problems)
    expected, ok_exp = _int_field(grid, columns.index("expected"), "expected label", problems)
    where = columns.index("usage")
    start, length = grid.field_start[:, where], grid.field_end[:, where] - grid.field_start[:, where]
    word = np.zeros((len(start), 7), dtype=np.uint8)
    for c in range(7):
        has = np.flatnonzero(grid.ok & (length > c))
        word[has, c] = text.arr[start[has] + c] | 0x20  # lower case
    public = (length == 6) & (word == np.frombuffer(b"public\0", dtype=np.uint8)).all(axis=1)
    private = (length == 7) & (word == np.frombuffer(b"private", dtype=np.uint8)).all(axis=1)
    bad_usage = np.flatnonzero(grid.ok & ~public & ~private)
    problems.add(
        text.lines[bad_usage],
        lambda i: f"usage {_show(grid.field_bytes(bad_usage[i], where))}; expected Public or Private",
    )
    ok = ok_id & ok_exp
    _check_unique(ids[ok], text.lines[ok], "id", problems)
    problems.raise_if_any()
    return Solution(path=path, ids=ids, expected=expected, public=public)


# --------------------------------------------------------------------------------------------------------------------
# Scoring files


def align(submission: Submission, solution: Solution) -> np.ndarray:
    """The submission's labels in the solution's row order.

    Raises:
        ValueError: When the submission has ids the solution lacks, or lacks some of the solution's ids.
    """
    problems = _Problems(submission.path)
    unknown = np.flatnonzero(index_of(solution.ids, submission.ids) < 0)
    problems.add(submission.lines[unknown], lambda i: f"unknown id {submission.ids[unknown[i]]} (not in the solution)")
    where = index_of(submission.ids, solution.ids)
    found = where >= 0
    missing = solution.ids[~found]
    if len(missing):
        shown = ", ".join(str(v) for v in np.sort(missing)[:10].tolist())
        problems.add_file(
            f"{len(missing)} id(s) of the solution missing from the submission (e.g. {shown}"
            f"{'' if len(missing) <= 10 else ', ...'})"
        )
    problems.raise_if_any()
    return submission.labels[where]


def score_submission(
    submission: Submission, solution: Solution, *, k: int | None = None, dataset: DatasetInfo | None = None
) -> ScoreResult:
    """Score a parsed submission against a parsed solution.

    Args:
        submission: The submission.
        solution: The solution.
        k: The k to report besides top-1 (the submission's when None).
        dataset: Categories and training counts for :func:`analyse`.

    Returns:
        The result.
    """
    labels = align(submission, solution)
    result = score_arrays(
        labels, solution.expected, solution.public, k=k or submission.k, official_k=submission.official_k
    )
    result.submission = str(submission.path)
    result.format = submission.format
    if dataset is not None:
        result.analysis = analyse(labels[:, 0], solution.expected, dataset.categories, dataset.train_counts)
    return result


def score_predictions(
    pred_path: str | os.PathLike,
    val_json: str | os.PathLike,
    *,
    k: int = 3,
    chunk_rows: int | None = None,
    dataset: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Top-1 and top-k error (and log loss) of a prediction file against a labelled JSON, streaming.

    Every prediction row must have a label; val images missing from the predictions are an error too. A label
    outside the model's categories counts as a mistake. With ``dataset`` (a built release folder) the result
    also holds the analyses of :func:`analyse` (per supercategory, by training count,
    confused pairs, mistakes within genus and family), as ``inatcomp score --dataset`` gives for submissions.

    Returns:
        ``{"predictions", "labels", "images", "top1_error", "top<k>_error", "log_loss", "outside_head",
        "failed_images"}`` and, with ``dataset``, ``"analysis"``.

    Raises:
        ValueError: Unreadable files or ids that do not match.
    """
    from inatcomp.formats.predictions import expected_columns, open_predictions, top_k_columns

    preds = open_predictions(pred_path)
    truth = expected_columns(preds, val_json, source=pred_path)
    expected = truth.columns
    hits1 = hitsk = 0
    nll = 0.0
    top1 = np.empty(preds.n_images, dtype=np.int64)
    for start, chunk in preds.iter_chunks(chunk_rows):
        want = expected[start : start + len(chunk)]
        ranked = top_k_columns(chunk, max(k, 1))
        top1[start : start + len(chunk)] = ranked[:, 0]
        hits1 += int(top_k_hits(ranked, want, 1).sum())
        hitsk += int(top_k_hits(ranked, want, k).sum())
        p = np.where(want >= 0, chunk[np.arange(len(chunk)), np.maximum(want, 0)].astype(np.float64), 0.0)
        nll += float(-np.log(np.maximum(p, 1e-7)).sum())
    n = preds.n_images
    analysis = {}
    if dataset is not None:
        info = load_dataset_info(dataset)
        analysis["analysis"] = analyse(preds.category_ids[top1], truth.categories, info.categories, info.train_counts)
    return {
        "predictions": str(pred_path),
        "labels": str(val_json),
        "images": n,
        "top1_error": 1 - hits1 / n,
        f"top{k}_error": 1 - hitsk / n,
        "log_loss": nll / n,
        "outside_head": truth.outside_head,
        "failed_images": int(preds.header.get("failed_images", 0)),
        **analysis,
    }


def score_file(
    submission: str | os.PathLike,
    solution: str | os.PathLike | Solution,
    *,
    format: SubmissionFormat | None = None,
    k: int | None = None,
    dataset: str | os.PathLike | DatasetInfo | None = None,
    max_bytes: int | None = None,
) -> ScoreResult:
    """Read and score a submission CSV.

    Args:
        submission: The submission CSV.
        solution: The solution CSV, or a solution already read.
        format: Force the submission format (guessed when None).
        k: The k to report besides top-1 (the format's default when None).
        dataset: A dataset folder (or its info) for the analyses.
        max_bytes: Size limit of each file.

    Returns:
        The result.

    Raises:
        ValueError: On any problem of the files, naming the file and line.
    """
    sol = solution if isinstance(solution, Solution) else read_solution(solution, max_bytes=max_bytes)
    sub = read_submission(submission, format=format, k=k, max_bytes=max_bytes, max_rows=len(sol.ids))
    info = load_dataset_info(dataset) if isinstance(dataset, str | os.PathLike) else dataset
    return score_submission(sub, sol, k=k, dataset=info)
