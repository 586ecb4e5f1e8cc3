"""Tests of ``--pretrained timm`` and ``--pretrained hf-hub:…``, offline, from a Hugging Face cache written here.

The cache holds weights made here (timm's ``resnet10t`` with every tensor drawn from a fixed seed), written by
timm's own hub exporter (``model.safetensors`` and ``config.json``) in huggingface_hub's layout
(``models--OWNER--NAME/refs/main`` naming a commit, ``snapshots/<commit>/<files>``). ``HF_HUB_OFFLINE`` is always
on, so nothing is downloaded. huggingface_hub reads ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into
``huggingface_hub.constants`` when imported: one test sets the environment in a fresh interpreter, as a user does;
the others patch those constants, which are looked up at each download.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from inatcomp.models.factory import create_model
from inatcomp.models.pretrained import HUB_PROBE_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPO = "timm/resnet10t.c3_in1k"  # timm's default weights for resnet10t
TAGGED_REPO = "timm/resnet10t.tv_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_model(cache: Path, repo: str, *, seed: int) -> dict[str, torch.Tensor]:
    """A resnet10t with seeded weights and a 1,000-class head, stored in a hub cache as ``repo``.

    Returns:
        The state dict written.
    """
    model = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    folder = cache / f"models--{repo.replace('/', '--')}"
    timm.models.save_for_hf(model, folder / "snapshots" / COMMIT, safe_serialization=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    return load_file(folder / "snapshots" / COMMIT / "model.safetensors")


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory) -> Path:
    """``HF_HOME`` of a cache holding :data:`DEFAULT_REPO` (seed 1) and :data:`TAGGED_REPO` (seed 2)."""
    home = tmp_path_factory.mktemp("hf")
    write_hub_model(home / "hub", DEFAULT_REPO, seed=1)
    write_hub_model(home / "hub", TAGGED_REPO, seed=2)
    return home


@pytest.fixture
def offline_cache(monkeypatch):
    """Point huggingface_hub at a cache folder, offline; returns the setter."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def use(cache: Path) -> None:
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    return use


def stored(home: Path, repo: str) -> dict[str, torch.Tensor]:
    folder = home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT
    return load_file(folder / "model.safetensors")


def assert_backbone_is(model: torch.nn.Module, weights: dict[str, torch.Tensor], *, num_classes: int) -> None:
    state = model.state_dict()
    backbone = [key for key in weights if not key.startswith("fc.")]
    assert len(backbone) > 50
    for key in backbone:
        assert torch.equal(state[key], weights[key]), key
    assert model.get_classifier().out_features == num_classes
    assert not torch.equal(state["fc.weight"][:num_classes], weights["fc.weight"][:num_classes])


def test_timm_weights_come_from_the_cache_named_by_hf_home_offline(hub_home, tmp_path):
    # A fresh interpreter with only the environment set, as a user runs `inatcomp train` on an offline machine.
    script = (
        "import json, sys, torch\n"
        "from inatcomp.models.factory import create_model\n"
        "model = create_model('resnet10t', num_classes=7, pretrained='timm')\n"
        "torch.save({k: v for k, v in model.state_dict().items()}, sys.argv[1])\n"
        "print(json.dumps(model.pretrained_cfg['hf_hub_id']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(hub_home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "state.pt"
    done = subprocess.run(
        [sys.executable, "-c", script, str(out)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == DEFAULT_REPO
    state = torch.load(out, weights_only=True)
    weights = stored(hub_home, DEFAULT_REPO)
    for key in (k for k in weights if not k.startswith("fc.")):
        assert torch.equal(state[key], weights[key]), key
    assert state["fc.weight"].shape == (7, 512)


def test_hf_hub_form_loads_that_exact_model_and_a_new_head(hub_home, offline_cache):
    offline_cache(hub_home / "hub")
    model = create_model("resnet10t", num_classes=1000, pretrained=f"hf-hub:{TAGGED_REPO}")
    # 1,000 classes, as ImageNet's head: still a new head, not the hub model's.
    assert_backbone_is(model, stored(hub_home, TAGGED_REPO), num_classes=1000)
    assert model.pretrained_cfg["hf_hub_id"] == TAGGED_REPO
    default = create_model("resnet10t", num_classes=3, pretrained="timm", head="isqrtcov", head_dim=8)
    weights = stored(hub_home, DEFAULT_REPO)
    assert torch.equal(default.backbone.conv1[0].weight, weights["conv1.0.weight"])


def test_hf_hub_model_of_another_architecture_names_both(hub_home, offline_cache):
    offline_cache(hub_home / "hub")
    with pytest.raises(ValueError, match=r"a resnet10t model, but --model is resnet18; give --model resnet10t"):
        create_model("resnet18", num_classes=3, pretrained=f"hf-hub:{TAGGED_REPO}")


@pytest.mark.parametrize("spec, repo", [("timm", DEFAULT_REPO), (f"hf-hub:{TAGGED_REPO}", TAGGED_REPO)])
def test_weights_neither_online_nor_cached_say_what_was_tried_and_what_to_do(tmp_path, offline_cache, spec, repo):
    offline_cache(tmp_path / "empty")
    with pytest.raises(ValueError) as raised:
        create_model("resnet10t", num_classes=3, pretrained=spec)
    message = str(raised.value)
    assert "\n" not in message and raised.value.__cause__ is None and raised.value.__suppress_context__
    assert message.startswith(f"--pretrained {spec}: no weights for --model resnet10t ({repo})")
    assert "HF_HUB_OFFLINE is set" in message and f"the Hugging Face cache at {tmp_path / 'empty'}" in message
    assert "--pretrained FILE" in message and f"hf download {repo}" in message


def test_pickled_weights_are_refused_not_loaded(tmp_path, offline_cache, monkeypatch):
    """A cached hub model with only ``pytorch_model.bin`` (timm's fallback) is never unpickled."""
    cache = tmp_path / "hub"
    write_hub_model(cache, DEFAULT_REPO, seed=3)
    snapshot = cache / f"models--{DEFAULT_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    torch.save(load_file(snapshot / "model.safetensors"), snapshot / "pytorch_model.bin")
    (snapshot / "model.safetensors").unlink()
    offline_cache(cache)
    unpickled = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: unpickled.append(args))
    with pytest.raises(ValueError, match=r"does not hold them \(model.safetensors: pickled weights are never loaded\)"):
        create_model("resnet10t", num_classes=3, pretrained="timm")
    assert unpickled == []


def test_unknown_words_and_unpublished_tags_are_clear_errors(tmp_path, offline_cache):
    offline_cache(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"imagenet: no such weights file \(the forms: FILE, timm .*hf-hub:"):
        create_model("resnet10t", num_classes=3, pretrained="imagenet")
    with pytest.raises(ValueError, match=r"no weights for --model resnet10t.nope \(published: resnet10t.c3_in1k\)"):
        create_model("resnet10t.nope", num_classes=3, pretrained="timm")
    with pytest.raises(ValueError, match="no hub model after hf-hub:"):
        create_model("resnet10t", num_classes=3, pretrained="hf-hub:")
    with pytest.raises(ValueError, match="is not a hub model id"):
        create_model("resnet10t", num_classes=3, pretrained="hf-hub:timm/bad name")


def test_a_training_config_checks_the_form_without_torch():
    from inatcomp.train.config import TrainConfig

    for spec in ("timm", f"hf-hub:{TAGGED_REPO}", "weights/missing.safetensors"):
        TrainConfig(train="t.json", images="images", out="run", pretrained=spec).check()
    with pytest.raises(ValueError, match="no hub model after hf-hub:"):
        TrainConfig(train="t.json", images="images", out="run", pretrained="hf-hub:").check()


def _closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens (bound, then closed): connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("spec, repo", [("timm", DEFAULT_REPO), (f"hf-hub:{TAGGED_REPO}", TAGGED_REPO)])
@pytest.mark.parametrize("endpoint", ["refused", "unresolvable"])
def test_an_unreachable_hub_without_a_cache_fails_in_seconds(tmp_path, hub_home, monkeypatch, spec, repo, endpoint):
    # As on a machine without network and with HF_HUB_OFFLINE unset: the hub's host (HF_ENDPOINT, here set so that
    # the test means the same on a machine with network) refuses, or its name does not resolve (.invalid, RFC 2606).
    # The answer comes after one short connection attempt, not after the hub client's retries (half a minute).
    host = f"http://127.0.0.1:{_closed_port()}" if endpoint == "refused" else "https://hub.invalid"
    monkeypatch.setattr(constants, "ENDPOINT", host)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    start = time.perf_counter()
    with pytest.raises(ValueError) as raised:
        create_model("resnet10t", num_classes=3, pretrained=spec)
    seconds = time.perf_counter() - start
    message = str(raised.value)
    assert seconds < HUB_PROBE_TIMEOUT_S + 4, seconds
    assert message.startswith(f"--pretrained {spec}: no weights for --model resnet10t ({repo}): the hub was not asked")
    assert "could not be reached within 3 s" in message and "\n" not in message
    assert f"the Hugging Face cache at {tmp_path / 'empty'}" in message
    assert "HF_HUB_OFFLINE=1" in message and f"hf download {repo}" in message
    assert constants.HF_HUB_OFFLINE is False  # the user's setting is back
    # The same with the weights in the cache: read from it, as with HF_HUB_OFFLINE=1.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_home / "hub"))
    start = time.perf_counter()
    model = create_model("resnet10t", num_classes=3, pretrained=spec)
    assert time.perf_counter() - start < HUB_PROBE_TIMEOUT_S + 4
    assert_backbone_is(model, stored(hub_home, repo), num_classes=3)
