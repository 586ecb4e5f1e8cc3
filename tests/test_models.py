"""Tests of model creation and of checkpoints (safetensors plus JSON, never pickle)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from inatcomp.models import (
    create_model,
    flatten_state,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
    unflatten_state,
)


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
