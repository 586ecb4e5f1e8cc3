"""Train and eval transforms as small preset classes behind our own API.

Both presets take an RGB ``uint8`` array of shape (H, W, 3) and return a normalised ``float32`` torch
tensor of shape (3, img_size, img_size), or with ``uint8=True`` the crop itself as a uint8 (img_size, img_size, 3)
tensor, normalised later on the device (:class:`inatcomp.data.feed.InputNorm`; what training uses). They
also say how small a JPEG may be decoded without losing resolution (:meth:`TrainPreset.plan`,
:meth:`EvalPreset.plan`): the dataset reads the image size from
the file header, asks the preset for a :class:`DecodePlan`, decodes at reduced scale (libjpeg DCT
scaling, 1/2, 1/4 or 1/8) and hands the plan back with the decoded image. The train preset samples its
random-resized crop *before* decoding, in coordinates relative to the image, so the decode scale can be
chosen for that crop: a large crop of an 800 px photo is decoded at half or quarter size, a small one at
full size, and the crop always keeps at least ``img_size`` source pixels on each side when the photo has
them.

The train preset's per-image work after the crop is a few OpenCV passes over the small resized image:
the flip, each colour-jitter step as one affine ``cv2.transform`` on uint8 (torchvision's brightness,
contrast, saturation, in random order, clipped after each step; hue through HSV), and one
convert-scale-add per channel that normalises straight into the CHW float tensor
(:func:`normalized_tensor`). The eval preset resizes and centre-crops with albumentations.

:class:`DataConfig` and :func:`resolve_data_config` follow timm's ``timm/data/config.py``: explicit
arguments over the model's pretrained config over the defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Sequence
from typing import Any

import albumentations as A  # noqa: N812 (the library's own idiom)
import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "FULL_CROP",
    "CropBox",
    "DataConfig",
    "DecodePlan",
    "EvalPreset",
    "Interpolation",
    "TrainPreset",
    "create_transform",
    "resolve_data_config",
]

_logger = logging.getLogger(__name__)

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


class Interpolation(enum.Enum):
    """Resampling filter for resizing (timm's names)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    AREA = "area"
    LANCZOS = "lanczos"

    @property
    def cv2_flag(self) -> int:
        """The OpenCV interpolation flag."""
        return _CV2_FLAGS[self]


_CV2_FLAGS = {
    Interpolation.NEAREST: cv2.INTER_NEAREST,
    Interpolation.BILINEAR: cv2.INTER_LINEAR,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
    Interpolation.AREA: cv2.INTER_AREA,
    Interpolation.LANCZOS: cv2.INTER_LANCZOS4,
}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input settings of a model (timm's data config).

    Attributes:
        input_size: (channels, height, width).
        mean: Per-channel mean of the normalisation, on the 0–1 scale.
        std: Per-channel standard deviation of the normalisation.
        crop_pct: Eval centre-crop share: the shorter side is resized to ``img_size / crop_pct``.
        interpolation: Resampling filter.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875
    interpolation: Interpolation = Interpolation.BICUBIC

    @property
    def img_size(self) -> int:
        """The square side the presets produce (the larger of height and width)."""
        return max(self.input_size[1], self.input_size[2])


def _interpolation(value: str | Interpolation | None) -> Interpolation | None:
    if value is None or isinstance(value, Interpolation):
        return value
    try:
        return Interpolation(str(value).lower())
    except ValueError:
        _logger.warning("unknown interpolation %r, using bicubic", value)
        return Interpolation.BICUBIC


def resolve_data_config(
    model: torch.nn.Module | None = None,
    *,
    input_size: int | tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    crop_pct: float | None = None,
    interpolation: str | Interpolation | None = None,
) -> DataConfig:
    """Resolve the data config: explicit arguments over the model's pretrained config over the defaults.

    Args:
        model: A timm model (its ``pretrained_cfg`` or, in older timm, ``default_cfg`` is read), or ``None``.
        input_size: An image side or (channels, height, width); ``None`` takes the model's.
        mean: Normalisation mean; ``None`` takes the model's.
        std: Normalisation std; ``None`` takes the model's.
        crop_pct: Eval crop share; ``None`` takes the model's.
        interpolation: Resampling filter; ``None`` takes the model's.

    Returns:
        The resolved config.
    """
    cfg: dict[str, Any] = {}
    if model is not None:
        cfg = dict(getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {})
    default = DataConfig()
    size = input_size if input_size is not None else cfg.get("input_size", default.input_size)
    if isinstance(size, int):
        size = (3, size, size)
    resolved = DataConfig(
        input_size=tuple(int(s) for s in size),  # type: ignore[arg-type]
        mean=tuple(float(m) for m in (mean if mean is not None else cfg.get("mean", default.mean))),  # type: ignore[arg-type]
        std=tuple(float(s) for s in (std if std is not None else cfg.get("std", default.std))),  # type: ignore[arg-type]
        crop_pct=float(crop_pct if crop_pct is not None else cfg.get("crop_pct", default.crop_pct)),
        interpolation=_interpolation(interpolation if interpolation is not None else cfg.get("interpolation"))
        or default.interpolation,
    )
    _logger.debug("resolved data config %s", resolved)
    return resolved


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A crop in coordinates relative to the image (0–1), valid at any decode scale."""

    x0: float
    y0: float
    x1: float
    y1: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of an image of the given size: x0, y0, x1, y1 (at least one pixel each way)."""
        x0 = min(int(round(self.x0 * width)), width - 1)
        y0 = min(int(round(self.y0 * height)), height - 1)
        x1 = max(min(int(round(self.x1 * width)), width), x0 + 1)
        y1 = max(min(int(round(self.y1 * height)), height), y0 + 1)
        return x0, y0, x1, y1


#: The whole image: what a crop applied while decoding leaves to the transform.
FULL_CROP = CropBox(0.0, 0.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """What a preset needs from the decoder for one image.

    Attributes:
        size: Smallest (width, height) the image may be decoded at; the decoder picks the smallest DCT
            scale at least this large.
        crop: The crop the preset sampled for this image, or ``None``.
    """

    size: tuple[int, int]
    crop: CropBox | None = None


def _reduced_size(width: int, height: int, factor: float) -> tuple[int, int]:
    """(width, height) divided by ``factor`` (≥ 1 only: never asks for more than the full size)."""
    if factor <= 1.0:
        return width, height
    return max(1, math.ceil(width / factor)), max(1, math.ceil(height / factor))


#: ITU-R 601 luma weights of R, G, B: the grey of OpenCV's ``COLOR_RGB2GRAY`` and torchvision's jitter.
_LUMA = np.array([0.299, 0.587, 0.114])
_IDENTITY = np.eye(3)
#: The matrix taking an RGB pixel to its grey (luma in all three channels).
_TO_GREY = np.outer(np.ones(3), _LUMA)


def _affine(image: np.ndarray, matrix: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
    """``matrix @ pixel + offset`` for every pixel of an RGB uint8 image, rounded and clipped to uint8.

    One SIMD pass of ``cv2.transform`` (a third of the time of a ``cv2.LUT`` on a 224 px image); its
    saturating cast is the clipping after each step of torchvision's jitter.
    """
    full = np.empty((3, 4), dtype=np.float32)
    full[:, :3] = matrix
    full[:, 3] = offset
    return cv2.transform(image, full)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Multiply an RGB uint8 image by ``factor`` (torchvision's ``adjust_brightness``), clipped to uint8."""
    return _affine(image, factor * _IDENTITY)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend an RGB uint8 image with its mean grey (torchvision's ``adjust_contrast``), clipped to uint8."""
    # The grey mean is linear in the channel means: no grey image is needed.
    grey = float(np.dot(cv2.mean(image)[:3], _LUMA))
    return _affine(image, factor * _IDENTITY, (1.0 - factor) * grey)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend an RGB uint8 image with its grey version (torchvision's ``adjust_saturation``), clipped to uint8."""
    # factor * rgb + (1 - factor) * grey, grey = luma · rgb: one 3×3 matrix.
    return _affine(image, factor * _IDENTITY + (1.0 - factor) * _TO_GREY)


def adjust_hue(image: np.ndarray, factor: float) -> np.ndarray:
    """Rotate the hue of an RGB uint8 image by ``factor`` turns (-0.5–0.5), as albumentations does on uint8."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    lut = np.mod(np.arange(256) + 180.0 * factor, 180).astype(np.uint8)  # OpenCV's uint8 hue is 0–179
    hsv[..., 0] = lut[hsv[..., 0]]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(
    image: np.ndarray,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    order: Sequence[int] = (0, 1, 2, 3),
) -> np.ndarray:
    """Torchvision's colour jitter on an RGB uint8 image, each step rounded and clipped to uint8.

    Albumentations' ``ColorJitter`` computes the same steps but truncates brightness and contrast to
    uint8 (half a level darker on average); rounding is closer to torchvision's float result.

    Args:
        image: RGB uint8 (H, W, 3); not modified.
        brightness: Brightness factor (1: unchanged).
        contrast: Contrast factor (1: unchanged).
        saturation: Saturation factor (1: unchanged).
        hue: Hue shift in turns (0: unchanged).
        order: Order of the steps, indices into (brightness, contrast, saturation, hue).

    Returns:
        The jittered image (``image`` itself when every step is the identity).
    """
    factors = (brightness, contrast, saturation, hue)
    for step in order:
        if factors[step] != (0.0 if step == 3 else 1.0):
            image = _ADJUSTMENTS[step](image, factors[step])
    return image


def _normalization(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel scale and offset taking uint8 values to ``(value / 255 - mean) / std``."""
    std_ = np.asarray(std, dtype=np.float64)
    return 1.0 / (255.0 * std_), -np.asarray(mean, dtype=np.float64) / std_


def normalized_tensor(image: np.ndarray, scale: Sequence[float], offset: Sequence[float]) -> torch.Tensor:
    """``image * scale + offset`` per channel of an RGB uint8 image, as a contiguous float32 CHW tensor.

    The HWC to CHW move happens once, on uint8 (``cv2.split``); each float plane is then written in
    place by one ``cv2.addWeighted`` (a SIMD convert-scale-add), and the tensor shares that memory.

    Args:
        image: RGB uint8 (H, W, 3).
        scale: Per-channel factor, e.g. ``1 / (255 * std)``.
        offset: Per-channel offset, e.g. ``-mean / std``.
    """
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    for channel, plane in enumerate(cv2.split(image)):
        cv2.addWeighted(
            plane, float(scale[channel]), plane, 0.0, float(offset[channel]), dst=out[channel], dtype=cv2.CV_32F
        )
    return torch.from_numpy(out)


def _output(image: np.ndarray, scale: Sequence[float], offset: Sequence[float], *, uint8: bool) -> torch.Tensor:
    """A preset's result: the uint8 crop as an (H, W, 3) tensor, or normalised into a float32 CHW tensor."""
    if uint8:
        # HWC as it is: the batch's [N, H, W, 3] memory is the channels-last layout the device wants.
        return torch.from_numpy(np.ascontiguousarray(image))
    return normalized_tensor(image, scale, offset)


class TrainPreset:
    """Random-resized crop, horizontal flip, colour jitter, normalisation, CHW float tensor.

    Args:
        img_size: Output side in pixels.
        scale: Range of the crop's share of the image area.
        ratio: Range of the crop's aspect ratio (width / height), sampled log-uniformly.
        hflip: Probability of a horizontal flip.
        color_jitter: Brightness, contrast and saturation jitter strength at magnitude 1.
        hue: Hue jitter at magnitude 1 (0 by default: colour is a species trait).
        magnitude: Augmentation-magnitude knob scaling the colour jitter (0 turns it off).
        mean: Normalisation mean (0–1 scale).
        std: Normalisation std.
        interpolation: Resampling filter of the resize.
        seed: Seed of the preset's random state (``None``: fresh entropy); loader workers reseed it.
        uint8: Return the augmented crop as a uint8 ``(H, W, 3)`` tensor, normalised later on the device
            (:class:`inatcomp.data.feed.InputNorm`), instead of the normalised float32 CHW tensor.
    """

    def __init__(
        self,
        *,
        img_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        hue: float = 0.0,
        magnitude: float = 1.0,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        interpolation: Interpolation = Interpolation.BILINEAR,
        seed: int | None = None,
        uint8: bool = False,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be ≥ 1, got {img_size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min ≤ max ≤ 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min ≤ max, got {ratio}")
        if magnitude < 0:
            raise ValueError(f"magnitude must be ≥ 0, got {magnitude}")
        self.img_size = int(img_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = interpolation
        self.hflip = float(hflip)
        jitter = color_jitter * magnitude
        #: Range of the brightness, contrast and saturation factors (all three 1 without jitter).
        self.jitter = (max(0.0, 1.0 - jitter), 1.0 + jitter) if jitter > 0 else (1.0, 1.0)
        self.hue = min(0.5, hue * magnitude)
        self._scale, self._offset = _normalization(mean, std)
        self._rng = np.random.default_rng(seed)
        self.uint8 = bool(uint8)

    def reseed(self, seed: int) -> None:
        """Reseed the crop sampling and the augmentation draws (called in each loader worker)."""
        self._rng = np.random.default_rng(seed)

    def sample_crop(self, width: int, height: int) -> CropBox:
        """Sample a random-resized crop of an image of this size (torchvision's algorithm), relative."""
        area = float(width * height)
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self._rng.uniform(*self.scale)
            aspect = math.exp(self._rng.uniform(*log_ratio))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if 0 < w <= width and 0 < h <= height:
                x = self._rng.uniform(0, width - w)
                y = self._rng.uniform(0, height - h)
                return CropBox(x / width, y / height, (x + w) / width, (y + h) / height)
        w, h = self._fallback_size(width, height)
        x, y = (width - w) / 2, (height - h) / 2
        return CropBox(x / width, y / height, (x + w) / width, (y + h) / height)

    def _fallback_size(self, width: int, height: int) -> tuple[float, float]:
        """The crop when sampling fails: the largest centre crop inside the ratio range."""
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            return float(width), width / self.ratio[0]
        if in_ratio > self.ratio[1]:
            return height * self.ratio[1], float(height)
        return float(width), float(height)

    def decode_size(self, width: int, height: int, crop: CropBox | None = None) -> tuple[int, int]:
        """Smallest decode size that keeps ``img_size`` source pixels across the crop.

        Args:
            width: Full image width.
            height: Full image height.
            crop: A sampled crop; ``None`` gives the bound for the smallest crop this preset can sample
                (safe for any crop, so rarely below full size).
        """
        if crop is None:
            # A sampled crop's shorter side is at least this; a crop that would not fit is never sampled,
            # and the fallback crop has its own shorter side.
            side = math.sqrt(self.scale[0] * width * height * min(self.ratio[0], 1 / self.ratio[1]))
            side = min(side, *self._fallback_size(width, height))
        else:
            side = min((crop.x1 - crop.x0) * width, (crop.y1 - crop.y0) * height)
        return _reduced_size(width, height, side / self.img_size)

    def draws(self) -> np.ndarray:
        """The nine uniforms of one image's augmentation: flip, three colour factors, hue, the colour steps' order."""
        return self._rng.random(9)

    def plan(self, width: int, height: int) -> DecodePlan:
        """Sample this image's crop and the decode size it needs."""
        crop = self.sample_crop(width, height)
        return DecodePlan(size=self.decode_size(width, height, crop), crop=crop)

    def __call__(self, image: np.ndarray, plan: DecodePlan | None = None) -> torch.Tensor:
        """Augment an RGB uint8 (H, W, 3) image into a float32 (3, img_size, img_size) tensor.

        Args:
            image: The decoded image, at any scale.
            plan: The plan made before decoding (its crop is applied); ``None`` samples a crop now.
        """
        height, width = image.shape[:2]
        crop = plan.crop if plan is not None and plan.crop is not None else self.sample_crop(width, height)
        x0, y0, x1, y1 = crop.pixels(width, height)
        region = image[y0:y1, x0:x1]
        flag = self.interpolation.cv2_flag
        if min(x1 - x0, y1 - y0) > 2 * self.img_size:
            flag = cv2.INTER_AREA  # a strong reduction aliases with bilinear or bicubic
        resized = cv2.resize(region, (self.img_size, self.img_size), interpolation=flag)
        # One draw for the flip, the four colour factors and the order of the colour steps (the argsort of
        # four uniforms is a uniform permutation, like albumentations' shuffle).
        draws = self.draws()
        if draws[0] < self.hflip:
            resized = cv2.flip(resized, 1)
        lo, hi = self.jitter
        if lo != hi or self.hue > 0:
            b, c, s = lo + (hi - lo) * draws[1:4]
            h = self.hue * (2.0 * draws[4] - 1.0)
            resized = color_jitter(resized, b, c, s, h, order=np.argsort(draws[5:9]))
        return _output(resized, self._scale, self._offset, uint8=self.uint8)


class EvalPreset:
    """Resize the shorter side to ``img_size / crop_pct``, centre crop, normalise, CHW float tensor.

    Args:
        img_size: Output side in pixels.
        crop_pct: Share of the resized shorter side kept by the centre crop.
        mean: Normalisation mean (0–1 scale).
        std: Normalisation std.
        interpolation: Resampling filter of the resize.
        uint8: Return the crop as a uint8 ``(H, W, 3)`` tensor (normalised later, on the device).
    """

    def __init__(
        self,
        *,
        img_size: int,
        crop_pct: float = 0.875,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        interpolation: Interpolation = Interpolation.BICUBIC,
        uint8: bool = False,
    ) -> None:
        if img_size < 1:
            raise ValueError(f"img_size must be ≥ 1, got {img_size}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.img_size = int(img_size)
        self.crop_pct = float(crop_pct)
        self.resize = int(math.floor(img_size / crop_pct))
        self._pipeline = A.Compose(
            [
                A.SmallestMaxSize(max_size=self.resize, interpolation=interpolation.cv2_flag),
                A.CenterCrop(height=self.img_size, width=self.img_size, pad_if_needed=True),
            ],
            seed=0,
        )
        self._scale, self._offset = _normalization(mean, std)
        self.uint8 = bool(uint8)

    def reseed(self, seed: int) -> None:
        """Nothing random here; present so that loaders can reseed any preset."""
        del seed

    def decode_size(self, width: int, height: int, crop: CropBox | None = None) -> tuple[int, int]:
        """Smallest decode size whose shorter side still reaches the resize target."""
        del crop
        return _reduced_size(width, height, min(width, height) / self.resize)

    def plan(self, width: int, height: int) -> DecodePlan:
        """The decode size for an image of this size (no crop to sample)."""
        return DecodePlan(size=self.decode_size(width, height))

    def __call__(self, image: np.ndarray, plan: DecodePlan | None = None) -> torch.Tensor:
        """Resize and centre-crop an RGB uint8 (H, W, 3) image into a float32 (3, img_size, img_size) tensor."""
        del plan
        return _output(self._pipeline(image=image)["image"], self._scale, self._offset, uint8=self.uint8)


def create_transform(
    *,
    config: DataConfig,
    training: bool,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    hue: float = 0.0,
    magnitude: float = 1.0,
    seed: int | None = None,
    uint8: bool = False,
) -> TrainPreset | EvalPreset:
    """Build the train or eval preset for a data config.

    Args:
        config: Size, normalisation, crop share and interpolation (see :func:`resolve_data_config`).
        training: The train preset when true, else the eval preset.
        scale: Train crop area range.
        ratio: Train crop aspect range.
        hflip: Train flip probability.
        color_jitter: Train colour jitter at magnitude 1.
        hue: Train hue jitter at magnitude 1 (0: colour is a species trait).
        magnitude: Augmentation-magnitude knob.
        seed: Seed of the train preset's random state.
        uint8: The preset returns uint8 (H, W, 3) crops, normalised on the device
            (:class:`inatcomp.data.feed.InputNorm`).
    """
    if training:
        return TrainPreset(
            img_size=config.img_size,
            scale=scale,
            ratio=ratio,
            hflip=hflip,
            color_jitter=color_jitter,
            hue=hue,
            magnitude=magnitude,
            mean=config.mean,
            std=config.std,
            interpolation=Interpolation.BILINEAR,
            seed=seed,
            uint8=uint8,
        )
    return EvalPreset(
        img_size=config.img_size,
        crop_pct=config.crop_pct,
        mean=config.mean,
        std=config.std,
        interpolation=config.interpolation,
        uint8=uint8,
    )
