"""Tests of the uint8 data path: workers' uint8 crops normalised on the device give the float path's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from inatcomp.data import CompetitionDataset, EvalPreset, TrainPreset, create_loader
from inatcomp.data.feed import InputNorm, device_batches
from inatcomp.models.factory import create_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_batches_reach_the_model_normalised_as_the_float_presets_do(tmp_path, tiny_dataset, channels_last):
    path = tiny_dataset(tmp_path, names=["Aa bb", "Cc dd", "Ee ff"], per_class=4, size=40)
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=3).eval()
    norm = InputNorm(MEAN, STD, channels_last=channels_last)
    for make in (
        lambda uint8: TrainPreset(img_size=32, scale=(0.3, 1.0), seed=5, mean=MEAN, std=STD, uint8=uint8),
        lambda uint8: EvalPreset(img_size=32, mean=MEAN, std=STD, uint8=uint8),
    ):
        batches = {}
        for uint8 in (False, True):
            dataset = CompetitionDataset(path, tmp_path, transform=make(uint8))
            loader = create_loader(dataset=dataset, batch_size=6, seed=3)
            batches[uint8] = [b.image for b in loader]
        assert batches[True][0].dtype == torch.uint8 and batches[True][0].shape == (6, 32, 32, 3)
        for floats, raw in zip(batches[False], batches[True], strict=True):
            inputs = norm(raw)
            assert inputs.shape == floats.shape and inputs.dtype == torch.float32
            assert inputs.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            torch.testing.assert_close(inputs, floats, atol=2e-6, rtol=0)
            with torch.no_grad():
                torch.testing.assert_close(model(inputs), model(floats), atol=1e-4, rtol=0)


def test_float_batches_pass_through_the_norm_unchanged():
    floats = torch.randn(2, 3, 8, 8)
    assert torch.equal(InputNorm(MEAN, STD)(floats), floats)


def test_device_batches_keep_order_values_and_stop_at_the_end():
    batches = [(torch.full((2, 4, 4, 3), i, dtype=torch.uint8), torch.tensor([i, i]), f"extra{i}") for i in range(5)]
    out = list(device_batches(iter(batches), torch.device("cpu")))
    assert len(out) == 5
    for i, (images, labels, extra) in enumerate(out):
        assert int(images[0, 0, 0, 0]) == i and labels.tolist() == [i, i] and extra == f"extra{i}"
    assert list(device_batches([], torch.device("cpu"))) == []


def test_device_batches_read_one_batch_ahead():
    pulled = []

    def source():
        for i in range(4):
            pulled.append(i)
            yield (torch.tensor([i]),)

    feed = device_batches(source(), torch.device("cpu"), ahead=1)
    first = next(feed)
    assert int(first[0]) == 0 and pulled == [0, 1]  # the next batch's copy started before the first is used
    assert [int(b[0]) for b in feed] == [1, 2, 3]


def test_normalisation_is_the_plain_formula_for_chw_and_hwc_uint8():
    rng = np.random.default_rng(0)
    hwc = torch.from_numpy(rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8))
    expected = (hwc.permute(0, 3, 1, 2).double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / (
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    )
    norm = InputNorm(MEAN, STD)
    torch.testing.assert_close(norm(hwc).double(), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(norm(hwc.permute(0, 3, 1, 2).contiguous()).double(), expected, atol=2e-6, rtol=0)


def test_device_batches_can_move_only_the_leading_items():
    batches = [(torch.zeros(2, 3), torch.tensor([1, 2]), "keep")]
    ((images, counts, extra),) = list(device_batches(batches, torch.device("cpu"), leading=1))
    assert images.shape == (2, 3) and counts is batches[0][1] and extra == "keep"
