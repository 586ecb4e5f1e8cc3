"""Tests of inatcomp.world.render and inatcomp.world.bodyplan: pure, deterministic rendering whose look follows the
species (body plan, proportions, colours, field marks) and the observer.

How pixel distance grows with taxonomic distance (siblings < family < supercategory) is tested in
tests/test_synth.py, as are the JPEG files of a whole export.
"""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from inatcomp.formats.taxonomy import Supercategory
from inatcomp.world import bodyplan, render

_NEUTRAL = render.CameraStyle(colour_gain=(1.0, 1.0, 1.0), background=0, blur_sigma=0.0, noise=0.0, jpeg_quality=90)
_POSE = render.PhotoPose(
    centre_x=0.5, centre_y=0.5, radius=0.3, angle=0.4, brightness=1.0, contrast=1.0, individual_hue=0.0,
    in_habitat=False,
)  # fmt: skip


def _photo(
    lineage=(0, 10, 100, 1000), *, pose=_POSE, camera=_NEUTRAL, seed=7, height=48, width=64, export_seed=0, sibling=0
):
    genes = render.species_genes(export_seed, lineage, sibling)
    return render.render_photo(genes, pose, camera, height=height, width=width, seed=seed)


def _corners(image: np.ndarray, size: int = 8) -> np.ndarray:
    """The pixels of the four corners, where a centred organism never reaches."""
    return np.concatenate(
        [image[:size, :size], image[:size, -size:], image[-size:, :size], image[-size:, -size:]]
    ).reshape(-1, 3)


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 48), (17, 16), (96, 96)])
def test_a_photo_is_uint8_rgb_of_the_asked_shape_and_not_flat(height, width):
    image = _photo(height=height, width=width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert image.std() > 10 and image.max() > image.min()


def test_rendering_is_deterministic_for_a_seed_and_the_seed_matters():
    first, again = _photo(seed=3), _photo(seed=3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, _photo(seed=4))  # background texture and clutter follow the photo seed
    one, two = (render.species_genes(s, (0, 10, 100, 1000)).look for s in (1, 2))
    assert not np.array_equal(one.proportions, two.proportions)  # the export seed matters


def _same_look(a: bodyplan.Look, b: bodyplan.Look) -> bool:
    return (
        a.plan == b.plan and np.array_equal(a.proportions, b.proportions) and np.array_equal(a.colours, b.colours)
        and (a.pattern, a.density, a.marks) == (b.pattern, b.density, b.marks)
    )  # fmt: skip


def test_genes_are_deterministic_and_within_their_bounds():
    assert _same_look(
        render.species_genes(5, (3, 11, 101, 1001), 2).look, render.species_genes(5, (3, 11, 101, 1001), 2).look
    )
    for k, plan in enumerate(Supercategory):
        genes = render.species_genes(0, (k, 20 + k, 200 + k, 2000 + k))
        look = genes.look
        assert look.plan is plan and look.proportions.shape == (bodyplan.N_PROPORTIONS,)
        assert ((look.proportions >= 0) & (look.proportions <= 1)).all() and 0 <= look.density <= 1
        assert ((look.colours > 0) & (look.colours < 1)).all() and look.pattern in range(4)
        assert len(look.marks) == 4 and all(m in range(bodyplan.MARKS) for m in look.marks)
        assert genes.habitat in range(len(render.BACKGROUND_KINDS))


def test_the_family_fixes_proportions_the_genus_colours_and_siblings_differ_in_one_or_two_marks():
    siblings = [render.species_genes(0, (2, 10, 100, 1000 + i), i).look for i in range(12)]
    first = siblings[0]
    for look in siblings[1:]:
        assert np.array_equal(look.proportions, first.proportions) and np.array_equal(look.colours, first.colours)
        assert (look.pattern, look.density) == (first.pattern, first.density)
        assert sum(a != b for a, b in zip(look.marks, first.marks)) == 1  # each differs from the first in one mark
    assert len({look.marks for look in siblings}) == 12  # no two siblings alike
    assert all(sum(a != b for a, b in zip(x.marks, y.marks)) <= 2 for x in siblings for y in siblings)
    cousins = [render.species_genes(0, (2, 10, 300 + i, 3000 + i)).look for i in range(10)]
    assert all(np.array_equal(c.proportions, first.proportions) for c in cousins)  # same family
    assert len({c.colours.tobytes() for c in cousins}) == 10 and len({c.pattern for c in cousins}) > 1
    strangers = [render.species_genes(0, (2, 50 + i, 500 + i, 5000 + i)).look for i in range(5)]
    assert not any(np.array_equal(s.proportions, first.proportions) for s in strangers)


@pytest.mark.parametrize("plan", list(Supercategory), ids=lambda s: s.value)
def test_every_body_plan_draws_finite_shapes_that_normalise_into_the_unit_box(plan):
    look = render.species_genes(3, (list(Supercategory).index(plan), 7, 70, 700)).look
    for articulation in (0.0, 0.37, 1.0):
        shapes, turn = bodyplan.plan_shapes(look, articulation)
        assert len(shapes) >= 5 and 0 < turn <= np.pi
        points = np.concatenate([s.points for s in bodyplan.normalise(shapes)])
        assert np.isfinite(points).all() and np.abs(points).max() <= 1 + 1e-9
        assert np.isclose(np.ptp(points, axis=0).max(), 2.0)  # the longer side spans the box


@pytest.mark.parametrize("plan", list(Supercategory), ids=lambda s: s.value)
def test_the_organism_is_drawn_inside_its_box_and_covers_part_of_it(plan):
    """Pixels that differ between two species of other plans lie in the pose's box, and the subject is visible."""
    index = list(Supercategory).index(plan)
    other = (index + 7) % len(Supercategory)
    pose = dataclasses.replace(_POSE, centre_x=0.5, centre_y=0.5, radius=0.25)
    a = _photo((index, 10, 100, 1000), pose=pose, height=96, width=96).astype(np.int16)
    b = _photo((other, 20, 200, 2000), pose=pose, height=96, width=96).astype(np.int16)
    changed = np.abs(a - b).max(axis=2) > 12
    ys, xs = np.nonzero(changed)
    box = 0.25 * 96 * np.sqrt(2) + 2  # a turned box's half-diagonal, and the anti-aliased edge
    assert changed.mean() > 0.02
    assert np.abs(xs - 47.5).max() <= box and np.abs(ys - 47.5).max() <= box


def test_a_mirrored_photo_shows_the_organism_facing_the_other_way():
    pose = dataclasses.replace(_POSE, angle=np.pi, radius=0.3)  # upright plans stay level at angle π
    mirrored = dataclasses.replace(pose, flip=True)
    lineage = (2, 10, 100, 1000)  # a bird: not symmetric left to right
    plain = _photo(lineage, pose=pose, height=64, width=64).astype(np.int16)
    other = _photo(lineage, pose=mirrored, height=64, width=64).astype(np.int16)
    background = _photo((10, 10, 100, 1000), pose=dataclasses.replace(pose, radius=0.01), height=64, width=64)
    subject = np.abs(plain - background.astype(np.int16)).max(axis=2) > 12
    flipped = np.abs(other - background.astype(np.int16)).max(axis=2) > 12
    assert not np.array_equal(plain, other)
    overlap = (subject & flipped[:, ::-1]).sum() / max(subject.sum(), 1)
    assert overlap > 0.8  # the mirrored subject covers the mirror image of the first


def test_different_species_give_different_pixels_under_the_same_conditions():
    photos = [_photo((0, 10, 100, 1000 + i), sibling=i).astype(np.int16) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            # siblings differ in one field mark: a few pixels that plainly differ, not a faint shift everywhere
            assert (np.abs(photos[i] - photos[j]).max(axis=2) > 30).sum() >= 4
    # The background is the photo's, not the species': the corners are the same for every species.
    assert all(np.array_equal(_corners(photos[0]), _corners(p)) for p in photos[1:])


def test_an_observers_colour_cast_shows_on_every_photo():
    warm = render.CameraStyle(colour_gain=(1.25, 1.0, 0.8), background=0, blur_sigma=0.0, noise=0.0, jpeg_quality=90)
    for i, seed in enumerate(range(10, 16)):  # one species of each of six plans
        lineage = (i, 10 + i, 100 + i, 1000 + i)
        neutral, cast = (_photo(lineage, camera=c, seed=seed).reshape(-1, 3).mean(0) for c in (_NEUTRAL, warm))
        assert cast[0] > neutral[0] and cast[2] < neutral[2]
        assert cast[0] / max(cast[2], 1) > neutral[0] / max(neutral[2], 1)


@pytest.mark.parametrize(("bright", "dark"), [("snow", "water"), ("sky", "bark")])
def test_the_observers_background_kind_and_the_species_habitat_that_overrides_it(bright, dark):
    kinds = render.BACKGROUND_KINDS
    small = dataclasses.replace(_POSE, radius=0.1, angle=0.0)
    camera = {k: render.CameraStyle((1.0, 1.0, 1.0), kinds.index(k), 0.0, 0.0, 90) for k in (bright, dark)}
    brightness = {k: _corners(_photo(pose=small, camera=camera[k])).mean() for k in (bright, dark)}
    assert brightness[bright] > brightness[dark] + 30
    habitat = dataclasses.replace(small, in_habitat=True)
    overridden = _photo(pose=habitat, camera=camera[dark])
    assert np.array_equal(overridden, _photo(pose=habitat, camera=camera[bright]))
    fish = render.species_genes(0, (list(Supercategory).index(Supercategory.ACTINOPTERYGII), 10, 100, 1000))
    assert kinds[fish.habitat] == "water"  # habitats follow the species: fish live in water


def test_blur_softens_and_noise_roughens():
    def sharpness(image):
        return cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    plain = _photo(height=64, width=64)
    blurred = _photo(height=64, width=64, camera=render.CameraStyle((1.0, 1.0, 1.0), 0, 1.4, 0.0, 90))
    noisy = _photo(height=64, width=64, camera=render.CameraStyle((1.0, 1.0, 1.0), 0, 0.0, 0.04, 90))
    assert sharpness(blurred) < 0.7 * sharpness(plain) < 0.7 * sharpness(noisy)


def test_brightness_scales_the_photo():
    dim = dataclasses.replace(_POSE, brightness=0.7)
    assert _photo(pose=dim).mean() < 0.85 * _photo().mean()


def test_jpeg_encoding_is_deterministic_and_decodes_to_the_photo():
    image = _photo(height=48, width=64)
    data = render.encode_jpeg(image, 90)
    assert data == render.encode_jpeg(image, 90) and data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (64, 48)
        pixels = np.asarray(decoded.convert("RGB")).astype(np.int16)
    assert np.abs(pixels - image).mean() < 6  # RGB order kept (a BGR swap would be far off)
    assert len(render.encode_jpeg(image, 40)) < len(data)
