"""Test-time augmentation and prediction: ``inatcomp predict``.

**Test-time augmentation**: a :class:`View` is one crop of an image: the image resized so its shorter side is
``scale × crop_size``, a box ``(x, y, w, h)`` in coordinates relative to the image cut from it and resized to
``crop_size``, optionally mirrored. :func:`view_boxes` gives the views of each :class:`TTAMode` for an image size
(pure geometry). :func:`predict` decodes each image once, at the smallest libjpeg DCT scale that still gives every
view at least ``crop_size`` source pixels, cuts all its views from that one decode, and sends the views of a
batch of images through the model together; the views' probabilities (or logits) are averaged. An unreadable
image gets a uniform row, is logged and counted in the header, and never stops the run.

The output is a prediction file (:mod:`inatcomp.formats.predictions`, ``data_schema/predictions.md``).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from queue import Full, Queue
from typing import Any, TypeVar

import numpy as np

from inatcomp.formats.predictions import PredictionWriter
from inatcomp.options import AmpMode, enum_choice, resolve_device

__all__ = [
    "PREDICT_DEFAULTS",
    "AverageMode",
    "PredictOptions",
    "TTAMode",
    "View",
    "center_crop_batches",
    "decode_factor",
    "load_model",
    "load_views",
    "predict",
    "view_boxes",
]

_T = TypeVar("_T")
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
    import yaml

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
# Predicting


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

    def _decode(self, path: str) -> tuple[np.ndarray, list[View]]:
        from PIL import Image

        from inatcomp.data.dataset import rgb_array

        with Image.open(path) as im:
            width, height = im.size
            views = view_boxes(self.mode, width, height, self.crop_size, crop_pct=self.crop_pct, views=self.views)
            if im.format == "JPEG":
                factor = decode_factor(views, width, height, self.crop_size)
                if factor >= 2:
                    im.draft("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
            im.load()
            return rgb_array(im), views

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        import cv2
        from PIL import Image

        s = self.crop_size
        try:
            image, views = self._decode(self.paths[index])
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            _logger.warning("unreadable image %s (%s): uniform prediction", self.paths[index], error)
            return np.zeros((0, s, s, 3), dtype=np.uint8), index, 1
        height, width = image.shape[:2]
        out = np.empty((len(views), s, s, 3), dtype=np.uint8)
        scaled: dict[float, np.ndarray] = {}
        for v, view in enumerate(views):
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
        return out, index, 0


def _collate(items: list[tuple[np.ndarray, int, int]]) -> tuple[Any, Any, Any, Any]:
    import torch

    views = torch.from_numpy(np.concatenate([item[0] for item in items]))
    counts = torch.tensor([len(item[0]) for item in items], dtype=torch.int64)
    index = torch.tensor([item[1] for item in items], dtype=torch.int64)
    failed = torch.tensor([item[2] for item in items], dtype=torch.int64)
    return views, counts, index, failed


def _average(logits: Any, counts: Any, average: AverageMode) -> Any:
    """Per-image average of the views' logits as probabilities; images without views get a uniform row."""
    import torch

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


class _InputBuffer:
    """Normalise batches of uint8 ``[N, s, s, 3]`` views into one reused ``[N, 3, s, s]`` tensor for the model.

    ``((x.float() - mean) / std)`` on a fresh channels-last batch costs several times what it should: three
    batch-sized tensors are allocated (160 views at 224 px: 96 MB each, page-faulted anew every batch), and the
    ``[1, 3, 1, 1]`` mean and std broadcast along the innermost, 3-long channel axis, which the element-wise
    kernels cannot vectorise. Here the views are converted into a kept buffer and normalised in place, in
    channels-last with the mean and std tiled along a whole image row (``[W × 3]``), a few dozen views at a time so
    that the float32 work stays in the CPU's cache: the same float32 operations, so the same numbers.

    With a ``dtype`` other than float32 (the autocast dtype), the float32 result is rounded into a buffer of
    that dtype. Autocast would round the float32 batch the same way at the model's first convolution, in a
    separate pass over the whole batch (about as slow as the old normalisation); here it is done in cache.

    Args:
        mean: ``[1, 3, 1, 1]`` channel means (on the 0-255 scale), on the model's device.
        std: ``[1, 3, 1, 1]`` channel standard deviations (0-255 scale).
        memory_format: The layout the model wants (``torch.channels_last`` or ``torch.contiguous_format``).
        dtype: The dtype handed to the model (``None``: float32).
        chunk_elements: Values normalised at a time on the CPU: 16 MB of float32, 27 views at 224 px, small
            enough to stay in cache, and few chunks per batch (on a busy machine every torch operation costs a
            synchronisation of the intra-op threads).
    """

    def __init__(
        self, mean: Any, std: Any, memory_format: Any, dtype: Any = None, *, chunk_elements: int = 1 << 22
    ) -> None:
        import torch

        self.mean, self.std, self.memory_format = mean.float(), std.float(), memory_format
        self.dtype = dtype or torch.float32
        self.channels_last = memory_format == torch.channels_last
        # Chunks help the CPU's cache; a GPU gains nothing from them but more kernel launches.
        self.chunk_elements = chunk_elements if mean.device.type == "cpu" else None
        self.buffer: Any = None
        self.scratch: Any = None  # float32 working space when the buffer holds another dtype
        self.row_mean: Any = None
        self.row_std: Any = None

    def __call__(self, views: Any) -> Any:
        """The normalised ``[N, 3, s, s]`` batch: a view of the buffer, valid until the next call."""
        import torch

        n, height, width, channels = views.shape
        step = max(1, self.chunk_elements // (height * width * channels)) if self.chunk_elements else n
        if self.buffer is None or len(self.buffer) < n or self.buffer.shape[1:] != (channels, height, width):
            device = self.mean.device
            shape = (n, channels, height, width)
            self.buffer = torch.empty(shape, dtype=self.dtype, device=device, memory_format=self.memory_format)
            if self.dtype != torch.float32:
                shape = (min(step, n), channels, height, width)
                self.scratch = torch.empty(shape, dtype=torch.float32, device=device, memory_format=self.memory_format)
            self.row_mean = self.mean.view(channels).repeat(width)
            self.row_std = self.std.view(channels).repeat(width)
        x = self.buffer[:n]  # a slice along N keeps the buffer's layout
        for start in range(0, n, step):
            part = views[start : start + step]
            k = len(part)
            work = x[start : start + k] if self.scratch is None else self.scratch[:k]
            if self.channels_last:
                pixels = work.permute(0, 2, 3, 1)  # [k, H, W, C] and contiguous: the buffer's memory order
                pixels.copy_(part)
                pixels.view(k * height, width * channels).sub_(self.row_mean).div_(self.row_std)
            else:
                work.copy_(part.permute(0, 3, 1, 2))
                work.sub_(self.mean).div_(self.std)
            if self.scratch is not None:
                x[start : start + k].copy_(work)
        return x


def prefetch(items: Iterable[_T], *, depth: int = 2) -> Iterator[_T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead.

    JPEG decoding, OpenCV and the model's kernels release the GIL, so the next batch decodes while the
    current one runs through the model: prediction costs about the larger of the two rather than their sum.
    An exception in the thread is raised here; leaving the loop early stops the thread.
    """
    queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        """Hand an entry over unless the consumer has left (then never block on a full queue)."""
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as error:  # handed to the consumer, which re-raises it
            put((False, error))

    thread = threading.Thread(target=produce, name="inatcomp-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = queue.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


def load_model(checkpoint: str | os.PathLike, *, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """The eval-mode model of a checkpoint (file, stem or run folder) and its metadata."""
    from inatcomp.models.factory import create_model, head_options, load_checkpoint

    state_dict, metadata, _ = load_checkpoint(checkpoint)
    for key in ("model", "num_classes", "category_ids"):
        if key not in metadata:
            raise ValueError(f"{checkpoint}: checkpoint metadata lacks {key!r}")
    model = create_model(metadata["model"], num_classes=int(metadata["num_classes"]), **head_options(metadata))
    model.load_state_dict(state_dict)
    return model.to(device).eval(), metadata


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """The defaults of :func:`predict`, in one place: the library, ``inatcomp predict`` and the kernels read them.

    Attributes:
        tta: The views preset.
        average: How the views of an image are combined.
        batch_size: Images per batch (all their views go through the model together).
        workers: Loader processes decoding images; ``None``: none on the CPU (decoding runs in a prefetch thread
            beside the model, which needs the cores), up to 8 with CUDA.
        amp: Autocast dtype of the model.
        channels_last: Run the model in channels-last memory format.
        fold_bn: Fold each BatchNorm into the convolution before it.
    """

    tta: TTAMode = TTAMode.CENTER
    average: AverageMode = AverageMode.PROB
    batch_size: int = 64
    workers: int | None = None
    amp: AmpMode = AmpMode.OFF
    channels_last: bool = True
    fold_bn: bool = True


#: The one set of prediction defaults.
PREDICT_DEFAULTS = PredictOptions()


@dataclasses.dataclass(frozen=True)
class _Eval:
    """The eval-time model and what its checkpoint says about its input."""

    model: Any
    metadata: dict[str, Any]
    folded: int
    crop_size: int
    crop_pct: float
    interpolation: Any
    mean: Any
    std: Any
    category_ids: np.ndarray


def _load_eval_model(
    checkpoint: str | os.PathLike, *, device: Any, fold_bn: bool, channels_last: bool, tau_norm: float | None = None
) -> _Eval:
    """The checkpoint's model ready to predict (τ-normalised, BatchNorm folded, memory format set), data config."""
    import torch

    from inatcomp.data import Interpolation

    model, metadata = load_model(checkpoint, device=device)
    if tau_norm:
        from inatcomp.predict.longtail import tau_normalise

        tau_normalise(model, tau_norm)
        _logger.info("τ-norm: classifier rows divided by their norm^%g", tau_norm)
    folded = 0
    if fold_bn:
        from inatcomp.models.factory import fold_batchnorm

        model, folded = fold_batchnorm(model)
        _logger.info("folded %d BatchNorm layer(s) into their convolutions", folded)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = metadata.get("data_config") or {}
    size = config.get("input_size", [3, 224, 224])
    return _Eval(
        model=model,
        metadata=metadata,
        folded=folded,
        crop_size=int(max(size[1], size[2])),
        crop_pct=float(config.get("crop_pct", 0.875)),
        interpolation=Interpolation(config.get("interpolation", "bicubic")),
        mean=torch.tensor(config.get("mean", (0.485, 0.456, 0.406)), device=device).view(1, 3, 1, 1) * 255,
        std=torch.tensor(config.get("std", (0.229, 0.224, 0.225)), device=device).view(1, 3, 1, 1) * 255,
        category_ids=np.asarray(metadata["category_ids"], dtype=np.int64),
    )


def _view_loader(
    base: Any, ev: _Eval, *, tta: TTAMode, views: Sequence[View] | None, batch_size: int, workers: int, device: Any
) -> Any:
    """Batches of every image's views, decoded once each (in ``workers`` processes, or in this one)."""
    from torch.utils.data import DataLoader

    from inatcomp.data import seed_worker

    dataset = _ViewDataset(
        [base.path(i) for i in range(len(base))],
        mode=tta,
        crop_size=ev.crop_size,
        crop_pct=ev.crop_pct,
        interpolation=ev.interpolation.cv2_flag,
        views=views,  # type: ignore[arg-type]
    )
    return DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=seed_worker,
        pin_memory=device.type == "cuda",
    )


def center_crop_batches(
    checkpoint: str | os.PathLike, data: str | os.PathLike, images: str | os.PathLike | None = None, *,
    batch_size: int = 32,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """The centre crops ``predict --tta center`` cuts for a checkpoint: uint8 ``[N, s, s, 3]`` batches, row indices.

    For running an exported model on the same inputs as the checkpoint (:mod:`inatcomp.predict.deploy`).
    """
    import torch

    from inatcomp.data import CompetitionDataset

    cpu = torch.device("cpu")
    ev = _load_eval_model(checkpoint, device=cpu, fold_bn=False, channels_last=False)
    base = CompetitionDataset(data, images, category_ids=ev.category_ids)
    loader = _view_loader(base, ev, tta=TTAMode.CENTER, views=None, batch_size=batch_size, workers=0, device=cpu)
    for views, _, index, _ in loader:
        yield views.numpy(), index.numpy()


def _predict_batches(
    loader: Any, ev: _Eval, writer: PredictionWriter, *, image_ids: np.ndarray, amp: AmpMode, average: AverageMode,
    device: Any, channels_last: bool, in_process: bool,
) -> tuple[list[int], int]:  # fmt: skip
    """Run every batch through the model and write its averaged rows; returns the failed image ids and views."""
    import torch

    amp_dtype = {AmpMode.BF16: torch.bfloat16, AmpMode.FP16: torch.float16}.get(amp)
    # Under autocast the batch is handed over in the autocast dtype, rounded as autocast would round it.
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    normalise = _InputBuffer(ev.mean, ev.std, memory_format, amp_dtype)
    failed_ids: list[int] = []
    n_views = 0
    with torch.inference_mode():
        # In-process decoding (workers=0) still overlaps the model through a prefetch thread.
        for batch_views, counts, index, failed in prefetch(loader) if in_process else loader:
            logits = torch.empty((0, len(ev.category_ids)))
            if len(batch_views):
                x = normalise(batch_views.to(device, non_blocking=True))
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    logits = ev.model(x).float().cpu()
            writer.write(_average(logits, counts, average).numpy())
            n_views += len(batch_views)
            failed_ids += image_ids[index[failed.bool()].numpy()].tolist()
    return failed_ids, n_views


def predict(
    *,
    checkpoint: str | os.PathLike,
    data: str | os.PathLike,
    images: str | os.PathLike | None = None,
    tta: TTAMode | str = PREDICT_DEFAULTS.tta,
    out: str | os.PathLike,
    views: Sequence[View] | str | os.PathLike | None = None,
    average: AverageMode | str = PREDICT_DEFAULTS.average,
    batch_size: int = PREDICT_DEFAULTS.batch_size,
    workers: int | None = PREDICT_DEFAULTS.workers,
    device: str | None = None,
    channels_last: bool = PREDICT_DEFAULTS.channels_last,
    amp: AmpMode | str | None = PREDICT_DEFAULTS.amp,
    fold_bn: bool = PREDICT_DEFAULTS.fold_bn,
    geo_prior: str | os.PathLike | None = None,
    locations: str | os.PathLike | None = None,
    tau_norm: float | None = None,
) -> Path:
    """Predict every image of a competition JSON with test-time augmentation and write a prediction folder.

    Defaults are :data:`PREDICT_DEFAULTS` (:class:`PredictOptions` documents each).

    Args:
        checkpoint: A checkpoint file, stem or run folder (its ``best``).
        data: The competition JSON (test, or val for :func:`inatcomp.score.scoring.score_predictions`).
        images: Folder the ``file_name`` entries are relative to (``None``: the JSON's folder).
        tta: The views preset; :attr:`TTAMode.CUSTOM` with ``views``.
        out: The prediction folder to write.
        views: Custom views (a list, or a YAML/JSON file for :func:`load_views`); implies custom mode.
        average: Average the views' probabilities or logits.
        batch_size: Images per batch (all their views go through the model together).
        workers: Loader processes decoding images (0: in this process; ``None``: see :class:`PredictOptions`).
        device: ``cpu``, ``cuda`` …; ``None`` picks CUDA when available.
        channels_last: Run the model in channels-last memory format.
        amp: ``bf16`` or ``fp16`` runs the model under ``torch.autocast`` (bf16 also on the CPU); ``None``/``off``
            in float32. Under autocast the normalised batch is handed to the model already rounded to that dtype
            (as autocast rounds it for the first convolution). Averaging is always in float32.
        fold_bn: Fold each BatchNorm into the convolution before it (:func:`inatcomp.models.factory.fold_batchnorm`):
            the same scores up to rounding, faster forward passes.
        geo_prior: A saved geo prior (:mod:`~inatcomp.predict.geoprior`): the probabilities are multiplied by it
            and renormalised (:func:`inatcomp.predict.geoprior.apply_prior`; images without a place unchanged).
        locations: The images' places for ``geo_prior`` (default :func:`inatcomp.predict.geoprior.find_locations`).
        tau_norm: ``P`` of Kang et al.'s τ-norm applied to the classifier first
            (:func:`inatcomp.predict.longtail.tau_normalise`; ``None`` or 0: unchanged).

    Returns:
        The prediction folder.

    Raises:
        ValueError: Bad options, an unreadable checkpoint or JSON.
    """
    from inatcomp.data import CompetitionDataset

    if views is not None:
        views = load_views(views) if isinstance(views, str | os.PathLike) else list(views)
        tta = TTAMode.CUSTOM
    tta, average = enum_choice(TTAMode, tta, option="tta"), enum_choice(AverageMode, average, option="average")
    amp = enum_choice(AmpMode, amp or AmpMode.OFF, option="amp")
    if tta is TTAMode.CUSTOM and not views:
        raise ValueError("TTA mode custom needs views (--views FILE)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    torch_device = resolve_device(device)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if torch_device.type == "cuda" else 0
    geo = None
    if geo_prior is not None:  # loaded first: a bad prior or location file fails before the images are read
        from inatcomp.predict.geoprior import apply_prior, find_locations, load_locations, load_prior

        geo = load_prior(geo_prior), load_locations(find_locations(data, locations))
    ev = _load_eval_model(
        checkpoint, device=torch_device, fold_bn=fold_bn, channels_last=channels_last, tau_norm=tau_norm
    )
    base = CompetitionDataset(data, images, category_ids=ev.category_ids)
    loader = _view_loader(base, ev, tta=tta, views=views, batch_size=batch_size, workers=workers, device=torch_device)
    header = {
        "created_by": "inatcomp predict", "checkpoint": str(checkpoint), "model": ev.metadata["model"],
        "data": str(data), "tta": tta.value, "views": [dataclasses.asdict(v) for v in views] if views else None,
        "average": average.value, "crop_size": ev.crop_size, "amp": amp.value, "folded_batchnorm": ev.folded,
        "tau_norm": float(tau_norm or 0.0),
    }  # fmt: skip
    start = time.perf_counter()
    with PredictionWriter(out, image_ids=base.image_ids, category_ids=ev.category_ids, header=header) as writer:
        failed_ids, n_views = _predict_batches(
            loader, ev, writer, image_ids=base.image_ids, amp=amp, average=average, device=torch_device,
            channels_last=channels_last, in_process=workers == 0,
        )  # fmt: skip
        writer.header.update(failed_images=len(failed_ids), failed_image_ids=failed_ids, views_total=n_views)
    seconds = time.perf_counter() - start
    if failed_ids:
        _logger.warning("%d unreadable image(s) got a uniform prediction (listed in the header)", len(failed_ids))
    rate = len(base) / max(seconds, 1e-9)
    _logger.info("%s: %d images, %d views (%s), %.1f images/s", out, len(base), n_views, tta.value, rate)
    if geo is not None:
        apply_prior(out, prior=geo[0], locations=geo[1], out=out)
    return Path(out)
