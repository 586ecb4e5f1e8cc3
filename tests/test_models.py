"""Tests of model creation and of checkpoints (safetensors plus JSON, never pickle)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from inatcomp.fileio import resolve_checkpoint
from inatcomp.models.checkpoints import flatten_state, load_checkpoint, save_checkpoint, unflatten_state
from inatcomp.models.factory import create_model
from inatcomp.models.freezing import fold_batchnorm


def test_checkpoint_round_trip_with_training_state(tmp_path):
    model = create_model("resnet10t", num_classes=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    metadata = {"model": "resnet10t", "category_ids": [3, 1, 4, 15, 9, 2, 6], "epoch": 1}
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "epoch": 1, "pair": (1, "a")}
    weights = save_checkpoint(tmp_path / "run" / "last", model, metadata, training_state=state)
    assert weights.name == "last.safetensors"
    assert not list((tmp_path / "run").glob("*.tmp"))
    loaded, meta, restored = load_checkpoint(tmp_path / "run", with_training_state=True)
    assert meta == metadata
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded[key], tensor), key
    assert restored["epoch"] == 1 and restored["pair"] == (1, "a")
    assert torch.equal(restored["rng"], state["rng"])
    fresh = torch.optim.AdamW(create_model("resnet10t", num_classes=7).parameters(), lr=1e-3)
    fresh.load_state_dict(restored["optimizer"])
    first = next(iter(optimizer.state_dict()["state"].values()))["exp_avg"]
    assert torch.equal(next(iter(fresh.state_dict()["state"].values()))["exp_avg"], first)


def test_flatten_refuses_objects_it_cannot_store():
    with pytest.raises(TypeError, match="cannot store"):
        flatten_state({"bad": object()})
    tensors, skeleton = flatten_state({"a": [1, 2.5, None, True], 3: torch.ones(2)})
    assert unflatten_state(json.loads(json.dumps(skeleton)), tensors)[3].sum() == 2


def test_run_folder_prefers_best_and_reports_missing(tmp_path):
    model = create_model("resnet10t", num_classes=3)
    save_checkpoint(tmp_path / "last", model, {"which": "last"})
    assert resolve_checkpoint(tmp_path).name == "last.safetensors"
    save_checkpoint(tmp_path / "best", model, {"which": "best"})
    assert resolve_checkpoint(tmp_path).name == "best.safetensors"
    with pytest.raises(ValueError, match="no checkpoint"):
        resolve_checkpoint(tmp_path / "nothing")


def test_pretrained_from_a_local_file_keeps_the_backbone(tmp_path):
    source = create_model("resnet10t", num_classes=1000)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("resnet10t", num_classes=5, pretrained=path, channels_last=True)
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 5
    with pytest.raises(ValueError, match="no such weights file"):
        create_model("resnet10t", num_classes=5, pretrained=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a timm architecture"):
        create_model("no_such_net", num_classes=5)


def test_folded_batchnorm_gives_the_same_outputs_and_leaves_the_model_alone(trained_statistics):
    torch.manual_seed(0)
    model = trained_statistics(create_model("resnet10t", num_classes=7)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, count = fold_batchnorm(model)
    assert count == 14 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 40, 40)
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    first = [next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d)) for net in (model, folded)]
    assert (first[0].weight - first[1].weight).abs().max() > 0.01  # the statistics went into the weights
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # a copy was folded


def test_folding_refuses_training_mode_and_keeps_untraceable_models():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model("resnet10t", num_classes=3).train())

    class DataDependent(torch.nn.Module):  # torch.fx cannot trace control flow on a tensor's value
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y

    model = DataDependent().eval()
    assert fold_batchnorm(model) == (model, 0)
    # timm's BatchNormAct2d (normalisation and activation in one layer) is traced through, not folded.
    fused_act = create_model("mobilenetv3_small_050", num_classes=3).eval()
    assert fold_batchnorm(fused_act) == (fused_act, 0)
