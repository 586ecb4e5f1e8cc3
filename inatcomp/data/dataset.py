"""The competition dataset (2017, 2018, 2021 JSON) and its loader.

:class:`CompetitionDataset` reads a COCO-style competition file (``train2018.json``, ``val.json``, a test
file without ``annotations``) and holds what a loader worker needs as NumPy arrays: the file names as one
UTF-8 byte buffer with offsets, the labels, ids and sizes as ``int64``/``int32`` arrays. Workers then share
those pages with the main process instead of touching (and so copying) millions of Python objects.

Labels are class indices 0..C-1 in *head order*: the sorted category ids, or the order given by
``category_ids`` (to reuse a model head trained on another release; categories missing from it get the
label -1 with a warning).

Images are decoded at reduced scale when the transform allows it (see :mod:`inatcomp.data.transforms`):
the size is read from the JPEG header, the transform plans its crop and the smallest decode size, and
PIL's ``draft`` makes libjpeg decode at 1/2, 1/4 or 1/8 scale. A missing or corrupt image is logged,
counted in the sample's ``skipped`` field and replaced by another image of the same class (bounded
retries; a grey image when none works or the image has no label): never fatal.

Each item is a :class:`Sample` named tuple ``(image, label, index, skipped, failed)``; the default collate
keeps the named tuple, so a batch has ``batch.image``, ``batch.label``, ``batch.index``, ``batch.skipped`` and
``batch.failed``: ``int(batch.skipped.sum())`` counts the failed reads seen in the workers from the main
process, and the values of ``batch.failed`` ≥ 0 are the dataset indices of the images that failed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import cv2
import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from inatcomp.data.sharedbatch import SharedBatchCollate, SharedBatchLoader
from inatcomp.data.transforms import FULL_CROP, DecodePlan
from inatcomp.fileio import read_json

__all__ = ["CompetitionDataset", "Sample", "Taxonomy", "create_loader", "rgb_array", "seed_worker"]

_logger = logging.getLogger(__name__)

#: Exceptions that mean "this image cannot be read" (PIL raises all of these for broken files).
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: Grey of the stand-in image when no replacement can be read.
_GREY = 124


#: Source rows decoded below a crop: one 4:2:0 MCU row (16) twice over, so that chroma upsampling at the
#: crop's last row sees the same neighbours as in a full decode (the crop's pixels stay bit-identical).
_ROW_MARGIN = 32
#: JPEG frame markers whose height field may be lowered: baseline and extended sequential Huffman (a
#: progressive or arithmetic-coded file is decoded whole).
_SEQUENTIAL_SOF = (0xC0, 0xC1)


def _dct_scale(width: int, height: int, size: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4 or 8) PIL's ``draft`` picks for a requested size (its own rule)."""
    scale = min(width // max(1, size[0]), height // max(1, size[1]))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def _frame_header(data: bytes) -> tuple[int, int] | None:
    """Offset and marker of a JPEG's frame header (SOF), or ``None`` when the markers before it do not parse."""
    pos, end = 2, len(data)
    while pos + 9 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return pos, marker
        if marker == 0xDA:
            return None  # scan data before any frame header
        pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return None


def _truncated_jpeg(data: bytes, rows: int) -> bytes | None:
    """The JPEG with its frame height lowered to ``rows``, or ``None`` when that is not safe.

    Huffman data is sequential, so rows above a crop must be decoded, but rows below it need not be:
    with a lower frame height libjpeg stops after ``rows`` and skips the rest of the scan to the end
    marker without decoding it (a third fewer rows decode about 1.7× faster). Only sequential frames
    are shortened.
    """
    frame = _frame_header(data)
    if frame is None or frame[1] not in _SEQUENTIAL_SOF:
        return None
    pos = frame[0]
    if rows >= (data[pos + 5] << 8 | data[pos + 6]):
        return None
    return b"".join((data[: pos + 5], rows.to_bytes(2, "big"), data[pos + 7 :]))


class PlannedTransform(Protocol):
    """A transform that can plan its decode (the presets of :mod:`inatcomp.data.transforms`)."""

    def plan(self, width: int, height: int) -> DecodePlan: ...

    def __call__(self, image: np.ndarray, plan: DecodePlan | None = None) -> Any: ...


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, or ``None`` when ``data`` is not a JPEG with one."""
    frame = _frame_header(data) if data[:3] == b"\xff\xd8\xff" else None
    if frame is None:
        return None
    pos = frame[0]
    height, width = data[pos + 5] << 8 | data[pos + 6], data[pos + 7] << 8 | data[pos + 8]
    return (width, height) if width and height else None


def rgb_array(im: Image.Image, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A loaded image, or its ``box`` (x0, y0, x1, y1), as a contiguous RGB uint8 (H, W, 3) array.

    Pillow keeps RGB as 4 bytes a pixel and exports that memory without a copy through the Arrow C data
    interface (Pillow ≥ 11.2, images in one block); one ``cv2.cvtColor`` then crops and drops the padding
    byte in a single pass, where ``np.asarray(im.crop(box))`` copies three times (crop, pack, join).
    """
    if im.mode != "RGB":
        # Crop first: only the crop's pixels are converted.
        im, box = (im.crop(box) if box is not None else im).convert("RGB"), None
    try:
        pixels = pa.array(im).values.to_numpy(zero_copy_only=True).reshape(im.height, im.width, 4)
    except (AttributeError, TypeError, ValueError, pa.ArrowException):
        # No Arrow export (older Pillow), or an image in several blocks: PIL's own copy.
        return np.asarray(im.crop(box) if box is not None else im)
    if box is not None:
        pixels = pixels[box[1] : box[3], box[0] : box[2]]
    return cv2.cvtColor(pixels, cv2.COLOR_RGBA2RGB)


def _decode_whole(
    data: bytes, planner: PlannedTransform | None, plan: DecodePlan | None = None
) -> tuple[np.ndarray, DecodePlan | None]:
    """Decode at full size (no JPEG header to plan from, or no planning transform) and apply the plan's crop.

    Args:
        data: The file's bytes.
        planner: The transform that plans the decode, or ``None``.
        plan: A plan already made for this image; ``None`` asks ``planner`` for one.
    """
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        if planner is None:
            return rgb_array(im), None
        plan = plan if plan is not None else planner.plan(*im.size)
        if plan.crop is None or plan.crop == FULL_CROP:
            return rgb_array(im), plan
        return rgb_array(im, plan.crop.pixels(*im.size)), dataclasses.replace(plan, crop=FULL_CROP)


class Sample(NamedTuple):
    """One item of the dataset (and, collated, one batch).

    Attributes:
        image: The transformed image (or the RGB uint8 array without a transform).
        label: Class index in head order, -1 when unlabelled.
        index: Index of the image in the dataset (see ``dataset.image_ids`` for the JSON id).
        skipped: How many reads failed producing this sample (the image, then its replacements).
        failed: ``[max_retries + 1]`` the dataset indices of the images that failed to read, padded with -1: an
            epoch's distinct bad images are the distinct values over its batches.
    """

    image: Any
    label: int
    index: int
    skipped: int
    failed: np.ndarray


@dataclasses.dataclass(frozen=True)
class Taxonomy:
    """Genus and family of each class in head order, for taxonomy-aware losses.

    Attributes:
        genus: Genus name per class ("" when unknown).
        family: Family name per class ("" when unknown).
        genus_of: Genus group index per class; classes share it only if they share genus and family.
        family_of: Family group index per class; a class whose family is unknown forms a family with its genus.
    """

    genus: np.ndarray
    family: np.ndarray
    genus_of: np.ndarray
    family_of: np.ndarray


def _load_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: not a competition dataset file (no 'images')")
    return data


def _int_column(records: list[dict], key: str, default: int | None = None) -> np.ndarray:
    if default is None:
        return np.fromiter((r[key] for r in records), dtype=np.int64, count=len(records))
    return np.fromiter(
        (r.get(key) if r.get(key) is not None else default for r in records), dtype=np.int64, count=len(records)
    )


def _head_index(head: np.ndarray, category_ids: np.ndarray) -> np.ndarray:
    """Head index of each category id, -1 when the head does not have it."""
    if len(head) == 0:
        return np.full(len(category_ids), -1, dtype=np.int64)
    order = np.argsort(head, kind="stable")
    pos = np.clip(np.searchsorted(head[order], category_ids), 0, len(head) - 1)
    found = head[order][pos] == category_ids
    return np.where(found, order[pos], -1)


class CompetitionDataset(Dataset):
    """A competition JSON file and its images.

    Args:
        json_path: ``train2018.json``, ``val.json``, ``test2018.json`` … (2017, 2018, 2019 or 2021 flavour).
        image_root: Folder the ``file_name`` entries are relative to (the release folder); ``None`` means
            the JSON file's folder.
        transform: Called on the RGB uint8 image; a preset with ``plan`` enables reduced-scale decoding.
        category_ids: Head order to use instead of the sorted category ids of the file.
        max_retries: Replacement images tried for an unreadable one before a grey stand-in.
        seed: Seed of the replacement choice (loader workers reseed it).

    Raises:
        ValueError: The file is not a competition dataset file.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike | None = None,
        *,
        transform: PlannedTransform | Callable[[np.ndarray], Any] | None = None,
        category_ids: Sequence[int] | np.ndarray | None = None,
        max_retries: int = 10,
        seed: int = 0,
    ) -> None:
        json_path = Path(json_path)
        self.image_root = str(Path(image_root) if image_root is not None else json_path.parent)
        self.transform = transform
        self.max_retries = int(max_retries)
        self.skipped = 0  # failures seen in this process (the main one when num_workers == 0)
        self._rng = np.random.default_rng(seed)
        data = _load_json(json_path)

        images = data["images"]
        n = len(images)
        self.image_ids = _int_column(images, "id")
        self.widths = _int_column(images, "width", 0).astype(np.int32)
        self.heights = _int_column(images, "height", 0).astype(np.int32)
        encoded = [str(im["file_name"]).encode() for im in images]
        self._name_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._name_offsets[1:])
        self._name_buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

        records = {int(c["id"]): c for c in data.get("categories") or []}
        annotations = data.get("annotations")
        if category_ids is not None:
            head = np.asarray(category_ids, dtype=np.int64)
            if len(np.unique(head)) != len(head):
                raise ValueError("category_ids has duplicates")
        else:
            ids = set(records)
            if annotations:
                ids.update(int(a["category_id"]) for a in annotations)
            head = np.asarray(sorted(ids), dtype=np.int64)
        self.category_ids = head
        self.categories: list[dict] = [records.get(int(c), {"id": int(c)}) for c in head]

        self.labels = np.full(n, -1, dtype=np.int64)
        if annotations:
            ann_image = _int_column(annotations, "image_id")
            ann_label = _head_index(head, _int_column(annotations, "category_id"))
            image_index = _head_index(self.image_ids, ann_image)
            ok = image_index >= 0
            if not ok.all():
                _logger.warning("%s: %d annotations point at unknown images", json_path, int((~ok).sum()))
            self.labels[image_index[ok]] = ann_label[ok]
            missing = int((ann_label[ok] < 0).sum())
            if missing:
                _logger.warning("%s: %d annotations have categories outside the head: label -1", json_path, missing)
        # Images grouped by class, for same-class replacements.
        self._by_class = np.argsort(self.labels, kind="stable")
        self._class_start = np.searchsorted(self.labels[self._by_class], np.arange(len(head) + 1))
        _logger.info("%s: %d images, %d classes", json_path, n, len(head))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (the head size)."""
        return len(self.category_ids)

    def file_name(self, index: int) -> str:
        """The image's ``file_name`` as in the JSON."""
        start, end = self._name_offsets[index], self._name_offsets[index + 1]
        return self._name_buffer[start:end].tobytes().decode()

    def path(self, index: int) -> str:
        """The image's path on disk."""
        return os.path.join(self.image_root, self.file_name(index))

    def class_counts(self) -> np.ndarray:
        """Images per class in head order (unlabelled images not counted)."""
        return np.bincount(self.labels[self.labels >= 0], minlength=self.num_classes)

    def taxonomy(self) -> Taxonomy:
        """Genus and family of each class (2017 files have no ranks: the genus is the name's first word)."""
        genus, family, genus_key, family_key = [], [], [], []
        for i, record in enumerate(self.categories):
            g = str(record.get("genus") or "")
            if not g and record.get("name"):
                g = str(record["name"]).split()[0]
            f = str(record.get("family") or "")
            genus.append(g)
            family.append(f)
            gk = ("g", f, g) if g else ("class", i)
            genus_key.append(gk)
            family_key.append(("f", f) if f else gk)
        _, genus_of = np.unique(np.asarray([repr(k) for k in genus_key]), return_inverse=True)
        _, family_of = np.unique(np.asarray([repr(k) for k in family_key]), return_inverse=True)
        return Taxonomy(
            genus=np.asarray(genus, dtype=str),
            family=np.asarray(family, dtype=str),
            genus_of=genus_of.astype(np.int64),
            family_of=family_of.astype(np.int64),
        )

    def reseed(self, seed: int) -> None:
        """Reseed the replacement choice and the transform (called in each loader worker)."""
        self._rng = np.random.default_rng(seed)
        if hasattr(self.transform, "reseed"):
            self.transform.reseed(seed)

    def _read(self, index: int) -> tuple[np.ndarray, DecodePlan | None]:
        """Decode an image (at reduced scale, and only down to the crop, when the transform plans it) as RGB."""
        with open(self.path(index), "rb") as file:
            data = file.read()
        if not hasattr(self.transform, "plan"):
            return _decode_whole(data, None)
        size = _jpeg_size(data)
        if size is None:
            return _decode_whole(data, self.transform)
        # The size comes from the JPEG header, so PIL opens the file once, already shortened.
        width, height = size
        plan = self.transform.plan(width, height)
        scale = _dct_scale(width, height, plan.size)
        decoded = (-(-width // scale), -(-height // scale))
        box = plan.crop.pixels(*decoded) if plan.crop is not None and plan.crop != FULL_CROP else None
        rows = height if box is None else min(height, box[3] * scale + _ROW_MARGIN)
        shorter = _truncated_jpeg(data, rows) if rows < height else None
        with Image.open(io.BytesIO(shorter or data)) as im:
            if im.format != "JPEG" or im.width != width:
                return _decode_whole(data, self.transform, plan)  # e.g. an MPO file: PIL's general path
            # Asking for (width // scale, 1) makes PIL's own rule pick exactly ``scale``.
            im.draft("RGB", (width // scale, 1))
            im.load()
            if box is not None:
                plan = dataclasses.replace(plan, crop=FULL_CROP)
            return rgb_array(im, box), plan

    def _replacement(self, index: int) -> int | None:
        label = self.labels[index]
        if label < 0:
            return None
        start, end = self._class_start[label], self._class_start[label + 1]
        if end - start <= 1:
            return None
        return int(self._by_class[start + self._rng.integers(end - start)])

    def __getitem__(self, index: int) -> Sample:
        label = int(self.labels[index])
        skipped = 0
        failed = np.full(self.max_retries + 1, -1, dtype=np.int64)
        current: int | None = index
        while current is not None:
            try:
                image, plan = self._read(current)
                break
            except _READ_ERRORS as error:
                failed[skipped] = current
                skipped += 1
                self.skipped += 1
                _logger.warning("unreadable image %s (%s): replaced", self.path(current), error)
                current = self._replacement(index) if skipped <= self.max_retries else None
        else:
            h, w = int(self.heights[index]) or 32, int(self.widths[index]) or 32
            image = np.full((h, w, 3), _GREY, dtype=np.uint8)
            plan = self.transform.plan(w, h) if hasattr(self.transform, "plan") else None
        if self.transform is None:
            return Sample(image, label, index, skipped, failed)
        out = self.transform(image, plan) if plan is not None else self.transform(image)
        return Sample(out, label, index, skipped, failed)


def seed_worker(worker_id: int) -> None:
    """Seed a loader worker: NumPy, ``random``, the dataset's and its transform's random state.

    The seed is torch's per-worker seed (the loader's base seed + worker id), so it differs between
    workers and, with a seeded loader generator, is the same from run to run.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    info = get_worker_info()
    dataset = info.dataset if info is not None else None
    if hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    _logger.debug("worker %d seeded with %d", worker_id, seed)


#: torch's DataLoader prefetch factor when none is given.
_DEFAULT_PREFETCH = 2
#: Batches alive outside the workers while the loader asks a worker for another (see :func:`create_loader`).
_HELD_BATCHES = 3


def create_loader(
    *,
    dataset: Dataset,
    batch_size: int,
    sampler: Sampler[int] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    persistent_workers: bool = False,
    seed: int = 0,
    prefetch_factor: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    reuse_batch_memory: bool = True,
) -> DataLoader:
    """Build a loader whose workers are seeded deterministically.

    Args:
        dataset: Usually a :class:`CompetitionDataset`.
        batch_size: Images per batch.
        sampler: Index order (see :func:`inatcomp.data.create_sampler`); ``None`` reads in dataset order.
        num_workers: Loader processes (0: load in this process).
        pin_memory: Pin batches for faster host-to-GPU copies.
        drop_last: Drop the last, incomplete batch.
        persistent_workers: Keep the workers between epochs (only with workers).
        seed: Seed of the workers' random states (and of this process's when ``num_workers`` is 0).
        prefetch_factor: Batches prefetched per worker (torch's default when ``None``).
        collate_fn: How samples become a batch (torch's default when ``None``).
        reuse_batch_memory: With workers, hand batches over in shared memory each worker reuses
            (:class:`~inatcomp.data.sharedbatch.SharedBatchCollate`); ``False``: torch's fresh block per batch.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    if num_workers == 0 and hasattr(dataset, "reseed"):
        dataset.reseed(seed)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
        if reuse_batch_memory:
            # A slot per batch in flight (the prefetch) and per batch alive outside the workers when the loader
            # asks a worker for another: the caller's batch in use, the feed's one ahead and the one being handed
            # out. They are consecutive batches, from different workers when there are 3 or more.
            held = -(-_HELD_BATCHES // num_workers)
            slots = (prefetch_factor or _DEFAULT_PREFETCH) + held
            collate_fn = SharedBatchCollate(collate_fn, workers=num_workers, slots=slots)
    return SharedBatchLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=generator,
        collate_fn=collate_fn,
        **kwargs,
    )
