"""``predict --decode gpu``: the workers read files, the device decodes them in batches and cuts every view there.

The loader's workers return each file's bytes (:class:`BytesDataset`); :func:`device_view_batches` decodes a batch
with :class:`~inatcomp.data.gpudecode.BatchDecoder` (nvJPEG, falling back to PIL file by file) and cuts each image's
test-time views from its one decoded copy on the device, with the geometry of the CPU path
(:func:`~inatcomp.predict.tta.view_boxes`: one resize of the whole image per scale, the views slices of it, a
mirror for flipped views). The batches have the CPU loader's form (uint8 ``[V, s, s, 3]`` views, views per
image, indices, failures), so the prediction loop is the same for both.

The pixels differ slightly from the CPU path's (a full-size decode and torch's antialiased resize against a
reduced-scale libjpeg decode and OpenCV's resize): the same images, not the same bits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from inatcomp.data.gpudecode import BatchDecoder, read_bytes, resize_crop
from inatcomp.predict.tta import TTAMode, View, view_boxes

__all__ = ["BytesDataset", "bytes_collate", "device_view_batches", "image_views"]

_logger = logging.getLogger(__name__)

#: torch's resampling mode for each of the checkpoint's interpolation names (Lanczos has no torch kernel).
_TORCH_MODES = {"nearest": "nearest", "bilinear": "bilinear", "bicubic": "bicubic", "area": "bilinear",
                "lanczos": "bicubic"}  # fmt: skip


class BytesDataset:
    """The files' bytes, for the loader's workers under ``--decode gpu``: items are ``(uint8 bytes, index)``."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def reseed(self, seed: int) -> None:
        """Nothing random here (loader workers call it)."""
        del seed

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        try:
            return read_bytes(self.paths[index]), index
        except OSError as error:  # a missing file: no bytes, a uniform row later
            _logger.debug("cannot read %s (%s)", self.paths[index], error)
            return np.zeros(0, dtype=np.uint8), index


def bytes_collate(items: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], torch.Tensor]:
    """A batch of files' bytes (a list: their lengths differ) and their indices."""
    return [item[0] for item in items], torch.tensor([item[1] for item in items], dtype=torch.int64)


def image_views(
    image: torch.Tensor, mode: TTAMode, crop_size: int, *, crop_pct: float, views: Sequence[View] | None,
    interpolation: str = "bicubic",
) -> torch.Tensor:  # fmt: skip
    """All the views of one decoded uint8 ``[3, H, W]`` image as uint8 ``[V, 3, s, s]``, on the image's device."""
    height, width = image.shape[-2:]
    s = crop_size
    torch_mode = _TORCH_MODES.get(interpolation, "bicubic")
    out = []
    scaled: dict[float, torch.Tensor] = {}
    for view in view_boxes(mode, width, height, s, crop_pct=crop_pct, views=views):
        if view.scale not in scaled:  # one resize of the whole image per scale, as the CPU path does
            ratio = view.scale * s / min(width, height)
            size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
            full = (0, 0, width, height)
            scaled[view.scale] = image if size == (width, height) else resize_crop(image, full, size, mode=torch_mode)
        resized = scaled[view.scale]
        box = view.pixels(resized.shape[2], resized.shape[1])
        out.append(resize_crop(resized, box, (s, s), mode=torch_mode, flip=view.flip))
    return torch.stack(out)


def device_view_batches(
    batches: Iterable[tuple[list[np.ndarray], torch.Tensor]], decoder: BatchDecoder, *, paths: Sequence[str],
    mode: TTAMode, crop_size: int, crop_pct: float, views: Sequence[View] | None, interpolation: str = "bicubic",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:  # fmt: skip
    """The CPU loader's batches made on the device: ``(uint8 [V, s, s, 3] views, views per image, index, failed)``.

    Args:
        batches: The :class:`BytesDataset` loader's batches (:func:`bytes_collate`).
        decoder: Decodes a batch's files on the device.
        paths: The files, by index (for the warning naming an unreadable one).
        mode: The views preset.
        crop_size: Side of the views.
        crop_pct: Eval crop share.
        views: Custom views.
        interpolation: The checkpoint's resampling filter (its name).
    """
    s = crop_size
    for files, index in batches:
        decoded = decoder([f for f in files])
        cut, counts, failed = [], [], []
        for image, i in zip(decoded, index.tolist(), strict=True):
            if image is None:
                _logger.warning("unreadable image %s: uniform prediction", paths[i])
                counts.append(0)
                failed.append(1)
                continue
            cut.append(image_views(image, mode, s, crop_pct=crop_pct, views=views, interpolation=interpolation))
            counts.append(len(cut[-1]))
            failed.append(0)
        device = decoder.device
        stacked = torch.cat(cut) if cut else torch.zeros((0, 3, s, s), dtype=torch.uint8, device=device)
        yield (stacked.permute(0, 2, 3, 1), torch.tensor(counts, dtype=torch.int64), index,
               torch.tensor(failed, dtype=torch.int64))  # fmt: skip
