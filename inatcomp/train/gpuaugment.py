"""``train --decode gpu``: the workers read files and draw each sample's augmentation; the GPU does the pixels.

:class:`RawTrainSet` wraps the training set for the loader: a worker reads the file's bytes, takes the image size
from the JPEG header, and draws the random-resized crop, the flip and the colour factors from the train preset's
random state (seeded per draw, as on the CPU path), but decodes nothing. :class:`DeviceAugment` then decodes the
batch with nvJPEG (:class:`~inatcomp.data.gpudecode.BatchDecoder`), cuts and resizes each crop, mirrors it and
applies brightness, contrast and saturation on the device, giving uint8 ``[N, H, W, 3]`` batches that
:class:`~inatcomp.data.feed.InputNorm` normalises as on the CPU path.

Differences from the CPU path, by design: hue jitter is not applied (it is 0 by default: colour is a species
trait); an unreadable image becomes a grey crop (counted as a failed read) instead of a same-class replacement,
because the replacement would have to be read in the worker after the decode failed on the GPU. Validation
still decodes in the workers (its uint8 centre crops are normalised on the device like the training batches).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch

from inatcomp.data.gpudecode import BatchDecoder, image_size, read_bytes, resize_crop

__all__ = ["DeviceAugment", "RawSample", "RawTrainSet", "raw_collate"]

_logger = logging.getLogger(__name__)

#: ITU-R 601 luma weights, as the CPU jitter uses.
_LUMA = (0.299, 0.587, 0.114)
#: Grey of a crop whose image could not be decoded (the CPU path's stand-in grey).
_GREY = 124


class RawSample(NamedTuple):
    """One training sample before decoding: the file's bytes and the augmentation drawn for it.

    Attributes:
        data: The file's bytes (uint8; empty when unreadable).
        crop: The crop relative to the image (x0, y0, x1, y1).
        draws: The preset's nine uniforms: flip, three colour factors, hue, the order of the colour steps.
        label: Class index.
        index: Dataset index.
        skipped: Failed reads (1 when the file could not be read).
        failed: ``[1]`` the index of the unreadable file, else -1.
    """

    data: Any
    crop: Any
    draws: Any
    label: int
    index: int
    skipped: int
    failed: Any


class RawTrainSet(torch.utils.data.Dataset):
    """The training set as :class:`RawSample` items: bytes read and augmentation drawn, nothing decoded.

    Args:
        dataset: A :class:`~inatcomp.data.CompetitionDataset` whose transform is a train preset.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def reseed(self, seed: int) -> None:
        """Reseed the preset's draws (per draw under :class:`~inatcomp.train.seeding.SeedPerDraw`)."""
        self.dataset.reseed(seed)

    def __getitem__(self, index: int) -> RawSample:
        preset = self.dataset.transform
        skipped, failed = 0, np.full(1, -1, dtype=np.int64)
        try:
            data = read_bytes(self.dataset.path(index))
        except OSError as error:
            _logger.warning("unreadable image %s (%s): a grey crop", self.dataset.path(index), error)
            data, skipped, failed[0] = np.zeros(0, dtype=np.uint8), 1, index
        size = image_size(data) if len(data) else None
        width, height = size or (int(self.dataset.widths[index]) or 1, int(self.dataset.heights[index]) or 1)
        crop = preset.sample_crop(width, height)
        draws = preset.draws()
        box = np.array([crop.x0, crop.y0, crop.x1, crop.y1], dtype=np.float64)
        return RawSample(data, box, draws, int(self.dataset.labels[index]), index, skipped, failed)


def raw_collate(items: list[RawSample]) -> RawSample:
    """A batch: the bytes as a list (their lengths differ), the rest stacked."""
    return RawSample(
        [item.data for item in items],
        torch.from_numpy(np.stack([item.crop for item in items])),
        torch.from_numpy(np.stack([item.draws for item in items])),
        torch.tensor([item.label for item in items], dtype=torch.int64),
        torch.tensor([item.index for item in items], dtype=torch.int64),
        torch.tensor([item.skipped for item in items], dtype=torch.int64),
        torch.from_numpy(np.stack([item.failed for item in items])),
    )


class DeviceAugment:
    """Decode a :class:`RawSample` batch on ``device`` and augment it there into uint8 ``[N, s, s, 3]`` crops.

    Args:
        preset: The train preset (its size, flip probability and colour-jitter range).
        device: Where to decode and augment.
    """

    def __init__(self, preset: Any, device: torch.device) -> None:
        self.preset = preset
        self.decoder = BatchDecoder(device)
        self.device = device
        self.luma = torch.tensor(_LUMA, device=device).view(3, 1, 1)  # made once: no copy to the device per image
        if preset.hue > 0:
            _logger.warning("--decode gpu: hue jitter (%.3g) is not applied on the GPU", preset.hue)

    def __call__(self, batch: RawSample) -> tuple[torch.Tensor, RawSample]:
        """The augmented uint8 crops and the batch (its failed reads updated with the files nothing could decode)."""
        s = self.preset.img_size
        images = self.decoder(batch.data)
        crops = []
        skipped, failed = batch.skipped.clone(), batch.failed.clone()
        for i, image in enumerate(images):
            draws = batch.draws[i].tolist()
            if image is None:
                if skipped[i] == 0:
                    skipped[i], failed[i, 0] = 1, int(batch.index[i])
                crops.append(torch.full((3, s, s), _GREY, dtype=torch.uint8, device=self.device))
                continue
            height, width = image.shape[-2:]
            x0, y0, x1, y1 = batch.crop[i].tolist()
            box = _pixels(x0, y0, x1, y1, width, height)
            crop = resize_crop(image, box, (s, s), mode="bilinear", flip=draws[0] < self.preset.hflip)
            crops.append(self._jitter(crop, draws))
        out = torch.stack(crops).permute(0, 2, 3, 1)  # [N, s, s, 3]: the CPU path's batch layout
        return out, batch._replace(skipped=skipped, failed=failed)

    def _jitter(self, crop: torch.Tensor, draws: list[float]) -> torch.Tensor:
        """Brightness, contrast and saturation in the drawn order, rounded and clipped after each step (uint8)."""
        lo, hi = self.preset.jitter
        if lo == hi:
            return crop
        factors = [lo + (hi - lo) * d for d in draws[1:4]]
        x = crop.float()
        luma = self.luma
        for step in np.argsort(draws[5:9]):
            if step == 0:
                x = x * factors[0]
            elif step == 1:
                mean = (x * luma).sum(0).mean()  # a tensor: no wait for the device
                x = factors[1] * x + (1 - factors[1]) * mean
            elif step == 2:
                grey = (x * luma).sum(0, keepdim=True)
                x = factors[2] * x + (1 - factors[2]) * grey
            else:
                continue  # hue: not on the GPU (see the module's notes)
            x = x.round().clamp(0, 255)
        return x.to(torch.uint8)


def _pixels(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A relative box in pixels (at least one each way), as :meth:`~inatcomp.data.CropBox.pixels` rounds it."""
    a = min(int(round(x0 * width)), width - 1)
    b = min(int(round(y0 * height)), height - 1)
    c = max(min(int(round(x1 * width)), width), a + 1)
    d = max(min(int(round(y1 * height)), height), b + 1)
    return a, b, c, d
