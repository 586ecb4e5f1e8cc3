"""Tests of test-time augmentation and prediction files: view geometry, the file format, predict, score-pred."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.cli import main
from inatcomp.data import create_loader
from inatcomp.formats.predictions import open_predictions
from inatcomp.models.checkpoints import save_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.freezing import fold_batchnorm
from inatcomp.predict.engine import _InputBuffer, load_model, predict
from inatcomp.predict.submission import write_submission
from inatcomp.predict.tta import (
    AverageMode,
    TTAMode,
    View,
    _average,
    _collate,
    _ViewDataset,
    decode_factor,
    load_views,
    view_boxes,
)
from inatcomp.score.scoring import score_predictions
from inatcomp.world.synth import SynthConfig, write_export

CROP = 32


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    write_export(root / "export", SynthConfig(species=12, photos=1500, seed=1, image_size=48))
    build_dataset(root / "export", root / "release", rules=rules_for(Preset.INAT2018, max_train=60), seed=0)
    return root / "release"


@pytest.fixture(scope="module")
def checkpoint(release, tmp_path_factory, trained_statistics):
    torch.manual_seed(0)
    categories = sorted(c["id"] for c in json.loads((release / "train2018.json").read_text())["categories"])
    # Statistics as after training, so that folding them into the convolutions shows.
    model = trained_statistics(create_model("resnet10t", num_classes=len(categories)))
    metadata = {
        "model": "resnet10t",
        "num_classes": len(categories),
        "category_ids": categories,
        "data_config": {
            "input_size": [3, CROP, CROP],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "crop_pct": 0.875,
            "interpolation": "bicubic",
        },
    }
    run = tmp_path_factory.mktemp("run")
    save_checkpoint(run / "best", model, metadata)
    return run


def _close(view: View, box: tuple[float, float, float, float], flip: bool = False) -> bool:
    return np.allclose(view.box, box) and view.flip is flip


# --------------------------------------------------------------------------------------------------------------------
# Geometry


def test_center_and_flip_boxes_on_a_landscape_image():
    # 400x300, crop 224, crop_pct 0.875: shorter side resized to 256, the image to 341.33 x 256.
    w, h = 224 / (400 * 256 / 300), 224 / 256
    center = (0.5 * (1 - w), 0.5 * (1 - h), w, h)
    (only,) = view_boxes(TTAMode.CENTER, 400, 300, 224)
    assert only.scale == pytest.approx(1 / 0.875) and _close(only, center)
    assert only.pixels(400, 300) == (69, 19, 331, 281)
    plain, mirrored = view_boxes("flip", 400, 300, 224)
    assert _close(plain, center) and _close(mirrored, center, flip=True)


def test_five_and_ten_crop_boxes_are_the_corners_and_centre():
    w, h = 224 / (400 * 256 / 300), 224 / 256
    five = view_boxes(TTAMode.FIVE_CROP, 400, 300, 224)
    expected = [(0, 0), (1 - w, 0), (0, 1 - h), (1 - w, 1 - h), ((1 - w) / 2, (1 - h) / 2)]
    assert len(five) == 5
    for view, (x, y) in zip(five, expected):
        assert _close(view, (x, y, w, h))
    ten = view_boxes(TTAMode.TEN_CROP, 400, 300, 224)
    assert [v.box for v in ten[:5]] == [v.box for v in ten[5:]] == [v.box for v in five]
    assert [v.flip for v in ten] == [False] * 5 + [True] * 5


@pytest.mark.parametrize(("width", "height"), [(400, 300), (533, 800), (800, 531), (500, 375), (257, 256)])
def test_crops_are_exactly_the_crop_size_in_pixels(width, height):
    # Cut from the image resized to a shorter side of 256 (rounded), each of the ten crops is 224 px square:
    # no crop is one pixel off and resampled again.
    ratio = 256 / min(width, height)
    rw, rh = round(width * ratio), round(height * ratio)
    for view in view_boxes(TTAMode.TEN_CROP, width, height, 224, crop_pct=224 / 256):
        x0, y0, x1, y1 = view.pixels(rw, rh)
        assert (x1 - x0, y1 - y0) == (224, 224) and 0 <= x0 < x1 <= rw and 0 <= y0 < y1 <= rh


def test_multiscale_grid_per_scale():
    square = view_boxes(TTAMode.MULTISCALE, 300, 300, 100)
    assert len(square) == 1 + 9 + 9
    assert _close(square[0], (0, 0, 1, 1)) and square[0].scale == 1.0
    side = 1 / 1.5
    at_15 = [v for v in square if v.scale == 1.5]
    assert sorted({round(v.box[0], 6) for v in at_15}) == pytest.approx([0, (1 - side) / 2, 1 - side], abs=1e-6)
    assert all(np.isclose(v.box[2], side) and np.isclose(v.box[3], side) for v in at_15)
    landscape = view_boxes(TTAMode.MULTISCALE, 400, 300, 100)
    assert len(landscape) == 3 + 9 + 9  # at scale 1 the crop covers the height: a row of three


def test_upper_windows_touch_the_top_edge():
    views = view_boxes(TTAMode.UPPER, 300, 400, 224)
    assert len(views) == 6
    assert views[0].box == views[1].box and views[1].flip
    assert all(v.box[1] == 0 for v in views[2:])
    assert [round(v.box[0], 6) for v in views[2:5]] == pytest.approx(
        [0, (1 - views[2].box[2]) / 2, 1 - views[2].box[2]]
    )
    assert views[5].scale == 1.0 and _close(views[5], (0, 0, 1, 0.75))  # the top square of a portrait photo


def test_custom_views_from_yaml_and_json(tmp_path):
    yaml_file = tmp_path / "views.yaml"
    yaml_file.write_text("views:\n  - {scale: 1.0, box: [0, 0, 0.5, 0.5], flip: true}\n  - {scale: 1.2}\n")
    views = load_views(yaml_file)
    assert views == [View(1.0, (0.0, 0.0, 0.5, 0.5), True), View(1.2, None, False)]
    resolved = view_boxes(TTAMode.CUSTOM, 100, 100, 50, views=views)
    assert resolved[0] == views[0]
    assert _close(resolved[1], ((1 - 50 / 60) / 2, (1 - 50 / 60) / 2, 50 / 60, 50 / 60))
    json_file = tmp_path / "views.json"
    json_file.write_text(json.dumps([{"scale": 2, "box": [0.5, 0.5, 0.5, 0.5]}]))
    assert load_views(json_file) == [View(2.0, (0.5, 0.5, 0.5, 0.5), False)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "non-empty list"),
        ("[{scale: -1}]", "views[0]: scale"),
        ("[{scale: 1, box: [0.6, 0, 0.5, 0.5]}]", "outside the image"),
        ("[{scale: 1, box: [0, 0]}]", "views[0]: box"),
        ("[{scale: 1}, {scale: 1, flip: 3}]", "views[1]: flip"),
        ("[{scale: 1, crop: 3}]", "unknown key"),
    ],
)
def test_bad_views_are_refused_with_their_index(tmp_path, text, message):
    path = tmp_path / "views.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_views(path)


def test_decode_factor_keeps_crop_pixels():
    views = view_boxes(TTAMode.TEN_CROP, 800, 600, 224)
    assert decode_factor(views, 800, 600, 224) == pytest.approx(600 / 256)  # libjpeg can decode at 1/2
    assert decode_factor(view_boxes(TTAMode.MULTISCALE, 800, 600, 224), 800, 600, 224) == pytest.approx(600 / 336)
    assert decode_factor(view_boxes(TTAMode.CENTER, 100, 80, 224), 100, 80, 224) == 1.0


def test_views_are_cut_from_one_decode_and_flipped(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    cv2.imwrite(str(path), image[:, :, ::-1])
    dataset = _ViewDataset(
        [str(path)], mode=TTAMode.TEN_CROP, crop_size=16, crop_pct=0.5, interpolation=cv2.INTER_LINEAR, views=None
    )
    views, index, failed = dataset[0]
    assert views.shape == (10, 16, 16, 3) and index == 0 and failed == 0
    np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])
    # Shorter side 60 -> 32 (scale 2): the image is resized once to 43x32 and the views are 16 px slices of it.
    resized = cv2.resize(image, (43, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(views[0], resized[0:16, 0:16])
    np.testing.assert_array_equal(views[3], resized[16:32, 27:43])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_cut_the_views_dataset_items_cut(tmp_path, workers):
    # A loader's batches cut each image's views straight into the batch (in a worker, into its shared slot):
    # the same views, counts and failures as the dataset's items concatenated, an unreadable image included.
    rng = np.random.default_rng(1)
    paths = []
    for i in range(9):
        paths.append(str(tmp_path / f"{i}.jpg"))
        cv2.imwrite(paths[-1], rng.integers(0, 255, size=(40 + 3 * i, 70, 3), dtype=np.uint8))
    paths.insert(4, str(tmp_path / "missing.jpg"))
    # A truncated JPEG opens (its header is whole) and fails only when decoded, mid-batch: the views of the
    # images after it in that batch move up.
    truncated = Path(paths[7]).read_bytes()
    Path(paths[7]).write_bytes(truncated[: len(truncated) // 2])
    for mode in (TTAMode.TEN_CROP, TTAMode.MULTISCALE):
        dataset = _ViewDataset(paths, mode=mode, crop_size=16, crop_pct=0.875, interpolation=cv2.INTER_CUBIC,
                               views=None)  # fmt: skip
        items = [dataset[i] for i in range(len(paths))]
        loader = create_loader(dataset=dataset, batch_size=3, num_workers=workers, collate_fn=_collate)
        batches = list(loader)
        views = torch.cat([b[0] for b in batches])
        assert torch.equal(views, torch.from_numpy(np.concatenate([item[0] for item in items])))
        assert torch.cat([b[1] for b in batches]).tolist() == [len(item[0]) for item in items]
        assert torch.cat([b[2] for b in batches]).tolist() == list(range(len(paths)))
        assert torch.cat([b[3] for b in batches]).tolist() == [int(i in (4, 7)) for i in range(len(paths))]
        assert len(items[7][0]) == 0 and len(items[8][0]) > 0


def test_views_average_as_probabilities_or_logits():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]])
    counts = torch.tensor([2, 0, 1])
    prob = _average(logits, counts, AverageMode.PROB)
    assert torch.allclose(prob[0], torch.tensor([0.5, 0.5])) and torch.allclose(prob[1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(prob[2], logits[2].softmax(0))
    logit = _average(logits, counts, AverageMode.LOGIT)
    assert torch.allclose(logit[0], torch.tensor([0.5, 0.5])) and torch.allclose(logit.sum(1), torch.ones(3))


def test_equal_view_counts_average_like_the_gather():
    # Every image with the same number of views takes a reshape-and-mean path; it must match the general one.
    logits = torch.randn(12, 7, generator=torch.Generator().manual_seed(0)) * 3
    counts = torch.tensor([3, 3, 3, 3])
    for mode in AverageMode:
        values = logits.softmax(dim=1) if mode is AverageMode.PROB else logits
        expected = torch.stack([values[3 * i : 3 * i + 3].mean(dim=0) for i in range(4)])
        expected = expected if mode is AverageMode.PROB else expected.softmax(dim=1)
        torch.testing.assert_close(_average(logits, counts, mode), expected)
        general = _average(torch.cat([logits, logits[:1]]), torch.tensor([3, 3, 3, 3, 1]), mode)
        torch.testing.assert_close(general[:4], expected)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_buffer_normalises_like_the_plain_expression(layout, dtype):
    rng = np.random.default_rng(0)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    normalise = _InputBuffer(mean, std, layout, dtype, chunk_elements=2 * 6 * 6 * 3)  # two views per chunk
    for n in (5, 3, 8):  # reused for a smaller batch, grown for a larger one; the last chunk is partial
        views = torch.from_numpy(rng.integers(0, 256, size=(n, 6, 6, 3), dtype=np.uint8))
        x = normalise(views)
        expected = ((views.permute(0, 3, 1, 2).float() - mean) / std).to(dtype)
        assert x.shape == (n, 3, 6, 6) and x.dtype == dtype and x.is_contiguous(memory_format=layout)
        assert torch.equal(x, expected)  # the same float32 operations and one rounding: the same numbers


@pytest.mark.parametrize(("amp", "fold_bn"), [(None, False), (None, True), ("bf16", True)])
def test_predict_matches_the_straightforward_computation(release, checkpoint, tmp_path, amp, fold_bn):
    # Ten-crop through predict (prefetch thread, reused input buffer handed over in the autocast dtype, mean of
    # equal view counts) against each image's float32 views run through the checkpoint's model (BatchNorm not
    # folded, except under bf16, where folding changes the rounding) one image at a time.
    test = json.loads((release / "test2018.json").read_text())
    test["images"] = test["images"][:7]
    data = tmp_path / "test.json"
    data.write_text(json.dumps(test))
    out = predict(
        checkpoint=checkpoint,
        data=data,
        images=release,
        tta="ten-crop",
        out=tmp_path / "p",
        batch_size=3,
        amp=amp,
        fold_bn=fold_bn,
    )
    assert open_predictions(out).header["folded_batchnorm"] == (14 if fold_bn else 0)  # all of resnet10t's
    model, _ = load_model(checkpoint)
    if amp:
        model, _ = fold_batchnorm(model)
    dataset = _ViewDataset(
        [str(release / im["file_name"]) for im in test["images"]],
        mode=TTAMode.TEN_CROP,
        crop_size=CROP,
        crop_pct=0.875,
        interpolation=cv2.INTER_CUBIC,
        views=None,
    )
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    expected = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
        for i in range(len(dataset)):
            views, _, failed = dataset[i]
            assert failed == 0 and len(views) == 10
            x = (torch.from_numpy(views).permute(0, 3, 1, 2).float() - mean) / std
            expected.append(model(x).float().softmax(dim=1).mean(dim=0).numpy())
    # float16 rows (about 0.1 here: steps of 6e-5); an input 10% off moves them by 1e-3.
    got = open_predictions(out).memmap().astype(np.float32)
    # On CUDA predict runs there (device auto) and the reference on the CPU: bf16 kernels round differently.
    tolerance = 4e-4 if amp and torch.cuda.is_available() else 2e-4
    np.testing.assert_allclose(got, np.stack(expected), rtol=0, atol=tolerance)


# --------------------------------------------------------------------------------------------------------------------
# Predicting


def test_predict_ten_crop_rows_are_probabilities(release, checkpoint, tmp_path):
    data = release / "val2018.json"
    out = predict(checkpoint=checkpoint, data=data, images=release, tta=TTAMode.TEN_CROP, out=tmp_path / "p", workers=2)
    preds = open_predictions(out)
    val = json.loads((release / "val2018.json").read_text())
    assert preds.image_ids.tolist() == [im["id"] for im in val["images"]]
    scores = preds.memmap().astype(np.float32)
    assert np.allclose(scores.sum(axis=1), 1, atol=5e-3) and (scores >= 0).all()
    assert preds.header["tta"] == "ten-crop" and preds.header["views_total"] == 10 * len(val["images"])
    assert preds.header["failed_images"] == 0
    result = score_predictions(out, release / "val2018.json", k=3, dataset=release)
    assert result["images"] == len(val["images"]) and 0 <= result["top3_error"] <= result["top1_error"] <= 1
    analysis = result["analysis"]
    assert analysis["images"] == len(val["images"])
    assert sum(row["classes"] for row in analysis["supercategories"]) == len(
        {a["category_id"] for a in val["annotations"]}
    )
    top1_accuracy = np.mean([row["accuracy"] * row["classes"] for row in analysis["supercategories"]]) / np.mean(
        [row["classes"] for row in analysis["supercategories"]]
    )
    assert top1_accuracy == pytest.approx(1 - result["top1_error"], abs=1e-9)  # val: 3 images in every class


def test_logit_average_and_custom_views_through_the_cli(release, checkpoint, tmp_path, capsys):
    views = tmp_path / "views.yaml"
    views.write_text("- {scale: 1.0}\n- {scale: 1.0, flip: true}\n")
    out = tmp_path / "c.pred"
    args = ["predict", "--checkpoint", str(checkpoint), "--data", str(release / "val2018.json"), "--out", str(out)]
    assert main([*args, "--views", str(views), "--average", "logit", "--workers", "0", "--batch-size", "7"]) == 0
    header = open_predictions(out).header
    assert header["tta"] == "custom" and header["average"] == "logit" and len(header["views"]) == 2
    assert main(["score-pred", str(out), "--labels", str(release / "val2018.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == header["n_images"]


def test_unreadable_images_get_uniform_rows_and_are_counted(release, checkpoint, tmp_path, caplog):
    test = json.loads((release / "test2018.json").read_text())
    test["images"] = test["images"][:6]
    for im in test["images"]:
        (tmp_path / im["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(release / im["file_name"], tmp_path / im["file_name"])
    (tmp_path / test["images"][1]["file_name"]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / test["images"][4]["file_name"]).unlink()
    data = tmp_path / "test.json"
    data.write_text(json.dumps(test))
    caplog.set_level("INFO")
    # workers=0: the warnings are logged in this process, where caplog sees them (CUDA's default has workers).
    out = predict(checkpoint=checkpoint, data=data, tta="flip", out=tmp_path / "t.pred", batch_size=4, amp="bf16",
                  workers=0)  # fmt: skip
    preds = open_predictions(out)
    assert preds.header["failed_images"] == 2
    assert preds.header["failed_image_ids"] == [test["images"][1]["id"], test["images"][4]["id"]]
    scores = preds.memmap().astype(np.float32)
    uniform = np.full(preds.n_classes, 1 / preds.n_classes, dtype=np.float16).astype(np.float32)
    np.testing.assert_array_equal(scores[[1, 4]], [uniform, uniform])
    assert not np.allclose(scores[0], uniform)
    # One warning per bad image and one count, also when the predictions then become a submission.
    write_submission(out, format="inat2018", out=tmp_path / "sub.csv")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum(m.startswith("unreadable image ") for m in warnings) == 2
    assert [m for m in warnings if "2 " in m and "unreadable" in m] == [
        "2 unreadable image(s) got a uniform prediction (listed in the header)"
    ]
    assert "2 row(s) are uniform" in caplog.text


def test_prediction_headers_match_their_schema(release, checkpoint, tmp_path):
    import jsonschema

    from inatcomp.formats.kinds import SCHEMA_DIR

    schema = json.loads((SCHEMA_DIR / "predictions_header.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    views = [View(1.0), View(1.2, (0.0, 0.0, 0.5, 0.5), True)]
    out = predict(checkpoint=checkpoint, data=release / "val2018.json", tta="custom", views=views, out=tmp_path / "h")
    jsonschema.validate(open_predictions(out).header, schema)


def test_prefetch_keeps_order_raises_and_stops_early():
    from inatcomp.predict.engine import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))
    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    for item in prefetch(counting(), depth=2):
        if item == 3:
            break
    assert len(produced) < 10  # the thread stopped instead of running ahead to the end
    # Leaving after the producer is done and the queue is full must not hang on the end marker.
    for item in prefetch(iter(range(2)), depth=1):
        if item == 0:
            time.sleep(0.3)
            break
