"""Rendering of synthetic organism photos whose appearance follows the taxonomy.

Each taxon adds a perturbation to a vector of appearance genes, large at the supercategory, smaller
at family and genus, and small at species: species of one genus share body shape, colour and pattern
kind and differ in details (pattern density, the colour and place of one mark, a slight hue shift),
so telling siblings apart is the hard part, as on iNaturalist. Each photo varies pose, scale,
position (often off-centre, sometimes small or in the upper part of the frame), background and light;
each observer adds a consistent camera style (colour cast, background kind, blur, noise, JPEG
quality), so a split that leaks photographers overstates accuracy.

Everything is a pure function of its inputs and a per-photo seed, so rendering is deterministic
whatever the order or the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import cv2
import numpy as np

__all__ = [
    "BACKGROUND_KINDS",
    "CameraStyle",
    "Genes",
    "PhotoPose",
    "render_photo",
    "encode_jpeg",
    "species_genes",
]

# Gene vector layout: continuous appearance parameters, perturbed level by level down the taxonomy.
_HUE, _SAT, _VAL, _ASPECT, _LOBE_AMP, _PAT_FREQ, _PAT_HUE, _PAT_CONTRAST = range(8)
_MARK_ANGLE, _MARK_HUE, _MARK_SIZE, _SIZE, _PAT_ANGLE, _MARK_RADIUS = range(8, 14)
N_GENES = 14

#: Standard deviation of each gene's perturbation at each level (supercategory, family, genus, species).
_LEVEL_SPREAD = np.array(
    [
        # hue   sat   val  aspect lobe  freq  pathue contr markang markhue marksz size patang markr
        [0.50, 0.25, 0.20, 0.60, 0.15, 0.50, 0.50, 0.20, 3.00, 0.50, 0.05, 0.15, 1.5, 0.10],  # supercategory
        [0.10, 0.10, 0.10, 0.25, 0.06, 0.30, 0.20, 0.08, 1.00, 0.25, 0.02, 0.05, 0.6, 0.05],  # family
        [0.06, 0.06, 0.06, 0.15, 0.04, 0.30, 0.20, 0.06, 0.80, 0.20, 0.02, 0.04, 0.4, 0.06],  # genus
        [0.015, 0.02, 0.02, 0.05, 0.01, 0.22, 0.04, 0.03, 0.70, 0.14, 0.012, 0.03, 0.25, 0.06],  # species
    ],
    dtype=np.float64,
)
_GENE_BASE = np.array([0.3, 0.6, 0.7, 1.6, 0.12, 2.5, 0.5, 0.65, 0.0, 0.5, 0.10, 1.0, 0.0, 0.55])
_GENE_LOW = np.array([-np.inf, 0.2, 0.3, 1.0, 0.0, 1.2, -np.inf, 0.25, -np.inf, -np.inf, 0.06, 0.7, -np.inf, 0.2])
_GENE_HIGH = np.array([np.inf, 0.95, 0.95, 3.2, 0.35, 8.0, np.inf, 0.85, np.inf, np.inf, 0.2, 1.3, np.inf, 0.8])

#: Background kinds an observer's photos tend to have.
BACKGROUND_KINDS = ("foliage", "sky", "sand", "water", "bark", "litter", "rock", "snow")
_BACKGROUND_COLOURS = np.array(
    [
        [[0.16, 0.35, 0.12], [0.35, 0.55, 0.20]],  # foliage
        [[0.45, 0.65, 0.90], [0.80, 0.88, 0.97]],  # sky
        [[0.76, 0.66, 0.45], [0.88, 0.80, 0.62]],  # sand
        [[0.10, 0.30, 0.40], [0.25, 0.50, 0.55]],  # water
        [[0.30, 0.22, 0.15], [0.50, 0.40, 0.30]],  # bark
        [[0.40, 0.26, 0.12], [0.62, 0.45, 0.22]],  # litter
        [[0.42, 0.42, 0.42], [0.62, 0.60, 0.58]],  # rock
        [[0.82, 0.85, 0.90], [0.95, 0.96, 0.98]],  # snow
    ],
    dtype=np.float32,
)


@dataclasses.dataclass(frozen=True)
class Genes:
    """Appearance of a taxon: discrete body plan and continuous gene vector."""

    lobes: int
    pattern: int
    values: np.ndarray


def _level_offset(seed: int, taxon_id: int, level: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7919, int(taxon_id)])
    return rng.standard_normal(N_GENES) * _LEVEL_SPREAD[level]


def species_genes(seed: int, lineage: tuple[int, int, int, int]) -> Genes:
    """Appearance genes of a species from the ids of its supercategory, family, genus and itself.

    Args:
        seed: Export seed.
        lineage: (supercategory index, family taxon id, genus taxon id, species taxon id). The
            supercategory is keyed by its index so that broad groups differ the same way in every export.
    """
    supercategory, family, genus, species = lineage
    values = _GENE_BASE.copy()
    values += _level_offset(0, 1_000_000 + supercategory, 0)
    values += _level_offset(seed, family, 1)
    values += _level_offset(seed, genus, 2)
    values += _level_offset(seed, species, 3)
    values = np.clip(values, _GENE_LOW, _GENE_HIGH)
    # The body plan (lobes) belongs to the supercategory and family, the pattern kind to the genus.
    lobes = int(np.random.default_rng([0, 31, supercategory]).integers(0, 7))
    if np.random.default_rng([seed, 37, family]).random() < 0.3:
        lobes = int(np.random.default_rng([seed, 41, family]).integers(0, 7))
    pattern = int(np.random.default_rng([seed, 43, genus]).integers(0, 4))
    return Genes(lobes=lobes, pattern=pattern, values=values)


@dataclasses.dataclass(frozen=True)
class CameraStyle:
    """An observer's consistent way of taking photos."""

    colour_gain: tuple[float, float, float]
    background: int
    blur_sigma: float
    noise: float
    jpeg_quality: int


@dataclasses.dataclass(frozen=True)
class PhotoPose:
    """Where and how the organism appears in one photo (fractions of the frame)."""

    centre_x: float
    centre_y: float
    radius: float
    angle: float
    brightness: float
    contrast: float
    individual_hue: float
    habitat_background: int


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    h = (h % 1.0) * 6.0
    i = int(h) % 6
    f = h - int(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, kind: int, height: int, width: int) -> np.ndarray:
    dark, light = _BACKGROUND_COLOURS[kind]
    coarse = rng.random((max(2, height // 16), max(2, width // 16)), dtype=np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.random((max(2, height // 4), max(2, width // 4)), dtype=np.float32), (width, height))
    mix = np.clip(0.7 * field + 0.3 * fine, 0.0, 1.0)
    xs, ys = _grid(height, width)
    name = BACKGROUND_KINDS[kind]
    if name == "sky":
        mix = np.clip(0.6 * mix + 0.6 * ys / height - 0.1, 0, 1)
    elif name == "bark":
        mix = np.clip(0.5 * mix + 0.5 * (0.5 + 0.5 * np.sin(xs * rng.uniform(0.2, 0.5) + 3 * field)), 0, 1)
    elif name == "water":
        mix = np.clip(0.6 * mix + 0.4 * (0.5 + 0.5 * np.sin(ys * rng.uniform(0.3, 0.6) + 4 * field)), 0, 1)
    image = dark[None, None, :] + (light - dark)[None, None, :] * mix[..., None]
    # Clutter: a few blobs in the background's colours (leaves, stones), so the organism is not the only shape.
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.12) * min(height, width)
        blob = np.exp(-(((xs - cx) ** 2 + ((ys - cy) * rng.uniform(0.4, 2.5)) ** 2) / (2 * r * r)))
        shade = rng.uniform(0.7, 1.25)
        image = image * (1 - 0.6 * blob[..., None]) + (image * shade) * (0.6 * blob[..., None])
    return image


def render_photo(
    genes: Genes,
    pose: PhotoPose,
    camera: CameraStyle,
    *,
    height: int,
    width: int,
    seed: int,
) -> np.ndarray:
    """Render one photo as an RGB uint8 array of shape (height, width, 3).

    Args:
        genes: The species' appearance.
        pose: Placement and light of this photo.
        camera: The observer's camera style.
        height: Image height in pixels.
        width: Image width in pixels.
        seed: Per-photo seed for background texture and sensor noise.
    """
    rng = np.random.default_rng(seed)
    g = genes.values
    background = pose.habitat_background if pose.habitat_background >= 0 else camera.background
    image = _background(rng, background, height, width)

    xs, ys = _grid(height, width)
    short = min(height, width)
    radius = pose.radius * short * g[_SIZE]
    cos_a, sin_a = np.cos(pose.angle), np.sin(pose.angle)
    dx, dy = xs - pose.centre_x * width, ys - pose.centre_y * height
    u = (dx * cos_a + dy * sin_a) / radius
    v = (-dx * sin_a + dy * cos_a) / radius * g[_ASPECT]
    r = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    boundary = 1.0 + g[_LOBE_AMP] * np.cos(genes.lobes * phi) if genes.lobes else 1.0
    edge = 1.5 / radius
    mask = np.clip((boundary - r) / edge, 0.0, 1.0)

    hue = g[_HUE] + pose.individual_hue
    body = _hsv_to_rgb(hue, g[_SAT], g[_VAL])
    pattern_colour = _hsv_to_rgb(hue + g[_PAT_HUE], min(1.0, g[_SAT] + 0.2), 1.15 - g[_VAL])
    freq = g[_PAT_FREQ] * 2.0
    ca, sa = np.cos(g[_PAT_ANGLE]), np.sin(g[_PAT_ANGLE])
    pu = u * ca + v * sa
    if genes.pattern == 0:  # stripes across the body
        wave = np.sin(np.pi * freq * pu)
    elif genes.pattern == 1:  # spots
        wave = np.sin(np.pi * freq * pu) * np.sin(np.pi * freq * (v * ca - u * sa)) * 2.0 - 0.6
    elif genes.pattern == 2:  # rings
        wave = np.sin(np.pi * freq * r)
    else:  # rays
        wave = np.sin(np.round(freq * 2) * phi)
    pattern = np.clip(wave * 3.0, 0.0, 1.0) * g[_PAT_CONTRAST]
    organism = body[None, None, :] * (1 - pattern[..., None]) + pattern_colour[None, None, :] * pattern[..., None]

    # The species mark: a patch of its own colour at a fixed place on the body.
    mark_u, mark_v = g[_MARK_RADIUS] * np.cos(g[_MARK_ANGLE]), g[_MARK_RADIUS] * np.sin(g[_MARK_ANGLE])
    mark = np.exp(-((u - mark_u) ** 2 + (v - mark_v) ** 2) / (2 * g[_MARK_SIZE] ** 2 * 4))
    mark_colour = _hsv_to_rgb(g[_MARK_HUE], 0.85, 0.9)
    organism = organism * (1 - mark[..., None]) + mark_colour[None, None, :] * mark[..., None]
    # Shading gives the body volume; the light comes from the upper left.
    shade = np.clip(1.05 - 0.35 * r * r + 0.15 * (-u * cos_a + v * sin_a) * 0.5, 0.5, 1.2)
    organism = organism * shade[..., None]

    image = image * (1 - mask[..., None]) + organism * mask[..., None]
    image = (image - 0.5) * pose.contrast + 0.5
    image = image * pose.brightness * np.asarray(camera.colour_gain, dtype=np.float32)[None, None, :]
    if camera.blur_sigma > 0.05:
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), camera.blur_sigma)
    if camera.noise > 0:
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * camera.noise
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Encode an RGB uint8 array as baseline JPEG bytes (deterministic for the same input)."""
    ok, buffer = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buffer.tobytes()


def init_worker() -> None:
    """Keep OpenCV single-threaded inside worker processes (the processes are the parallelism)."""
    cv2.setNumThreads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
