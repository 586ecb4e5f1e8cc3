"""Tests of the data pipeline: datasets on built releases and hand-made files, transforms, samplers, loader."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from PIL import Image
from scipy import stats
from torch import nn

from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.data import (
    CompetitionDataset,
    DataConfig,
    EvalPreset,
    Interpolation,
    SamplerType,
    TrainPreset,
    create_loader,
    create_sampler,
    create_transform,
    resolve_data_config,
)
from inatcomp.models.losses import LossType, create_loss
from inatcomp.world.synth import SynthConfig, write_export

RELEASE_FILES = {
    Preset.INAT2017: ("train2017.json", "val2017.json", "test2017.json"),
    Preset.INAT2018: ("train2018.json", "val2018.json", "test2018.json"),
    Preset.INAT2021: ("train.json", "val.json", "public_test.json"),
}


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    write_export(out, SynthConfig(species=20, photos=1500, seed=0, image_size=64, workers=1))
    return out


@pytest.fixture(scope="module")
def releases(export, tmp_path_factory) -> dict[Preset, Path]:
    root = tmp_path_factory.mktemp("releases")
    out = {}
    for preset in RELEASE_FILES:
        out[preset] = root / preset.value
        build_dataset(export, out[preset], rules=rules_for(preset), seed=0, workers=1)
    return out


def _write_jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(sum(colour))
    pixels = np.clip(np.asarray(colour)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def _hand_dataset(root: Path, sizes: dict[str, tuple[int, int]], labels: dict[str, int | None]) -> Path:
    """A 2018-style JSON over hand-written JPEGs; ``labels`` maps file → category id (``None``: test image)."""
    images, annotations = [], []
    for i, (name, category) in enumerate(labels.items()):
        width, height = sizes.get(name, (40, 30))
        images.append({"id": 100 + i, "width": width, "height": height, "file_name": name})
        if category is not None:
            annotations.append({"id": i, "image_id": 100 + i, "category_id": category})
    categories = [
        {"id": c, "name": f"Genus{c // 2} species{c}", "genus": f"Genus{c // 2}", "family": "Fam"} for c in (7, 8, 9)
    ]
    data = {"images": images, "categories": categories}
    if annotations:
        data["annotations"] = annotations
    path = root / "hand.json"
    path.write_text(json.dumps(data))
    return path


# --- datasets -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", list(RELEASE_FILES))
def test_reads_each_flavour(releases, preset):
    release = releases[preset]
    train, _, test = (release / name for name in RELEASE_FILES[preset])
    data = json.loads(train.read_text())
    ds = CompetitionDataset(train, release, transform=EvalPreset(img_size=32))
    assert len(ds) == len(data["images"])
    assert ds.category_ids.tolist() == sorted(c["id"] for c in data["categories"])
    assert [c["id"] for c in ds.categories] == ds.category_ids.tolist()
    # Labels are head indices of the annotated categories, held as NumPy arrays.
    assert isinstance(ds.labels, np.ndarray) and ds.labels.dtype == np.int64
    category_of = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    expected = [int(np.searchsorted(ds.category_ids, category_of[im["id"]])) for im in data["images"]]
    assert ds.labels.tolist() == expected
    assert ds.file_name(3) == data["images"][3]["file_name"]
    assert ds.class_counts().sum() == len(ds)
    sample = ds[0]
    assert sample.image.shape == (3, 32, 32) and sample.image.dtype == torch.float32
    assert sample.label == expected[0] and sample.skipped == 0
    # Taxonomy: genus from the records (2017 has none: the name's first word), one group per genus.
    taxonomy = ds.taxonomy()
    assert len(taxonomy.genus_of) == ds.num_classes
    for i, record in enumerate(ds.categories):
        assert taxonomy.genus[i] == record.get("genus", record["name"].split()[0])
        same = (taxonomy.genus == taxonomy.genus[i]) & (taxonomy.family == taxonomy.family[i])
        assert np.array_equal(taxonomy.genus_of == taxonomy.genus_of[i], same)
        assert (taxonomy.family_of[taxonomy.genus_of == taxonomy.genus_of[i]] == taxonomy.family_of[i]).all()
    # The test file has no annotations: every label is -1, and it still reads.
    test_ds = CompetitionDataset(test, release, transform=EvalPreset(img_size=32))
    assert len(test_ds) > 0 and (test_ds.labels == -1).all()
    assert test_ds[0].label == -1


def test_given_category_order_is_the_head_order(tmp_path):
    names = {f"img{i}.jpg": c for i, c in enumerate([7, 8, 9, 9])}
    for name in names:
        _write_jpeg(tmp_path / name, (40, 30), (100, 100, 100))
    path = _hand_dataset(tmp_path, {}, names)
    ds = CompetitionDataset(path, tmp_path, category_ids=[9, 7, 42])
    assert ds.labels.tolist() == [1, -1, 0, 0]  # 8 is not in the head
    assert [c["id"] for c in ds.categories] == [9, 7, 42]
    assert ds.class_counts().tolist() == [2, 1, 0]
    assert ds[0].image.shape == (30, 40, 3) and ds[0].image.dtype == np.uint8  # no transform: the RGB array


def test_corrupt_and_missing_images_are_counted_and_replaced(tmp_path):
    labels = {"a0.jpg": 7, "a1.jpg": 7, "a2.jpg": 7, "b0.jpg": 8, "c0.jpg": 9, "t0.jpg": None}
    for name in ("a0.jpg", "a1.jpg", "b0.jpg", "c0.jpg", "t0.jpg"):
        _write_jpeg(tmp_path / name, (40, 30), (200, 10, 10) if name[0] == "a" else (10, 10, 200))
    (tmp_path / "b0.jpg").write_bytes(b"not a jpeg at all")  # corrupt, and alone in its class
    data = (tmp_path / "a1.jpg").read_bytes()
    (tmp_path / "a1.jpg").write_bytes(data[: len(data) // 2])  # truncated
    # a2.jpg is missing; t0.jpg becomes a test image below.
    path = _hand_dataset(tmp_path, {}, {k: v for k, v in labels.items() if k != "t0.jpg"})
    ds = CompetitionDataset(path, tmp_path)
    for index in range(len(ds)):
        sample = ds[index]
        assert sample.label == ds.labels[index]
        if ds.file_name(index) in ("a1.jpg", "a2.jpg"):
            assert sample.skipped >= 1
            assert sample.image[..., 0].mean() > 150  # replaced by a0.jpg, the readable red one of its class
        if ds.file_name(index) == "b0.jpg":
            assert sample.skipped >= 1 and (sample.image == 124).all()  # no readable image of its class: grey
    # Through a loader with workers, the batches carry the count back to the main process.
    preset = EvalPreset(img_size=16)
    ds = CompetitionDataset(path, tmp_path, transform=preset)
    loader = create_loader(dataset=ds, batch_size=2, num_workers=2, drop_last=False)
    batches = list(loader)
    assert sum(int(b.skipped.gt(0).sum()) for b in batches) == 3  # a1, a2, b0
    assert all(b.image.shape[1:] == (3, 16, 16) for b in batches)
    assert torch.cat([b.label for b in batches]).tolist() == ds.labels.tolist()


def test_reduced_decode_keeps_the_resolution_it_needs(tmp_path):
    names = {f"big{i}.jpg": 7 for i in range(6)}
    for i, name in enumerate(names):
        _write_jpeg(tmp_path / name, (800, 600), (40 * i, 100, 100))
    path = _hand_dataset(tmp_path, {name: (800, 600) for name in names}, names)

    plans, seen = [], []

    class SpyTrain(TrainPreset):
        def plan(self, width, height):
            plans.append(super().plan(width, height))
            return plans[-1]

        def __call__(self, image, plan=None):
            seen.append(image.shape)
            return super().__call__(image, plan)

    class SpyEval(EvalPreset):
        def __call__(self, image, plan=None):
            seen.append((image.shape, plan))
            return super().__call__(image, plan)

    ds = CompetitionDataset(path, tmp_path, transform=SpyTrain(img_size=96, seed=0))
    for _ in range(5):
        for index in range(len(ds)):
            assert ds[index].image.shape == (3, 96, 96)
    reduced = 0
    for plan, shape in zip(plans, seen, strict=True):
        crop_width = (plan.crop.x1 - plan.crop.x0) * 800  # the crop at full resolution
        assert min(shape[:2]) >= 96  # what reached the transform still has img_size pixels each way
        reduced += shape[1] < 0.6 * crop_width
    assert reduced > 5  # and many crops were decoded at reduced scale
    # Eval: the shorter side must still reach img_size / crop_pct = 73; 600 / 8 = 75 does.
    seen.clear()
    ds = CompetitionDataset(path, tmp_path, transform=SpyEval(img_size=64, crop_pct=0.875))
    assert ds[0].image.shape == (3, 64, 64)
    (shape, plan), *_ = seen
    assert shape[:2] == (75, 100) and plan.size[1] >= 73


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0 chroma
def test_decoding_stops_below_the_crop_with_the_same_pixels(tmp_path, subsampling):
    """Rows below the crop are not decoded (the frame height is lowered), and the crop's pixels are unchanged."""
    import dataclasses

    from inatcomp.data import dataset as dataset_module
    from inatcomp.data.transforms import FULL_CROP

    names = {f"p{i}.jpg": 7 for i in range(12)}
    rng = np.random.default_rng(0)
    for name in names:
        pixels = rng.integers(0, 255, (600, 800, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / name, quality=90, subsampling=subsampling)
    path = _hand_dataset(tmp_path, {name: (800, 600) for name in names}, names)
    shortened = []
    real = dataset_module._truncated_jpeg

    def spy(data, rows):
        out = real(data, rows)
        shortened.append(out is not None and len(out) == len(data))
        return out

    dataset_module._truncated_jpeg = spy
    try:
        for scale in ((0.08, 0.3), (0.3, 1.0)):
            ds = CompetitionDataset(path, tmp_path, transform=TrainPreset(img_size=96, scale=scale, seed=3))
            for i in range(len(ds)):
                ds.transform.reseed(i)
                image, plan = ds._read(i)
                ds.transform.reseed(i)
                reference_plan = ds.transform.plan(800, 600)
                with Image.open(ds.path(i)) as im:
                    im.draft("RGB", reference_plan.size)
                    full = np.asarray(im.convert("RGB"))
                x0, y0, x1, y1 = reference_plan.crop.pixels(full.shape[1], full.shape[0])
                assert plan == dataclasses.replace(reference_plan, crop=FULL_CROP)
                np.testing.assert_array_equal(image, full[y0:y1, x0:x1])
    finally:
        dataset_module._truncated_jpeg = real
    assert sum(shortened) >= 6  # most crops end well above the bottom row: those decodes were shortened
    # Progressive JPEGs are decoded whole.
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "prog.jpg", progressive=True)
    assert real((tmp_path / "prog.jpg").read_bytes(), 20) is None


def test_jpeg_header_size_and_rgb_arrays_match_pil(tmp_path):
    """The header size is PIL's, and the zero-copy RGB export (with its crop) equals PIL's own array."""
    from inatcomp.data import dataset as dataset_module

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (61, 83, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "base.jpg", quality=90)
    Image.fromarray(pixels).save(tmp_path / "prog.jpg", progressive=True)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.jpg")
    Image.fromarray(pixels).save(tmp_path / "img.png")
    for name in ("base.jpg", "prog.jpg", "grey.jpg"):
        with Image.open(tmp_path / name) as im:
            assert dataset_module._jpeg_size((tmp_path / name).read_bytes()) == im.size
    assert dataset_module._jpeg_size((tmp_path / "img.png").read_bytes()) is None
    assert dataset_module._jpeg_size(b"\xff\xd8\xff") is None
    for name in ("base.jpg", "grey.jpg", "img.png"):
        with Image.open(tmp_path / name) as im:
            im.load()
            rgb = im.convert("RGB")
            for box in (None, (0, 0, 83, 61), (5, 7, 40, 33), (82, 60, 83, 61)):
                expected = np.asarray(rgb.crop(box) if box else rgb)
                out = dataset_module.rgb_array(im, box)
                assert out.flags.c_contiguous and out.dtype == np.uint8
                np.testing.assert_array_equal(out, expected)
    # An image stored in several blocks cannot be exported without a copy: PIL's array instead.
    big = Image.new("RGB", (3000, 2000), (9, 8, 7))
    np.testing.assert_array_equal(dataset_module.rgb_array(big, (10, 20, 30, 50)), np.full((30, 20, 3), (9, 8, 7)))


def test_decode_size_bounds():
    preset = TrainPreset(img_size=224, seed=1)
    for _ in range(200):
        crop = preset.sample_crop(800, 600)
        width, height = preset.decode_size(800, 600, crop)
        assert width <= 800 and height <= 600
        side = min((crop.x1 - crop.x0) * width, (crop.y1 - crop.y0) * height)
        assert side >= 224 - 1e-6 or (width, height) == (800, 600)
    assert preset.decode_size(800, 600) == (800, 600)  # the smallest crop of the range needs the full size
    # Scale 1, ratio 1 cannot fit: the fallback crop, the whole 600 px height, is the smallest.
    width, height = TrainPreset(img_size=224, scale=(1.0, 1.0), ratio=(1.0, 1.0)).decode_size(800, 600)
    assert (width, height) in ((299, 224), (299, 225))
    assert EvalPreset(img_size=224).decode_size(1600, 1200) == (342, 256)  # shorter side 224 / 0.875
    assert EvalPreset(img_size=224).decode_size(100, 80) == (100, 80)


# --- transforms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(600, 800, 3), (31, 17, 3), (224, 224, 3)])
def test_preset_outputs(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for preset in (TrainPreset(img_size=48, seed=0), TrainPreset(img_size=48, magnitude=0.0), EvalPreset(img_size=48)):
        out = preset(image)
        assert out.shape == (3, 48, 48) and out.dtype == torch.float32
        assert out.abs().max() < 5  # normalised
    # Without augmentation, a full-image crop is the normalised resized image.
    flat = np.full((20, 20, 3), 128, dtype=np.uint8)
    out = TrainPreset(img_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0)(flat)
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, atol=1e-5)


def test_train_preset_is_random_and_reseedable():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    preset = TrainPreset(img_size=32, seed=3)
    a, b = preset(image), preset(image)
    assert not torch.equal(a, b)
    preset.reseed(5)
    c = preset(image)
    preset.reseed(5)
    assert torch.equal(c, preset(image))


def _torchvision_jitter(image: np.ndarray, factors: tuple[float, float, float, float], order) -> np.ndarray:
    """The reference: torchvision's colour functions on a float tensor, in the given order, back to 0–255."""
    from torchvision.transforms import functional as F  # noqa: N812

    steps = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    tensor = torch.from_numpy(image).permute(2, 0, 1).double() / 255
    for step in order:
        tensor = steps[step](tensor, factors[step])
    return tensor.permute(1, 2, 0).numpy() * 255


@pytest.mark.parametrize("seed", range(4))
def test_color_jitter_matches_torchvision(seed):
    """Each fused step (one cv2.transform on uint8) is torchvision's step, up to the uint8 rounding of each step."""
    from inatcomp.data.transforms import color_jitter

    rng = np.random.default_rng(seed)
    # Smooth colours with bright and dark patches, so that the clipping after each step matters.
    image = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_CUBIC)
    for _ in range(10):
        factors = (*rng.uniform(0.6, 1.4, 3), 0.0)
        order = rng.permutation(4)
        out = color_jitter(image, *factors, order=order)
        assert out.dtype == np.uint8 and out.shape == image.shape
        difference = np.abs(out - _torchvision_jitter(image, factors, order))
        assert difference.max() <= 2.5 and difference.mean() < 0.75
    # Hue works on OpenCV's 180-step uint8 hue, so one step of it moves a saturated colour by a few levels.
    factors = (1.2, 0.8, 1.3, 0.1)
    difference = np.abs(
        color_jitter(image, *factors, order=(3, 0, 1, 2)) - _torchvision_jitter(image, factors, (3, 0, 1, 2))
    )
    assert np.percentile(difference, 99) <= 6 and difference.mean() < 1.5
    # Factor 1 (hue 0) leaves the image alone; factor 0 gives black, the mean grey and the grey image.
    assert color_jitter(image, 1.0, 1.0, 1.0, 0.0) is image
    assert not color_jitter(image, 0.0, 1.0, 1.0, 0.0).any()
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(float)
    assert np.abs(color_jitter(image, 1.0, 0.0, 1.0, 0.0) - grey.mean()).max() <= 1
    assert np.abs(color_jitter(image, 1.0, 1.0, 0.0, 0.0) - grey[..., None]).max() <= 1


def test_normalized_tensor_is_the_plain_formula():
    from inatcomp.data.transforms import normalized_tensor

    image = np.random.default_rng(0).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    out = normalized_tensor(image, 1 / (255 * std), -mean / std)
    assert out.dtype == torch.float32 and out.shape == (3, 37, 29) and out.is_contiguous()
    expected = ((image / 255 - mean) / std).transpose(2, 0, 1)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_train_preset_flips_and_jitters_as_configured():
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)  # bilinear down to 16
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    plain = ((cv2.resize(image, (16, 16), interpolation=cv2.INTER_LINEAR) / 255 - mean) / std).transpose(2, 0, 1)
    whole = {"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "color_jitter": 0.0}
    np.testing.assert_allclose(TrainPreset(img_size=16, hflip=1.0, **whole)(image), plain[..., ::-1], atol=2e-6)
    np.testing.assert_allclose(TrainPreset(img_size=16, hflip=0.0, **whole)(image), plain, atol=2e-6)
    # About half the images are flipped; with jitter, brightness spreads over the factor range.
    preset = TrainPreset(img_size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    flat = np.full((40, 40, 3), 100, dtype=np.uint8)
    levels = [float(preset(flat)[0].mean()) * std[0] + mean[0] for _ in range(400)]
    levels = np.asarray(levels) * 255  # a grey image: contrast and saturation keep it, brightness scales it
    assert 58 <= levels.min() < 66 and 134 < levels.max() <= 142
    flips = TrainPreset(img_size=16, color_jitter=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)
    flipped = [torch.equal(flips(image), TrainPreset(img_size=16, hflip=1.0, **whole)(image)) for _ in range(400)]
    assert 160 < sum(flipped) < 240


def test_resolve_data_config():
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    config = resolve_data_config(model)
    assert config.input_size == tuple(model.pretrained_cfg["input_size"])
    assert config.crop_pct == model.pretrained_cfg["crop_pct"]
    assert config.interpolation is Interpolation(model.pretrained_cfg["interpolation"])
    config = resolve_data_config(model, input_size=64, crop_pct=1.0, mean=(0.5, 0.5, 0.5))
    assert config.input_size == (3, 64, 64) and config.crop_pct == 1.0 and config.mean == (0.5, 0.5, 0.5)
    assert resolve_data_config() == DataConfig()
    assert isinstance(create_transform(config=config, training=True), TrainPreset)
    evaluation = create_transform(config=config, training=False)
    assert isinstance(evaluation, EvalPreset) and evaluation.img_size == 64


# --- samplers -------------------------------------------------------------------------------------------------------


def _imbalanced_labels() -> np.ndarray:
    counts = np.round(400 * 0.7 ** np.arange(12)).astype(int) + 1  # 401 … 8 images per class
    return np.random.default_rng(0).permutation(np.repeat(np.arange(12), counts))


def _chi_square_p(labels: np.ndarray, indices: np.ndarray, expected_share: np.ndarray) -> float:
    observed = np.bincount(labels[indices], minlength=len(expected_share))
    return stats.chisquare(observed, expected_share / expected_share.sum() * len(indices)).pvalue


def test_class_balanced_frequencies_are_uniform():
    labels = _imbalanced_labels()
    uniform = np.ones(12)
    balanced = create_sampler(sampler_type=SamplerType.CLASS_BALANCED, labels=labels, num_samples=2400, seed=0)
    random = create_sampler(sampler_type=SamplerType.RANDOM, labels=labels, num_samples=2400, seed=0)
    assert _chi_square_p(labels, np.fromiter(balanced, int), uniform) > 0.05
    assert _chi_square_p(labels, np.fromiter(random, int), uniform) < 1e-6
    # Within a class, its images take turns: a class of 9 images drawn 200 times uses each 22 or 23 times.
    drawn = np.fromiter(balanced, int)
    rare = drawn[labels[drawn] == 11]
    assert len(rare) == 200 and len(np.unique(rare)) == (labels == 11).sum() == 9
    assert set(np.bincount(rare)[np.unique(rare)].tolist()) == {22, 23}


def test_sqrt_frequencies_follow_sqrt_counts():
    labels = _imbalanced_labels()
    counts = np.bincount(labels)
    sampler = create_sampler(sampler_type=SamplerType.SQRT, labels=labels, num_samples=3000, seed=1)
    observed = np.bincount(labels[np.fromiter(sampler, int)], minlength=12)
    np.testing.assert_allclose(observed, np.sqrt(counts) / np.sqrt(counts).sum() * 3000, atol=1.0)


@pytest.mark.parametrize("sampler_type", list(SamplerType))
def test_sampler_is_deterministic_and_resumes_mid_epoch(sampler_type):
    labels = _imbalanced_labels()
    first = create_sampler(sampler_type=sampler_type, labels=labels, seed=7)
    first.set_epoch(2)
    full = list(first)
    again = create_sampler(sampler_type=sampler_type, labels=labels, seed=7)
    again.set_epoch(2)
    assert list(again) == full
    again.set_epoch(3)
    assert list(again) != full
    # Stop after 100 samples, save, restore into a fresh sampler: the rest of the epoch follows.
    run = create_sampler(sampler_type=sampler_type, labels=labels, seed=7)
    run.set_epoch(2)
    iterator = iter(run)
    head = [next(iterator) for _ in range(100)]
    state = run.state_dict()
    assert state["epoch"] == 2 and state["position"] == 100
    resumed = create_sampler(sampler_type=sampler_type, labels=labels, seed=7)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(2)  # what a trainer does at the top of the epoch: keeps the position
    assert head + list(resumed) == full
    assert list(resumed) == full  # the next pass of the same epoch is whole again
    assert run.state_dict(consumed=64)["position"] == 64  # a trainer's count overrides the prefetched one


@pytest.mark.parametrize("num_samples", [1200, 1201])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(num_samples):
    labels = _imbalanced_labels()
    shards = []
    for rank in range(3):
        sampler = create_sampler(
            sampler_type=SamplerType.CLASS_BALANCED,
            labels=labels,
            num_samples=num_samples,
            seed=11,
            rank=rank,
            world_size=3,
        )
        sampler.set_epoch(4)
        shards.append(list(sampler))
        assert len(shards[-1]) == len(sampler)
    assert len({len(s) for s in shards}) == 1
    global_order = sampler.global_order(4)
    interleaved = np.stack([np.asarray(s) for s in shards], axis=1).ravel()
    assert interleaved.tolist() == global_order.tolist()  # each rank a disjoint slice of one global order
    unpadded = global_order[:num_samples]
    single = create_sampler(sampler_type=SamplerType.CLASS_BALANCED, labels=labels, num_samples=num_samples, seed=11)
    assert single.global_order(4)[:num_samples].tolist() == unpadded.tolist()  # same order whatever the world size


# --- loader and learning --------------------------------------------------------------------------------------------


def test_workers_are_seeded_differently_and_reproducibly(tmp_path):
    names = {f"img{i}.jpg": 7 for i in range(8)}
    for name in names:
        _write_jpeg(tmp_path / name, (64, 64), (90, 120, 150))
    _write_jpeg(tmp_path / "img0.jpg", (64, 64), (90, 120, 150))
    path = _hand_dataset(tmp_path, {}, names)
    # Every file is the same picture, so differences come from the augmentation alone.
    for name in names:
        (tmp_path / name).write_bytes((tmp_path / "img0.jpg").read_bytes())

    def run() -> list[torch.Tensor]:
        ds = CompetitionDataset(path, tmp_path, transform=TrainPreset(img_size=16))
        return [b.image for b in create_loader(dataset=ds, batch_size=1, num_workers=2, seed=5)]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], first[1])  # batches 0 and 1 come from different workers


def test_tiny_model_learns_through_the_loader(releases):
    torch.manual_seed(0)
    release = releases[Preset.INAT2018]
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    train = CompetitionDataset(
        release / "train2018.json",
        release,
        transform=TrainPreset(img_size=32, scale=(0.5, 1.0), magnitude=0.25, mean=mean, std=std),
    )
    sampler = create_sampler(sampler_type=SamplerType.SQRT, labels=train.labels, num_samples=1536, seed=0)
    loader = create_loader(dataset=train, batch_size=32, sampler=sampler, num_workers=0, drop_last=True)
    classes = train.num_classes
    model = nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(48, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, classes),
    )  # fmt: skip
    criterion = create_loss(loss_type=LossType.TAXONOMY_SMOOTHING, smoothing=0.1, taxonomy=train.taxonomy())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for batch in loader:
        loss = criterion(model(batch.image), batch.label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    evaluation = CompetitionDataset(
        release / "train2018.json", release, transform=EvalPreset(img_size=32, crop_pct=1.0, mean=mean, std=std)
    )
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in create_loader(dataset=evaluation, batch_size=128):
            correct += int((model(batch.image).argmax(1) == batch.label).sum())
    accuracy = correct / len(evaluation)
    chance = (evaluation.class_counts() / len(evaluation)).max()  # always guessing the largest class
    assert accuracy > max(3 / classes, chance + 0.15), f"accuracy {accuracy:.2f}, majority {chance:.2f}"
