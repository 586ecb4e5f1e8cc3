"""``--decode gpu``: JPEGs decoded in batches by nvJPEG on the GPU, loader workers only reading bytes.

:func:`resolve_decode` turns the option into the decoding actually used: ``gpu`` needs a CUDA device on which
torchvision's ``decode_jpeg`` works (a one-pixel probe); otherwise it says why in one warning and the run decodes on
the CPU as with ``--decode cpu``. :class:`BatchDecoder` decodes a batch of files' bytes: the JPEGs in one
``torchvision.io.decode_jpeg(..., device=...)`` call; when that call refuses the batch (a CMYK, progressive or
broken file nvJPEG does not take), each JPEG on its own, and the files it still refuses, and every other format
(PNG, WebP …), with PIL on the CPU, file by file, then copied to the device. An unreadable file is ``None``.

The same code runs with ``device="cpu"`` (torchvision's libjpeg decoder instead of nvJPEG), which is how the tests
check the batching and the fallbacks on a machine without a GPU. The crops and resizes that follow are tensor
operations on the device (:func:`resize_crop`).
"""

from __future__ import annotations

import enum
import io
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

__all__ = ["BatchDecoder", "DecodeMode", "image_size", "read_bytes", "resize_crop", "resolve_decode"]

_logger = logging.getLogger(__name__)

_JPEG_MAGIC = b"\xff\xd8\xff"
#: Exceptions PIL raises for files it cannot read.
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DecodeMode(enum.Enum):
    """Where images are decoded."""

    CPU = "cpu"  #: in the loader workers (PIL, at reduced scale where the crop allows)
    GPU = "gpu"  #: nvJPEG on the GPU in batches; the workers only read the files


def _probe_jpeg() -> torch.Tensor:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buffer, format="JPEG")
    return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)


def resolve_decode(decode: DecodeMode | str, device: torch.device) -> DecodeMode:
    """The decoding a run uses: ``gpu`` only where nvJPEG works on ``device``, else ``cpu`` with one warning."""
    decode = DecodeMode(decode.value if isinstance(decode, DecodeMode) else decode)
    if decode is DecodeMode.CPU:
        return decode
    if device.type != "cuda" or not torch.cuda.is_available():
        _logger.warning("--decode gpu: no CUDA device (the run is on %s); decoding on the CPU", device)
        return DecodeMode.CPU
    try:
        decode_jpeg(_probe_jpeg(), mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, TypeError) as error:  # e.g. a torchvision built without nvJPEG
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        _logger.warning("--decode gpu: nvJPEG does not work here (%s); decoding on the CPU", first)
        return DecodeMode.CPU
    return decode


def read_bytes(path: str) -> np.ndarray:
    """A file's bytes as a uint8 array (what a loader worker returns under ``--decode gpu``)."""
    with open(path, "rb") as file:
        data = np.empty(os.fstat(file.fileno()).st_size, dtype=np.uint8)  # writable, read into in place
        file.readinto(memoryview(data))
        return data


def image_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a file's header (PIL reads the header only), or ``None`` when PIL cannot open it."""
    try:
        with Image.open(io.BytesIO(memoryview(data))) as im:
            return im.size
    except _READ_ERRORS:
        return None


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy takes it as it is


class BatchDecoder:
    """Decode batches of files' bytes into RGB uint8 ``[3, H, W]`` tensors on ``device``.

    Args:
        device: Where the images go (nvJPEG decodes there when it is a CUDA device).

    Attributes:
        fallbacks: Files decoded by PIL on the CPU so far (not JPEG, or refused by the device's decoder).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.fallbacks = 0

    def __call__(self, files: Sequence[Any]) -> list[torch.Tensor | None]:
        """The decoded images, in order; ``None`` for a file nothing could read.

        Args:
            files: Each file's bytes (uint8 arrays or tensors, or ``bytes``).
        """
        tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) if isinstance(f, bytes) else torch.as_tensor(f)
                   for f in files]  # fmt: skip
        out: list[torch.Tensor | None] = [None] * len(tensors)
        jpegs = [i for i, t in enumerate(tensors) if bytes(t[:3].tolist()) == _JPEG_MAGIC]
        if jpegs:
            try:
                decoded = decode_jpeg([tensors[i] for i in jpegs], mode=ImageReadMode.RGB, device=self.device)
                for i, image in zip(jpegs, decoded, strict=True):
                    out[i] = image
            except RuntimeError:  # one file spoils the batch: each on its own
                for i in jpegs:
                    out[i] = self._one(tensors[i])
        for i, tensor in enumerate(tensors):
            if out[i] is None and i not in jpegs:
                out[i] = self._on_cpu(tensor)
        return out

    def _one(self, tensor: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return self._on_cpu(tensor)

    def _on_cpu(self, tensor: torch.Tensor) -> torch.Tensor | None:
        """PIL's decode, copied to the device; ``None`` (and a warning) when PIL cannot read it either."""
        self.fallbacks += 1
        try:
            pixels = _pil_decode(tensor.numpy().tobytes())
        except _READ_ERRORS as error:
            _logger.debug("undecodable file (%s)", error)
            return None
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).to(self.device, non_blocking=True)


def resize_crop(
    image: torch.Tensor, box: tuple[int, int, int, int], size: tuple[int, int], *, mode: str = "bilinear",
    flip: bool = False,
) -> torch.Tensor:  # fmt: skip
    """The ``box`` (x0, y0, x1, y1) of a uint8 ``[3, H, W]`` image resized to ``size`` (width, height), uint8.

    Antialiased when shrinking (as OpenCV's area filter avoids aliasing in the CPU path), rounded and clamped
    back to uint8; optionally mirrored.
    """
    x0, y0, x1, y1 = box
    region = image[:, y0:y1, x0:x1]
    if (x1 - x0, y1 - y0) != tuple(size):
        # Antialiasing exists for the bilinear and bicubic kernels only (and align_corners for the linear ones).
        smooth = mode in ("bilinear", "bicubic")
        shrink = smooth and ((x1 - x0) > size[0] or (y1 - y0) > size[1])
        resized = torch.nn.functional.interpolate(
            region[None].float(), size=(size[1], size[0]), mode=mode, align_corners=False if smooth else None,
            antialias=shrink,
        )[0]  # fmt: skip
        region = resized.round_().clamp_(0, 255).to(torch.uint8)
    return region.flip(-1) if flip else region
