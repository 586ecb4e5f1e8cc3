"""The release images: each source photo resized into the release layout, failures skipped and counted.

A missing or corrupt source image is skipped, logged and counted, never fatal; a class whose val or train
quota the skipped images broke leaves the release with its images.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image, UnidentifiedImageError

from inatcomp.build.audit import _Audit
from inatcomp.build.layout import _file_names
from inatcomp.build.rules import BuildRules, Split
from inatcomp.build.selection import _Selection

_logger = logging.getLogger(__name__)

_SOURCE_SIZES = ("original", "large", "medium", "small")


def _write_images(
    selection: _Selection,
    *,
    photo_dir: Path,
    size: str | None = None,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    workers: int | None,
    audit: _Audit,
) -> _Selection:
    """Resize the selected images into the release layout (``workers`` processes).

    Args:
        photo_dir: The source photos, as ``{photo_id}/{size}.{extension}`` (an export's ``photos/``, or a cache).
        size: The source size to read; None reads the largest there is (a local export's photos).

    Returns:
        The selection without the images that failed and the classes they broke, its file names an Arrow array.
    """
    extension = np.asarray(selection.extension.to_numpy(zero_copy_only=False))
    file_names = selection.file_names.to_pylist()
    jobs = [
        (_source_path(photo_dir, int(pid), ext, size), str(out / fname), int(w), int(h))
        for pid, ext, fname, w, h in zip(selection.photo_id, extension, file_names, selection.width, selection.height)
    ]
    for folder in sorted({os.path.dirname(j[1]) for j in jobs}):
        os.makedirs(folder, exist_ok=True)
    failures = np.array([bool(r) for r in _resize_all(jobs, workers)], dtype=bool)
    if failures.any():
        selection, file_names = _drop_failed(
            selection, jobs, failures, file_names, out=out, rules=rules, names=names, audit=audit
        )
    return dataclasses.replace(selection, extension=None, file_names=pa.array(file_names, pa.string()))


def _drop_failed(
    selection: _Selection,
    jobs: list[tuple[str, str, int, int]],
    failures: np.ndarray,
    file_names: list[str],
    *,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    audit: _Audit,
) -> tuple[_Selection, list[str]]:
    """Drop the images that failed, and with its images a class whose val or train quota a failure broke.

    Returns:
        The selection left, and its file names (file names carry category ids in some layouts: when classes
        are dropped, the files of the renumbered ones are moved).
    """
    s = selection
    audit.add("missing or corrupt source image", photos=int(failures.sum()))
    for job, result in zip(jobs, failures):
        if result:
            _logger.warning("skipped %s (missing or corrupt)", job[0])
    ok = ~failures
    # A class whose val or train quota a failure broke is dropped with its images.
    val_count = np.bincount(s.category[ok & (s.split == Split.VAL)], minlength=len(s.cat_frame))
    train_count = np.bincount(s.category[ok & (s.split == Split.TRAIN)], minlength=len(s.cat_frame))
    broken = (train_count < rules.min_train) | (
        (val_count < rules.val_per_class) if rules.val_per_class else np.zeros(len(s.cat_frame), bool)
    )
    if broken.any():
        audit.add("quota broken by corrupt images", classes=int(broken.sum()))
    ok &= ~broken[s.category]
    for job, good in zip(jobs, ok):
        if not good and os.path.exists(job[1]):
            os.remove(job[1])
    remap = np.cumsum(~broken) - 1
    left = dataclasses.replace(
        s,
        cat_frame=s.cat_frame[~broken].reset_index(drop=True),
        split=s.split[ok],
        category=remap[s.category[ok]],
        photo_id=s.photo_id[ok],
        width=s.width[ok],
        height=s.height[ok],
        columns=s.columns[ok],
        extension=None,
        file_names=None,
    )
    if not broken.any():
        return left, list(np.asarray(file_names, dtype=object)[ok])
    new_names = _file_names(rules, names, left.cat_frame, left.split, left.category, left.photo_id).to_pylist()
    for old, new in zip(np.asarray(file_names)[ok], new_names):
        if old != new:
            os.makedirs(os.path.dirname(out / new), exist_ok=True)
            os.replace(out / old, out / new)
    return left, new_names


def _resize_one(args: tuple[str, str, int, int]) -> str:
    """Resize one source photo to (width, height) into a staging path; '' on success, else the error."""
    source, target, width, height = args
    if os.path.exists(target):  # an interrupted build resumes: keep a finished image of the right size
        try:
            with Image.open(target) as done:
                if done.size == (width, height):
                    return ""
        except (OSError, UnidentifiedImageError):
            pass
    try:
        with Image.open(source) as image:
            image.draft("RGB", (width, height))  # JPEG DCT scaling: decode at reduced size when possible
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    tmp = target + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, target)
    return ""


def _source_path(photo_dir: Path, photo_id: int, extension: str, size: str | None = None) -> str:
    """The source file of a photo: of ``size``, else the largest there is (``medium`` when none, to fail on)."""
    if size is not None:
        return str(photo_dir / str(photo_id) / f"{size}.{extension}")
    for candidate in _SOURCE_SIZES:
        path = photo_dir / str(photo_id) / f"{candidate}.{extension}"
        if path.exists():
            return str(path)
    return str(photo_dir / str(photo_id) / f"medium.{extension}")


def _resize_all(jobs: list[tuple[str, str, int, int]], workers: int | None) -> list[str]:
    """:func:`_resize_one` of every job, in processes when there are many; progress logged every 5 s."""
    start = time.perf_counter()
    results: list[str] = []
    workers = workers or os.cpu_count() or 1
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 64 else None
    iterator = pool.imap(_resize_one, jobs, chunksize=64) if pool else map(_resize_one, jobs)
    last = start
    try:
        for i, result in enumerate(iterator, 1):
            results.append(result)
            now = time.perf_counter()
            if now - last > 5 or i == len(jobs):
                last = now
                _logger.info("images %d/%d (%.0f/s)", i, len(jobs), i / max(now - start, 1e-9))
    finally:
        if pool:
            pool.close()
            pool.join()
    return results
