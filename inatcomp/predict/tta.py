"""Test-time augmentation: the views of an image, cut from one decode, and their average.

A :class:`View` is one crop of an image: the image resized so its shorter side is ``scale × crop_size``, a box
``(x, y, w, h)`` in coordinates relative to the image cut from it and resized to ``crop_size``, optionally mirrored.
:func:`view_boxes` gives the views of each :class:`TTAMode` for an image size (pure geometry); :func:`load_views`
reads custom views from a file. Each image is decoded once, at the smallest libjpeg DCT scale that still gives every
view at least ``crop_size`` source pixels (:func:`decode_factor`), and all its views are cut from that one decode;
the views' probabilities (or logits) are averaged per image (:class:`AverageMode`). An unreadable image gets no
views, hence a uniform row, and is logged; it never stops the run.

The loop that sends the views through the model is :mod:`inatcomp.predict.engine`.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from PIL import Image

from inatcomp.data.dataset import rgb_array

__all__ = ["AverageMode", "TTAMode", "View", "decode_factor", "load_views", "view_boxes"]

_logger = logging.getLogger(__name__)

#: Shorter-side scales (relative to the crop) of :attr:`TTAMode.MULTISCALE`.
MULTISCALE_SCALES = (1.0, 1.25, 1.5)
#: Grid positions along an axis that a multiscale window does not cover whole.
MULTISCALE_GRID = 3


class TTAMode(enum.Enum):
    """Test-time augmentation presets (views per image in brackets)."""

    CENTER = "center"  #: the eval centre crop (1)
    FLIP = "flip"  #: the centre crop and its mirror image (2)
    FIVE_CROP = "five-crop"  #: four corners and the centre at the eval scale (5)
    TEN_CROP = "ten-crop"  #: five-crop and the mirrors (10)
    MULTISCALE = "multiscale"  #: shorter side at 1, 1.25, 1.5 × the crop, a 3-position grid per long axis (≤ 19-21)
    UPPER = "upper"  #: centre ± mirror, three windows along the top edge, the top square at scale 1 (6)
    CUSTOM = "custom"  #: views from a file (:func:`load_views`)


class AverageMode(enum.Enum):
    """How the views of an image are combined."""

    PROB = "prob"  #: mean of the views' softmax probabilities
    LOGIT = "logit"  #: softmax of the views' mean logits


# --------------------------------------------------------------------------------------------------------------------
# View geometry


@dataclasses.dataclass(frozen=True)
class View:
    """One test-time view of an image.

    Attributes:
        scale: The image is resized so that its shorter side is ``scale × crop_size``.
        box: ``(x, y, w, h)`` of the crop relative to the image (fractions of its width and height), or ``None``
            for a centred ``crop_size`` window (resolved per image by :meth:`resolve`).
        flip: Mirror the crop horizontally.
    """

    scale: float
    box: tuple[float, float, float, float] | None = None
    flip: bool = False

    def resolve(self, width: int, height: int, crop_size: int) -> View:
        """This view with its box filled in for an image of this size."""
        if self.box is not None:
            return self
        return View(self.scale, _window(width, height, crop_size, self.scale, 0.5, 0.5), self.flip)

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of an image of this size: x0, y0, x1, y1 (at least one pixel each way)."""
        if self.box is None:
            raise ValueError("resolve() the view before asking for its pixels")
        x, y, w, h = self.box
        x0, x1 = _span(x, w, width)
        y0, y1 = _span(y, h, height)
        return x0, y0, x1, y1


def _span(start: float, size: float, total: int) -> tuple[int, int]:
    """A relative interval in pixels of a side of ``total``: its length rounded first, then its start.

    Rounding both ends apart gave crops one pixel too wide or narrow (223 or 225 of 224), which then had to be
    resampled; the length is kept whole and the start moved to fit inside the side.
    """
    length = max(1, min(int(round(size * total)), total))
    first = min(max(int(round(start * total)), 0), total - length)
    return first, first + length


def _window(
    width: int, height: int, crop_size: int, scale: float, fx: float, fy: float
) -> tuple[float, float, float, float]:
    """A ``crop_size`` window of the image resized to a shorter side of ``scale × crop_size``, relative.

    ``fx`` and ``fy`` place it: 0 at the left/top edge, 0.5 centred, 1 at the right/bottom edge. A window larger
    than the resized image is clipped to it.
    """
    ratio = scale * crop_size / min(width, height)
    rw, rh = width * ratio, height * ratio
    cw, ch = min(float(crop_size), rw), min(float(crop_size), rh)
    return ((rw - cw) * fx / rw, (rh - ch) * fy / rh, cw / rw, ch / rh)


def _positions(width: int, height: int, crop_size: int, scale: float, axis: int) -> list[float]:
    ratio = scale * crop_size / min(width, height)
    extent = (width, height)[axis] * ratio
    if extent <= crop_size * (1 + 1e-6):
        return [0.5]
    return [i / (MULTISCALE_GRID - 1) for i in range(MULTISCALE_GRID)]


def view_boxes(
    mode: TTAMode | str,
    width: int,
    height: int,
    crop_size: int,
    *,
    crop_pct: float = 0.875,
    views: Sequence[View] | None = None,
) -> list[View]:
    """The views of a TTA mode for an image of this size, every box resolved (pure geometry).

    Args:
        mode: The preset.
        width: Image width in pixels (at any decode scale: boxes are relative).
        height: Image height in pixels.
        crop_size: Side of the square the model sees.
        crop_pct: Eval crop share: the eval scale resizes the shorter side to ``crop_size / crop_pct``.
        views: The views of :attr:`TTAMode.CUSTOM`.

    Returns:
        The views in a fixed order (five-crop: top-left, top-right, bottom-left, bottom-right, centre, as
        torchvision's ``FiveCrop``; ten-crop adds their mirrors in the same order).

    Raises:
        ValueError: Bad sizes, or custom mode without views.
    """
    mode = TTAMode(mode)
    if width < 1 or height < 1 or crop_size < 1:
        raise ValueError(f"image size and crop size must be positive, got {width}x{height} and {crop_size}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    eval_scale = 1.0 / crop_pct

    def at(scale: float, fx: float, fy: float, flip: bool = False) -> View:
        return View(scale, _window(width, height, crop_size, scale, fx, fy), flip)

    if mode is TTAMode.CENTER:
        return [at(eval_scale, 0.5, 0.5)]
    if mode is TTAMode.FLIP:
        return [at(eval_scale, 0.5, 0.5), at(eval_scale, 0.5, 0.5, True)]
    if mode in (TTAMode.FIVE_CROP, TTAMode.TEN_CROP):
        five = [(0, 0), (1, 0), (0, 1), (1, 1), (0.5, 0.5)]
        out = [at(eval_scale, fx, fy) for fx, fy in five]
        if mode is TTAMode.TEN_CROP:
            out += [at(eval_scale, fx, fy, True) for fx, fy in five]
        return out
    if mode is TTAMode.MULTISCALE:
        out = []
        for scale in MULTISCALE_SCALES:
            for fy in _positions(width, height, crop_size, scale, 1):
                for fx in _positions(width, height, crop_size, scale, 0):
                    out.append(at(scale, fx, fy))
        return out
    if mode is TTAMode.UPPER:
        return [
            at(eval_scale, 0.5, 0.5),
            at(eval_scale, 0.5, 0.5, True),
            at(eval_scale, 0.0, 0.0),
            at(eval_scale, 0.5, 0.0),
            at(eval_scale, 1.0, 0.0),
            at(1.0, 0.5, 0.0),
        ]
    if not views:
        raise ValueError("TTA mode custom needs views (--views FILE)")
    return [view.resolve(width, height, crop_size) for view in views]


def load_views(path: str | os.PathLike) -> list[View]:
    """Read custom views from a YAML or JSON file.

    The file holds a list (or ``{"views": [...]}``) of entries ``{scale: S, box: [x, y, w, h], flip: bool}``;
    ``box`` (relative to the image) may be left out for a centred crop at that scale, ``flip`` defaults to false.

    Raises:
        ValueError: Unreadable file or a bad entry (named by its index).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: cannot read views ({error})") from None
    if isinstance(data, dict):
        data = data.get("views")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of views (or {{views: [...]}})")
    views = []
    for i, entry in enumerate(data):
        where = f"{path}: views[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with scale, box, flip; got {entry!r}")
        unknown = set(entry) - {"scale", "box", "flip"}
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; expected scale, box, flip")
        scale = entry.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 < scale <= 16:
            raise ValueError(f"{where}: scale {scale!r}; expected a number in (0, 16]")
        flip = entry.get("flip", False)
        if not isinstance(flip, bool):
            raise ValueError(f"{where}: flip {flip!r}; expected true or false")
        box = entry.get("box")
        if box is not None:
            ok = isinstance(box, list) and len(box) == 4
            ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            if not ok or box[2] <= 0 or box[3] <= 0 or min(box[:2]) < 0:
                raise ValueError(f"{where}: box {box!r}; expected [x, y, w, h] with x, y ≥ 0 and w, h > 0")
            if box[0] + box[2] > 1 + 1e-6 or box[1] + box[3] > 1 + 1e-6:
                raise ValueError(f"{where}: box {box!r} reaches outside the image (x + w and y + h must be ≤ 1)")
            box = tuple(float(v) for v in box)
        views.append(View(float(scale), box, flip))
    return views


def decode_factor(views: Sequence[View], width: int, height: int, crop_size: int) -> float:
    """How much smaller than full size an image may be decoded so every view keeps ``crop_size`` source pixels."""
    factor = math.inf
    for view in views:
        x, y, w, h = view.box  # type: ignore[misc]
        factor = min(factor, w * width / crop_size, h * height / crop_size)
    return max(factor, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# Cutting the views of an image, and averaging them


class _ViewDataset:
    """Decode each image once and cut all its views: items are ``(uint8 [V, s, s, 3], index, failed)``."""

    def __init__(
        self,
        paths: list[str],
        *,
        mode: TTAMode,
        crop_size: int,
        crop_pct: float,
        interpolation: int,
        views: Sequence[View] | None,
    ) -> None:
        self.paths = paths
        self.mode = mode
        self.crop_size = crop_size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.views = list(views) if views else None

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        """Nothing random here (loader workers call it)."""
        del seed

    def opened(self, index: int) -> _ImageViews:
        """Image ``index`` opened: its size read, its views laid out; :meth:`_ImageViews.load` decodes it."""
        path, im = self.paths[index], None
        try:
            im = Image.open(path)
            width, height = im.size
            views = view_boxes(self.mode, width, height, self.crop_size, crop_pct=self.crop_pct, views=self.views)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            _logger.warning("unreadable image %s (%s): uniform prediction", path, error)
            if im is not None:
                im.close()
            return _ImageViews(path, [], index, self.crop_size, self.interpolation)
        return _ImageViews(path, views, index, self.crop_size, self.interpolation, source=im)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        """Image ``index``'s views, uint8 ``[V, s, s, 3]`` (none when unreadable), its index, whether it failed."""
        item = self.opened(index)
        item.load()
        out = np.empty((len(item.views), self.crop_size, self.crop_size, 3), dtype=np.uint8)
        item.cut(out)
        return out, index, int(item.image is None)

    def __getitems__(self, indices: list[int]) -> list[_ImageViews]:
        """A batch's images opened, left for :func:`_collate` to decode and cut one by one straight into the batch."""
        return [self.opened(index) for index in indices]


@dataclasses.dataclass
class _ImageViews:
    """An image for its views: opened (``source``), then decoded (``image``) by :meth:`load`, cut by :meth:`cut`.

    An unreadable image has no views and no ``image``.
    """

    path: str
    views: list[View]
    index: int
    crop_size: int
    interpolation: int
    source: Image.Image | None = None
    image: np.ndarray | None = None

    def load(self) -> None:
        """Decode the opened image, at the smallest DCT scale its views allow; a file that fails loses its views."""
        im, self.source = self.source, None
        if im is None:
            return
        try:
            with im:
                width, height = im.size
                if im.format == "JPEG":
                    factor = decode_factor(self.views, width, height, self.crop_size)
                    if factor >= 2:
                        im.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
                im.load()
                self.image = rgb_array(im)
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            _logger.warning("unreadable image %s (%s): uniform prediction", self.path, error)
            self.views = []

    def cut(self, out: np.ndarray) -> None:
        """Write the views into ``out`` (uint8 ``[V, s, s, 3]``), each resized, cropped and flipped."""
        if self.image is None:
            return
        s, image = self.crop_size, self.image
        height, width = image.shape[:2]
        scaled: dict[float, np.ndarray] = {}
        for v, view in enumerate(self.views):
            # One resize of the whole image per scale; the views of that scale are slices of it.
            if view.scale not in scaled:
                ratio = view.scale * s / min(width, height)
                size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
                flag = cv2.INTER_AREA if ratio < 0.5 else self.interpolation
                scaled[view.scale] = image if size == (width, height) else cv2.resize(image, size, interpolation=flag)
            resized = scaled[view.scale]
            x0, y0, x1, y1 = view.pixels(resized.shape[1], resized.shape[0])
            region = resized[y0:y1, x0:x1]
            if region.shape[:2] != (s, s):  # custom boxes, or windows clipped to a small image
                region = cv2.resize(region, (s, s), interpolation=self.interpolation)
            if view.flip:  # OpenCV mirrors several times faster than numpy copies a reversed view
                cv2.flip(region, 1, dst=out[v])
            else:
                out[v] = region


def _collate(
    items: list[_ImageViews] | list[tuple[np.ndarray, int, int]], *, empty: Callable[..., torch.Tensor] = torch.empty
) -> tuple[Any, Any, Any, Any]:
    """The views of a batch's images one after another, with each image's view count, index and whether it failed.

    Opened items (a loader's, through :meth:`_ViewDataset.__getitems__`) are decoded one by one, each image's
    views cut straight into ``empty``'s tensor while its pixels are still in cache (in a loader worker, the
    tensor is its shared slot: no copy afterwards); items of views already cut (``dataset[i]``) are concatenated
    into it.
    """
    if items and isinstance(items[0], _ImageViews):
        opened: list[_ImageViews] = items  # type: ignore[assignment]
        s = opened[0].crop_size
        views = empty((sum(len(item.views) for item in opened), s, s, 3), dtype=torch.uint8)
        out, start = views.numpy(), 0
        for item in opened:
            item.load()  # a file that fails here loses its views: the next image's move up
            item.cut(out[start : start + len(item.views)])
            start += len(item.views)
        # A file that failed at decode left rows unused: the batch keeps the filled ones (in a loader worker this
        # narrower tensor is not the one made in the slot, so that rare batch is copied or collated again).
        views = views[:start] if start < len(views) else views
        rows = [(len(item.views), item.index, int(item.image is None)) for item in opened]
    else:
        cut: list[tuple[np.ndarray, int, int]] = items  # type: ignore[assignment]
        views = empty((sum(len(item[0]) for item in cut), *cut[0][0].shape[1:]), dtype=torch.uint8)
        np.concatenate([item[0] for item in cut], out=views.numpy())
        rows = [(len(item[0]), item[1], item[2]) for item in cut]
    counts, index, failed = (torch.tensor([row[k] for row in rows], dtype=torch.int64) for k in range(3))
    return views, counts, index, failed


def _average(logits: Any, counts: Any, average: AverageMode) -> Any:
    """Per-image average of the views' logits as probabilities; images without views get a uniform row."""
    n, classes = len(counts), logits.shape[1]
    values = logits.float().softmax(dim=1) if average is AverageMode.PROB else logits.float()
    if n and int(counts.min()) == int(counts.max()) > 0:
        # Every image has the same number of views (all presets but multiscale): a reshape and one mean, not
        # the gather below (on a busy CPU each whole-batch op costs a synchronisation of the intra-op threads).
        mean = values.view(n, int(counts[0]), classes).mean(dim=1)
        return mean if average is AverageMode.PROB else mean.softmax(dim=1)
    out = torch.full((n, classes), 1.0 / classes, dtype=torch.float32)
    have = counts > 0
    if not bool(have.any()):
        return out
    owner = torch.repeat_interleave(torch.arange(n), counts)
    sums = torch.zeros((n, classes), dtype=torch.float32).index_add_(0, owner, values)
    mean = sums[have] / counts[have, None].float()
    out[have] = mean if average is AverageMode.PROB else mean.softmax(dim=1)
    return out
