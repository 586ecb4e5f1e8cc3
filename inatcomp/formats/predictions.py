"""Prediction files: the ``.pred`` folders that ``predict`` and ``ensemble`` write and every later stage reads.

A **prediction file** (see ``data_schema/predictions.md``) is a folder, by convention named ``NAME.pred``::

    header.json       format, shapes, dtypes, provenance (checkpoint, TTA, views), failed images
    image_ids.i8      int64 little-endian [n_images], the rows' image ids (the test JSON's order)
    category_ids.i8   int64 little-endian [n_classes], the columns' category ids (the model's head order)
    scores.f16        float16 little-endian [n_images, n_classes], row-major: probabilities (rows sum to 1)

The arrays are raw, so ``np.memmap`` maps them directly; everything here reads and writes them in row chunks
(:class:`PredictionWriter`, :meth:`Predictions.iter_chunks`), so a 149,394 × 8,142 iNat2018 matrix (2.4 GB) is
never held in memory. A folder is written under a temporary name and renamed into place when complete (the
header is written last), so a reader never sees half a file.

Besides the format, the helpers every consumer of a prediction file needs live here, once: :func:`index_of`
(ids to positions), :func:`load_labels` (a labelled JSON's image and category ids), :func:`expected_columns`
(each row's true column, refusing images without a label or labels without a prediction) and
:func:`top_k_columns`. This module imports no torch: ``ensemble``, ``submit``, ``score-pred`` and the geo prior's
reading side start at once.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "PREDICTION_FORMAT",
    "ExpectedColumns",
    "PredictionWriter",
    "Predictions",
    "ScoreKind",
    "expected_columns",
    "index_of",
    "load_labels",
    "open_predictions",
    "top_k_columns",
]

#: The ``format`` of a prediction folder's header.
PREDICTION_FORMAT = "inatcomp-predictions-1"
HEADER_FILE = "header.json"
IMAGE_IDS_FILE = "image_ids.i8"
CATEGORY_IDS_FILE = "category_ids.i8"
SCORES_FILE = "scores.f16"
#: Streaming functions read this many bytes of float32 scores per chunk by default.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024


class ScoreKind(enum.Enum):
    """What the scores of a prediction file are."""

    PROB = "prob"  #: probabilities (rows sum to 1)
    RANK = "rank"  #: softmax of mean ranks (a rank ensemble): rows sum to 1, only the order is meaningful


def _pread_into(fd: int, buffer: memoryview, offset: int) -> None:
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got <= 0:
            raise ValueError("prediction scores end early (truncated file?)")
        done += got


@dataclasses.dataclass
class Predictions:
    """An open prediction folder (see the module docstring); scores are read on demand.

    Attributes:
        path: The folder.
        header: The parsed ``header.json``.
        image_ids: ``[n_images]`` image ids (row order).
        category_ids: ``[n_classes]`` category ids (column order).
    """

    path: Path
    header: dict[str, Any]
    image_ids: np.ndarray
    category_ids: np.ndarray

    @property
    def n_images(self) -> int:
        """Number of rows."""
        return len(self.image_ids)

    @property
    def n_classes(self) -> int:
        """Number of columns."""
        return len(self.category_ids)

    @property
    def scores_path(self) -> Path:
        """The raw float16 scores file."""
        return self.path / SCORES_FILE

    def default_chunk_rows(self) -> int:
        """Rows per chunk that keep a float32 chunk near :data:`DEFAULT_CHUNK_BYTES`."""
        return max(1, DEFAULT_CHUNK_BYTES // (4 * max(self.n_classes, 1)))

    def memmap(self) -> np.memmap:
        """The scores as a read-only ``[n_images, n_classes]`` float16 memory map."""
        return np.memmap(self.scores_path, dtype="<f2", mode="r", shape=(self.n_images, self.n_classes))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a float16 array (read, not mapped: memory stays at the chunk's size)."""
        stop = min(stop, self.n_images)
        out = np.empty((max(stop - start, 0), self.n_classes), dtype="<f2")
        if out.size:
            fd = os.open(self.scores_path, os.O_RDONLY)
            try:
                _pread_into(fd, memoryview(out).cast("B"), start * self.n_classes * 2)
            finally:
                os.close(fd)
        return out

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """Arbitrary rows (in the order given) as a float16 array; contiguous runs are read at once."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        buffer = np.empty((len(rows), self.n_classes), dtype="<f2")
        if len(rows):
            breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
            starts, stops = np.r_[0, breaks], np.r_[breaks, len(rows)]
            row_bytes = self.n_classes * 2
            fd = os.open(self.scores_path, os.O_RDONLY)
            try:
                view = memoryview(buffer).cast("B")
                for a, b in zip(starts.tolist(), stops.tolist()):
                    _pread_into(fd, view[a * row_bytes : b * row_bytes], int(ordered[a]) * row_bytes)
            finally:
                os.close(fd)
        out = np.empty_like(buffer)
        out[order] = buffer
        return out

    def iter_chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float16 rows)`` chunks in row order."""
        step = chunk_rows or self.default_chunk_rows()
        for start in range(0, self.n_images, step):
            yield start, self.read_rows(start, start + step)


def _read_ids(path: Path, what: str) -> np.ndarray:
    data = np.fromfile(path, dtype="<i8")
    if len(np.unique(data)) != len(data):
        raise ValueError(f"{path}: repeated {what}")
    return data.astype(np.int64)


def open_predictions(path: str | os.PathLike) -> Predictions:
    """Open a prediction folder and check its header against its arrays.

    Raises:
        ValueError: Not a prediction folder, or sizes that do not match the header.
    """
    path = Path(path)
    header_path = path / HEADER_FILE
    if not header_path.is_file():
        raise ValueError(f"{path}: not a prediction folder (no {HEADER_FILE}; written by inatcomp predict/ensemble)")
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{header_path}: unreadable header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != PREDICTION_FORMAT:
        raise ValueError(f"{header_path}: format is not {PREDICTION_FORMAT!r}")
    try:
        image_ids = _read_ids(path / IMAGE_IDS_FILE, "image ids")
        category_ids = _read_ids(path / CATEGORY_IDS_FILE, "category ids")
        size = (path / SCORES_FILE).stat().st_size
    except OSError as error:
        raise ValueError(f"{path}: incomplete prediction folder ({error})") from None
    n, c = header.get("n_images"), header.get("n_classes")
    if (n, c) != (len(image_ids), len(category_ids)):
        raise ValueError(f"{path}: header says {n} × {c}, the id files hold {len(image_ids)} × {len(category_ids)}")
    if size != n * c * 2:
        raise ValueError(f"{path}: {SCORES_FILE} has {size:,} bytes; {n} × {c} float16 scores need {n * c * 2:,}")
    return Predictions(path, header, image_ids, category_ids)


def _is_prediction_folder(path: Path) -> bool:
    return path.is_dir() and (path / HEADER_FILE).is_file()


class PredictionWriter:
    """Write a prediction folder in row chunks; it appears under its name only when complete.

    Use as a context manager: rows are appended with :meth:`write` in order, :attr:`header` may be updated
    until the end, and leaving the block writes the header and renames the temporary folder into place (an
    exception instead removes it). An existing prediction folder at ``path`` is replaced; anything else there
    is refused.

    Args:
        path: The folder to write (``NAME.pred`` by convention).
        image_ids: The rows' image ids.
        category_ids: The columns' category ids.
        header: Extra header fields (provenance).
        score_kind: What the scores are.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_ids: np.ndarray | Sequence[int],
        category_ids: np.ndarray | Sequence[int],
        header: Mapping[str, Any] | None = None,
        score_kind: ScoreKind = ScoreKind.PROB,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not _is_prediction_folder(self.path):
            raise ValueError(f"{self.path}: exists and is not a prediction folder; not overwriting it")
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.category_ids = np.asarray(category_ids, dtype=np.int64)
        for name, ids in (("image", self.image_ids), ("category", self.category_ids)):
            if len(np.unique(ids)) != len(ids):
                raise ValueError(f"{self.path}: repeated {name} ids")
        self.header: dict[str, Any] = {
            "format": PREDICTION_FORMAT,
            "n_images": len(self.image_ids),
            "n_classes": len(self.category_ids),
            "score_kind": score_kind.value,
            "files": {
                "image_ids": [IMAGE_IDS_FILE, "<i8"],
                "category_ids": [CATEGORY_IDS_FILE, "<i8"],
                "scores": [SCORES_FILE, "<f2"],
            },
            "failed_images": 0,
            "failed_image_ids": [],
        }
        self.header.update(header or {})
        self.rows_written = 0
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        self.image_ids.astype("<i8").tofile(self._tmp / IMAGE_IDS_FILE)
        self.category_ids.astype("<i8").tofile(self._tmp / CATEGORY_IDS_FILE)
        self._scores = open(self._tmp / SCORES_FILE, "wb")  # noqa: SIM115 - closed in close()/abort()

    def write(self, scores: np.ndarray) -> None:
        """Append rows (any float dtype; stored as float16)."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != len(self.category_ids):
            raise ValueError(f"rows must be [n, {len(self.category_ids)}], got {scores.shape}")
        if self.rows_written + len(scores) > len(self.image_ids):
            raise ValueError(f"more rows than the {len(self.image_ids)} images")
        np.ascontiguousarray(scores, dtype="<f2").tofile(self._scores)
        self.rows_written += len(scores)

    def close(self) -> Path:
        """Check the row count, write the header and move the folder into place."""
        self._scores.close()
        if self.rows_written != len(self.image_ids):
            self.abort()
            raise ValueError(f"{self.path}: {self.rows_written} rows written for {len(self.image_ids)} images")
        (self._tmp / HEADER_FILE).write_text(json.dumps(self.header, indent=2) + "\n", encoding="utf-8")
        if self.path.exists():
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.path, old)
            os.replace(self._tmp, self.path)
            shutil.rmtree(old)
        else:
            os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary folder."""
        self._scores.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, kind: type | None, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------------------------------------------------
# Ids, labels and the top-k columns


def index_of(keys: np.ndarray | Sequence[int], queries: np.ndarray | Sequence[int]) -> np.ndarray:
    """The index of each query in ``keys`` (unique integers), -1 where absent.

    A dense lookup table when the keys are non-negative and compact (the usual case for image and category
    ids: linear time), a sorted search otherwise.
    """
    keys, queries = np.asarray(keys, dtype=np.int64), np.asarray(queries, dtype=np.int64)
    if not len(keys):
        return np.full(queries.shape, -1, dtype=np.int64)
    low, top = int(keys.min()), int(keys.max())
    if low >= 0 and top <= 8 * len(keys) + (1 << 20):
        table = np.full(top + 1, -1, dtype=np.int64)
        table[keys] = np.arange(len(keys))
        inside = (queries >= 0) & (queries <= top)
        return np.where(inside, table[np.where(inside, queries, 0)], -1)
    order = np.argsort(keys, kind="stable")
    where = np.minimum(np.searchsorted(keys[order], queries), len(keys) - 1)
    return np.where(keys[order][where] == queries, order[where], -1)


def load_labels(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Image ids (sorted) and their category ids from a labelled competition JSON (its annotations).

    Raises:
        ValueError: Unreadable file, no annotations, or an image with two different labels.
    """
    data = read_json(path)
    try:
        annotations = data["annotations"]
        image = np.fromiter((a["image_id"] for a in annotations), dtype=np.int64, count=len(annotations))
        category = np.fromiter((a["category_id"] for a in annotations), dtype=np.int64, count=len(annotations))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a labelled competition JSON ({type(error).__name__}: {error})") from None
    if not len(image):
        raise ValueError(f"{path}: no annotations")
    ids, first = np.unique(image, return_index=True)
    if len(ids) != len(image):
        pairs = np.unique(np.stack([image, category], axis=1), axis=0)
        if len(pairs) != len(ids):
            raise ValueError(f"{path}: some images have two different labels")
    return ids, category[first]


@dataclasses.dataclass(frozen=True)
class ExpectedColumns:
    """Each prediction row's true category, as :func:`expected_columns` finds it.

    Attributes:
        categories: ``[n_images]`` the rows' true category ids.
        columns: ``[n_images]`` their columns in the prediction file, -1 for a category outside the model's head
            (it counts as a mistake).
    """

    categories: np.ndarray
    columns: np.ndarray

    @property
    def outside_head(self) -> int:
        """Rows whose true category the model cannot predict."""
        return int((self.columns < 0).sum())


def expected_columns(
    preds: Predictions, labels: str | os.PathLike, *, partial: bool = False, source: str | os.PathLike | None = None
) -> ExpectedColumns:
    """The true column of every row of ``preds``, from a labelled competition JSON.

    Every prediction row must have a label, and (unless ``partial``) every labelled image a prediction row: a
    score over part of val is not val's score.

    Args:
        preds: The open prediction file.
        labels: The labelled JSON (val, minival, train).
        partial: Allow labelled images without a prediction row.
        source: The name to give the predictions in errors (default: their folder).

    Raises:
        ValueError: Naming both files and a few of the ids that do not match.
    """
    label_ids, label_cats = load_labels(labels)
    name = source or preds.path
    where = index_of(label_ids, preds.image_ids)
    if (where < 0).any():
        bad = preds.image_ids[where < 0]
        raise ValueError(f"{name}: {len(bad)} image id(s) without a label in {labels} (e.g. {bad[:5].tolist()})")
    if not partial and len(label_ids) != preds.n_images:
        missing = np.setdiff1d(label_ids, preds.image_ids)
        raise ValueError(
            f"{name}: {len(missing)} labelled image(s) of {labels} not predicted (e.g. {missing[:5].tolist()})"
        )
    categories = label_cats[where]
    return ExpectedColumns(categories=categories, columns=index_of(preds.category_ids, categories))


def top_k_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """``[n, min(k, C)]`` column indices of the highest scores, highest first (ties: lower column first)."""
    scores = np.asarray(scores, dtype=np.float32)
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(k), scores.shape).copy()
    values = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -values), axis=1)
    return np.take_along_axis(part, order, axis=1)
