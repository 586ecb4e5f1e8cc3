"""Tests of ``--decode gpu``: the fallback without CUDA; its batch decoding and view cutting, run on the CPU."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from inatcomp.data.gpudecode import BatchDecoder, DecodeMode, resize_crop, resolve_decode
from inatcomp.formats.predictions import open_predictions
from inatcomp.models.checkpoints import save_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.predict.engine import predict
from inatcomp.predict.gpuviews import BytesDataset, bytes_collate, device_view_batches
from inatcomp.predict.tta import TTAMode, _ViewDataset

NAMES = ["Aa bb", "Cc dd", "Ee ff"]


def _encoded(pixels: np.ndarray, mode: str = "RGB", **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, **save)
    return buffer.getvalue()


@pytest.fixture
def setup(tmp_path, tiny_dataset):
    data = tiny_dataset(tmp_path, names=NAMES, per_class=2, size=48, file="test.json")
    torch.manual_seed(0)
    metadata = {"model": "resnet10t", "num_classes": 3, "category_ids": [0, 1, 2],
                "data_config": {"input_size": [3, 32, 32], "crop_pct": 0.875, "interpolation": "bicubic"}}  # fmt: skip
    save_checkpoint(tmp_path / "run" / "best", create_model("resnet10t", num_classes=3), metadata)
    return data, tmp_path / "run"


def test_decode_gpu_without_cuda_warns_once_and_predicts_as_decode_cpu(setup, tmp_path, caplog):
    data, run = setup
    cpu = open_predictions(predict(checkpoint=run, data=data, tta="flip", out=tmp_path / "cpu.pred", device="cpu"))
    caplog.set_level(logging.WARNING)
    gpu = open_predictions(
        predict(checkpoint=run, data=data, tta="flip", out=tmp_path / "gpu.pred", device="cpu", decode="gpu")
    )
    assert [r.getMessage() for r in caplog.records if "--decode gpu" in r.getMessage()] == [
        "--decode gpu: no CUDA device (the run is on cpu); decoding on the CPU"
    ]
    assert gpu.header["decode"] == cpu.header["decode"] == "cpu"
    np.testing.assert_array_equal(gpu.memmap(), cpu.memmap())
    assert resolve_decode("cpu", torch.device("cpu")) is DecodeMode.CPU


def test_batch_decoder_decodes_jpegs_together_and_falls_back_file_by_file():
    y, x = np.mgrid[0:24, 0:40]
    pixels = np.stack([x * 6, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it closely
    baseline = _encoded(pixels, format="JPEG", quality=95)
    files = [
        baseline,
        _encoded(pixels, format="PNG"),  # not a JPEG: PIL
        _encoded(pixels, format="JPEG", quality=95, progressive=True),
        b"\xff\xd8\xff\xe0 broken",  # spoils the batched call: the others decode one by one
        _encoded(pixels, "CMYK", format="JPEG"),
    ]
    decoder = BatchDecoder(torch.device("cpu"))
    out = decoder(files)
    assert out[3] is None and decoder.fallbacks >= 2  # the PNG and the broken file at least
    for i in (0, 1, 2, 4):
        assert out[i].shape == (3, 24, 40) and out[i].dtype == torch.uint8
    assert torch.equal(out[1].permute(1, 2, 0), torch.from_numpy(pixels))  # lossless PNG
    for i in (0, 2):
        assert float((out[i].permute(1, 2, 0).float() - torch.from_numpy(pixels).float()).abs().mean()) < 8
    assert len(decoder([baseline, baseline])) == 2


def test_views_cut_on_the_device_match_the_cpu_views(setup, tmp_path):
    data, _ = setup
    paths = [str(tmp_path / im["file_name"]) for im in json.loads(data.read_text())["images"]]
    paths.append(str(tmp_path / "missing.jpg"))
    cpu = _ViewDataset(paths, mode=TTAMode.TEN_CROP, crop_size=32, crop_pct=0.875, interpolation=2, views=None)
    dataset = BytesDataset(paths)
    batches = [bytes_collate([dataset[i] for i in range(start, min(start + 4, len(paths)))])
               for start in range(0, len(paths), 4)]  # fmt: skip
    made = list(device_view_batches(batches, BatchDecoder(torch.device("cpu")), paths=paths, mode=TTAMode.TEN_CROP,
                                    crop_size=32, crop_pct=0.875, views=None))  # fmt: skip
    views = torch.cat([b[0] for b in made])
    counts = torch.cat([b[1] for b in made])
    failed = torch.cat([b[3] for b in made])
    assert counts.tolist() == [10] * (len(paths) - 1) + [0] and failed.tolist() == [0] * (len(paths) - 1) + [1]
    expected = np.concatenate([cpu[i][0] for i in range(len(paths) - 1)])
    assert views.shape == expected.shape and views.dtype == torch.uint8
    # The same views up to the resize filters' rounding (torch's antialiased bicubic against OpenCV's).
    assert float((views.float() - torch.from_numpy(expected).float()).abs().mean()) < 3.0


def test_resize_crop_flips_and_keeps_an_unresized_box_exact():
    image = torch.arange(3 * 6 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 6, 8)
    assert torch.equal(resize_crop(image, (2, 1, 6, 5), (4, 4)), image[:, 1:5, 2:6])
    assert torch.equal(resize_crop(image, (2, 1, 6, 5), (4, 4), flip=True), image[:, 1:5, 2:6].flip(-1))
    assert resize_crop(image, (0, 0, 8, 6), (4, 3)).shape == (3, 3, 4)


# --------------------------------------------------------------------------------------------------------------------
# Training


def test_train_decode_gpu_without_cuda_warns_and_trains_as_decode_cpu(tmp_path, tiny_dataset, caplog):
    from conftest import tiny_train_config
    from safetensors.torch import load_file

    from inatcomp.train import train

    train_json = tiny_dataset(tmp_path / "data", names=NAMES, per_class=6)
    caplog.set_level(logging.WARNING)
    gpu = train(tiny_train_config(train_json, tmp_path / "gpu", decode="gpu", device="cpu"))
    assert sum("--decode gpu: no CUDA device" in r.getMessage() for r in caplog.records) == 1
    cpu = train(tiny_train_config(train_json, tmp_path / "cpu", device="cpu"))
    a, b = load_file(gpu.last_checkpoint), load_file(cpu.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_device_augmentation_draws_and_crops_as_the_cpu_preset(tmp_path, tiny_dataset):
    from inatcomp.data import CompetitionDataset, TrainPreset
    from inatcomp.train.gpuaugment import DeviceAugment, RawTrainSet, raw_collate

    train_json = tiny_dataset(tmp_path, names=NAMES, per_class=4, size=48)
    preset = TrainPreset(img_size=32, scale=(0.5, 1.0), color_jitter=0.0, uint8=True)
    dataset = CompetitionDataset(train_json, tmp_path, transform=preset)
    raw = RawTrainSet(dataset)
    items = []
    for i in range(len(dataset)):
        raw.reseed(100 + i)
        items.append(raw[i])
    images, batch = DeviceAugment(preset, torch.device("cpu"))(raw_collate(items))
    assert images.shape == (len(dataset), 32, 32, 3) and images.dtype == torch.uint8
    assert batch.skipped.tolist() == [0] * len(dataset)
    expected = []
    for i in range(len(dataset)):
        dataset.reseed(100 + i)  # the same draws: crop first, then flip and colour
        expected.append(dataset[i].image)
    # The same crops and flips, up to the resize filters (torch's antialiased bilinear against OpenCV's).
    assert float((images.float() - torch.stack(expected).float()).abs().mean()) < 4.0


def test_training_through_the_device_augmentation_runs(tmp_path, tiny_dataset, monkeypatch):
    """The --decode gpu training path, run on the CPU (the decode forced to gpu): it trains and counts a bad image."""
    from conftest import tiny_train_config

    import inatcomp.train.parts as parts
    from inatcomp.train import train

    train_json = tiny_dataset(tmp_path / "data", names=NAMES, per_class=6)
    first = json.loads(train_json.read_text())["images"][0]["file_name"]
    (train_json.parent / first).write_bytes(b"\xff\xd8\xff\xe0 broken")
    monkeypatch.setattr(parts, "resolve_decode", lambda decode, device: DecodeMode.GPU)
    result = train(tiny_train_config(train_json, tmp_path / "run", decode="gpu", device="cpu", epochs=2,
                                     color_jitter=0.4, mixup=0.5))  # fmt: skip
    assert all(np.isfinite(row["train_loss"]) for row in result.metrics)
    assert sum(row["skipped_images"] for row in result.metrics) >= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="nvJPEG needs CUDA")
def test_decode_gpu_on_cuda_predicts_as_decode_cpu_up_to_resizing(setup, tmp_path):
    data, run = setup
    common = dict(checkpoint=run, data=data, tta="ten-crop", device="cuda")
    cpu = open_predictions(predict(out=tmp_path / "cpu.pred", **common))
    gpu = open_predictions(predict(out=tmp_path / "gpu.pred", decode="gpu", **common))
    assert gpu.header["decode"] == "gpu" and gpu.image_ids.tolist() == cpu.image_ids.tolist()
    np.testing.assert_allclose(gpu.memmap().astype(np.float32), cpu.memmap().astype(np.float32), atol=0.05)
