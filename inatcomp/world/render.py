"""Rendering of synthetic organism photos whose appearance follows the taxonomy.

The organism is drawn from its supercategory's body plan (:mod:`inatcomp.world.bodyplan`): the family fixes the
plan's proportions, the genus its colours and pattern, and species of one genus differ in one or two field
marks, so telling siblings apart is the hard part, as on iNaturalist. Each photo varies pose (turn, mirror
image, the articulation of legs, wings and tail), scale (the subject usually fills 20-70 % of the frame,
sometimes less, often cut by the frame's edge) and position, background and light; backgrounds follow
the species' habitat (water for fish, sky or foliage for birds) or the observer's usual one; each observer
adds a consistent camera style (colour cast, blur, noise, JPEG quality), so a split that leaks
photographers overstates accuracy.

Everything is a pure function of its inputs and a per-photo seed, so rendering is deterministic
whatever the order or the number of processes.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import cv2
import numpy as np

from inatcomp.formats.taxonomy import Supercategory
from inatcomp.world.bodyplan import MARKS, N_PROPORTIONS, Look, normalise, plan_shapes

__all__ = [
    "BACKGROUND_KINDS",
    "CameraStyle",
    "Genes",
    "PhotoPose",
    "render_photo",
    "encode_jpeg",
    "species_genes",
]

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


_SUPERCATEGORIES = tuple(Supercategory)

#: Natural colours a genus draws its main, secondary and accent colour from (browns, greys, greens,
#: yellows, reds, black, white, blue, purple, pink, cream).
_PALETTE = np.array(
    [
        [0.45, 0.30, 0.18], [0.62, 0.47, 0.30], [0.50, 0.50, 0.50], [0.28, 0.28, 0.30], [0.24, 0.48, 0.20],
        [0.50, 0.64, 0.28], [0.86, 0.70, 0.20], [0.86, 0.45, 0.15], [0.70, 0.16, 0.12], [0.13, 0.12, 0.12],
        [0.90, 0.89, 0.86], [0.25, 0.40, 0.70], [0.50, 0.30, 0.60], [0.90, 0.56, 0.66], [0.85, 0.80, 0.65],
    ]
)  # fmt: skip
#: Main colours of plants and seaweeds (two greens).
_GREENS = (4, 5)
#: The habitats (background kinds) each supercategory lives in; a genus picks one, some species another.
_HABITATS = {
    Supercategory.PLANTAE: ("foliage", "litter", "rock", "sand"),
    Supercategory.INSECTA: ("foliage", "bark", "litter", "sand"),
    Supercategory.AVES: ("sky", "foliage", "water", "bark", "sand"),
    Supercategory.REPTILIA: ("sand", "rock", "litter", "bark"),
    Supercategory.MAMMALIA: ("foliage", "snow", "sand", "rock", "litter"),
    Supercategory.FUNGI: ("litter", "bark", "foliage"),
    Supercategory.AMPHIBIA: ("foliage", "water", "litter"),
    Supercategory.MOLLUSCA: ("foliage", "rock", "water", "litter"),
    Supercategory.ANIMALIA: ("water", "rock"),
    Supercategory.ARACHNIDA: ("foliage", "bark", "litter", "rock"),
    Supercategory.ACTINOPTERYGII: ("water",),
    Supercategory.CHROMISTA: ("water", "rock"),
    Supercategory.PROTOZOA: ("bark", "litter"),
    Supercategory.BACTERIA: ("water", "rock"),
}


@dataclasses.dataclass(frozen=True)
class Genes:
    """How a species looks and where it lives: its body plan's look and its habitat's background kind."""

    look: Look
    habitat: int


def _family_colours(rng: np.random.Generator, plan: Supercategory) -> np.ndarray:
    """Palette indices of a family's main, secondary and accent colour (three different ones)."""
    if plan in (Supercategory.PLANTAE, Supercategory.CHROMISTA):
        main = _GREENS[int(rng.integers(len(_GREENS)))]
    else:
        main = int(rng.integers(len(_PALETTE)))
    others = rng.permutation([i for i in range(len(_PALETTE)) if i != main])[:2]
    return np.array([main, *others])


def _genus_colours(rng: np.random.Generator, family: np.ndarray, plan: Supercategory) -> np.ndarray:
    """Main, secondary and accent colour of a genus, slightly varied: each its family's colour half the time.

    Genera of a family thus tend to share a colour scheme, as they do in the field; what always tells them
    apart is the pattern and the rest of the scheme.
    """
    own = _family_colours(rng, plan)
    keep = rng.random(3) < 0.5
    chosen = np.where(keep, family, own)
    if len(set(chosen.tolist())) < 3:  # two slots drew the same colour: the genus keeps its own scheme
        chosen = own
    return np.clip(_PALETTE[chosen] + rng.normal(0.0, 0.03, (3, 3)), 0.02, 0.98)


def _sibling_marks(rng: np.random.Generator, sibling: int) -> tuple[int, int, int, int]:
    """The field marks of a genus' ``sibling``-th species: the genus' own, changed in one or two places.

    Sibling 0 has the genus' marks; sibling k the k-th of the single changes in a genus-specific order, and
    beyond those two changes, so that no two species of a genus look alike.
    """
    marks = rng.integers(0, MARKS, size=4)
    changes = [(slot, value) for slot in range(4) for value in range(MARKS) if value != marks[slot]]
    order = rng.permutation(len(changes))
    if sibling > 0:
        k = sibling - 1
        slot, value = changes[order[k % len(changes)]]
        marks[slot] = value
        if k >= len(changes):
            second_slot, second_value = changes[order[(k // len(changes) + k) % len(changes)]]
            if second_slot != slot:
                marks[second_slot] = second_value
    return tuple(int(m) for m in marks)


def species_genes(seed: int, lineage: tuple[int, int, int, int], sibling: int = 0) -> Genes:
    """How a species looks, from the ids of its supercategory, family, genus and itself.

    Args:
        seed: Export seed.
        lineage: (supercategory index, family taxon id, genus taxon id, species taxon id).
        sibling: The species' place among its genus' species (0 for the first); siblings differ in their marks.
    """
    supercategory, family, genus, species = lineage
    plan = _SUPERCATEGORIES[supercategory]
    family_rng = np.random.default_rng([seed, 7919, int(family)])
    proportions = family_rng.random(N_PROPORTIONS)
    genus_rng = np.random.default_rng([seed, 7927, int(genus)])
    colours = _genus_colours(genus_rng, _family_colours(family_rng, plan), plan)
    pattern, density = int(genus_rng.integers(0, 4)), float(genus_rng.random())
    marks = _sibling_marks(genus_rng, int(sibling))
    habitats = _HABITATS[plan]
    habitat = habitats[int(genus_rng.integers(len(habitats)))]
    species_rng = np.random.default_rng([seed, 7933, int(species)])
    if species_rng.random() < 0.3:
        habitat = habitats[int(species_rng.integers(len(habitats)))]
    look = Look(plan=plan, proportions=proportions, colours=colours, pattern=pattern, density=density, marks=marks)
    return Genes(look=look, habitat=BACKGROUND_KINDS.index(habitat))


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
    """Where and how the organism appears in one photo.

    Attributes:
        centre_x: Centre of the organism's bounding box, as a fraction of the width.
        centre_y: The same, as a fraction of the height.
        radius: Half the longer side of its bounding box, as a fraction of the frame's shorter side.
        angle: In [0, 2π): how far it turns (upright plans, such as birds and plants, turn only a little).
        brightness: Light on the scene (a factor).
        contrast: Contrast of the scene (a factor).
        individual_hue: This individual's slight colour shift.
        in_habitat: Whether the background is the species' habitat rather than the observer's usual one.
        flip: Whether the photo shows the organism's mirror image (facing the other way).
        articulation: Pose of legs, wings, tail and body, in [0, 1].
    """

    centre_x: float
    centre_y: float
    radius: float
    angle: float
    brightness: float
    contrast: float
    individual_hue: float
    in_habitat: bool
    flip: bool = False
    articulation: float = 0.5


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


def _draw_organism(image: np.ndarray, genes: Genes, pose: PhotoPose) -> None:
    """Draw the organism's shapes, anti-aliased, onto ``image`` (uint8 RGB) in place."""
    height, width = image.shape[:2]
    shapes, turn = plan_shapes(genes.look, pose.articulation)
    angle = turn * (pose.angle / np.pi - 1.0)
    scale = pose.radius * min(height, width)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    centre = np.array([pose.centre_x * width, pose.centre_y * height])
    tint = 1.0 + pose.individual_hue * np.array([3.0, 0.0, -3.0])
    mirror = np.array([-1.0 if pose.flip else 1.0, 1.0])
    for shape in normalise(shapes):
        pixels = (shape.points * mirror) @ rotation.T
        fixed = np.round((centre + pixels * (1.0, -1.0)) * 16.0).astype(np.int32)  # 4 fractional bits
        colour = tuple(float(c) for c in np.clip(shape.colour * tint, 0.0, 1.0) * 255.0)
        if shape.width > 0:
            thickness = max(1, int(round(shape.width * scale)))
            cv2.polylines(image, [fixed], False, colour, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(image, [fixed], colour, lineType=cv2.LINE_AA, shift=4)


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
    background = genes.habitat if pose.in_habitat else camera.background
    image = (np.clip(_background(rng, background, height, width), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    _draw_organism(image, genes, pose)
    scene = image.astype(np.float32) / 255.0
    scene = (scene - 0.5) * pose.contrast + 0.5
    scene = scene * pose.brightness * np.asarray(camera.colour_gain, dtype=np.float32)[None, None, :]
    if camera.blur_sigma > 0.05:
        scene = cv2.GaussianBlur(scene, (0, 0), camera.blur_sigma)
    if camera.noise > 0:
        scene = scene + rng.standard_normal(scene.shape, dtype=np.float32) * camera.noise
    return (np.clip(scene, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


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
