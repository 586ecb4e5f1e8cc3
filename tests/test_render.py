"""Tests of inatcomp.render: pure, deterministic rendering whose look follows the species and the observer.

How pixel distance grows with taxonomic distance (siblings < family < supercategory) is tested in
tests/test_synth.py, as are the JPEG files of a whole export.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from inatcomp import render

_NEUTRAL = render.CameraStyle(colour_gain=(1.0, 1.0, 1.0), background=0, blur_sigma=0.0, noise=0.0, jpeg_quality=90)
_POSE = render.PhotoPose(
    centre_x=0.5, centre_y=0.5, radius=0.3, angle=0.4, brightness=1.0, contrast=1.0, individual_hue=0.0,
    habitat_background=-1,
)  # fmt: skip


def _photo(lineage=(0, 10, 100, 1000), *, pose=_POSE, camera=_NEUTRAL, seed=7, height=48, width=64, export_seed=0):
    genes = render.species_genes(export_seed, lineage)
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
    assert not np.array_equal(
        render.species_genes(1, (0, 10, 100, 1000)).values, render.species_genes(2, (0, 10, 100, 1000)).values
    )


def test_genes_are_deterministic_and_within_their_bounds():
    genes = render.species_genes(5, (3, 11, 101, 1001))
    again = render.species_genes(5, (3, 11, 101, 1001))
    assert np.array_equal(genes.values, again.values) and (genes.lobes, genes.pattern) == (again.lobes, again.pattern)
    for lineage in [(k, 20 + k, 200 + k, 2000 + k) for k in range(14)]:
        g = render.species_genes(0, lineage)
        assert g.values.shape == (render.N_GENES,)
        assert (g.values >= render._GENE_LOW).all() and (g.values <= render._GENE_HIGH).all()
        assert 0 <= g.lobes <= 6 and 0 <= g.pattern <= 3


def test_species_of_one_genus_share_body_plan_and_pattern_kind():
    siblings = [render.species_genes(0, (2, 10, 100, 1000 + i)) for i in range(6)]
    assert len({(g.lobes, g.pattern) for g in siblings}) == 1
    assert len({tuple(g.values) for g in siblings}) == 6  # but no two are alike
    patterns = {render.species_genes(0, (2, 10, 100 + i, 1000 + i)).pattern for i in range(20)}
    assert len(patterns) > 1  # the pattern kind belongs to the genus


def test_different_species_give_different_pixels_under_the_same_conditions():
    photos = [_photo((0, 10, 100, 1000 + i)).astype(np.int16) for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(photos[i] - photos[j]).mean() > 0.5
    # The background is the photo's, not the species': the corners are the same for every species.
    assert all(np.array_equal(_corners(photos[0]), _corners(p)) for p in photos[1:])


def test_an_observers_colour_cast_shows_on_every_photo():
    warm = render.CameraStyle(colour_gain=(1.25, 1.0, 0.8), background=0, blur_sigma=0.0, noise=0.0, jpeg_quality=90)
    for i, seed in enumerate(range(10, 16)):
        lineage = (i, 10 + i, 100 + i, 1000 + i)
        neutral, cast = (_photo(lineage, camera=c, seed=seed).reshape(-1, 3).mean(0) for c in (_NEUTRAL, warm))
        assert cast[0] > neutral[0] and cast[2] < neutral[2]
        assert cast[0] / max(cast[2], 1) > neutral[0] / max(neutral[2], 1)


@pytest.mark.parametrize(("bright", "dark"), [("snow", "water"), ("sky", "bark")])
def test_the_observers_background_kind_and_the_habitat_one_that_overrides_it(bright, dark):
    kinds = render.BACKGROUND_KINDS
    small = render.PhotoPose(0.5, 0.5, 0.1, 0.0, 1.0, 1.0, 0.0, -1)
    camera = {k: render.CameraStyle((1.0, 1.0, 1.0), kinds.index(k), 0.0, 0.0, 90) for k in (bright, dark)}
    brightness = {k: _corners(_photo(pose=small, camera=camera[k])).mean() for k in (bright, dark)}
    assert brightness[bright] > brightness[dark] + 30
    habitat = render.PhotoPose(0.5, 0.5, 0.1, 0.0, 1.0, 1.0, 0.0, kinds.index(bright))
    overridden = _photo(pose=habitat, camera=camera[dark])
    assert np.array_equal(overridden, _photo(pose=habitat, camera=camera[bright]))


def test_blur_softens_and_noise_roughens():
    def sharpness(image):
        return cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()

    plain = _photo(height=64, width=64)
    blurred = _photo(height=64, width=64, camera=render.CameraStyle((1.0, 1.0, 1.0), 0, 1.4, 0.0, 90))
    noisy = _photo(height=64, width=64, camera=render.CameraStyle((1.0, 1.0, 1.0), 0, 0.0, 0.04, 90))
    assert sharpness(blurred) < 0.7 * sharpness(plain) < 0.7 * sharpness(noisy)


def test_brightness_scales_the_photo():
    dim = render.PhotoPose(0.5, 0.5, 0.3, 0.4, 0.7, 1.0, 0.0, -1)
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
