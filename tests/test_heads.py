"""Tests of the iSQRT-COV head: the Newton–Schulz square root against an eigendecomposition, gradient flow,
the head on timm CNNs, and checkpoints that rebuild it."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from inatcomp.data import resolve_data_config
from inatcomp.models.checkpoints import head_options, load_checkpoint, save_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.heads import (
    CovarianceModel,
    CovariancePool,
    HeadType,
    covariance,
    isqrt,
    triu_vector,
    unused_modules,
)
from inatcomp.predict.engine import load_model


def _spd(batch: int, dim: int, *, low: float, high: float, seed: int = 0) -> torch.Tensor:
    """Random symmetric positive definite float64 matrices with eigenvalues in [low, high]."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, dtype=torch.float64, generator=generator))
    eigenvalues = low + (high - low) * torch.rand(batch, dim, dtype=torch.float64, generator=generator)
    return q @ torch.diag_embed(eigenvalues) @ q.transpose(1, 2)


def _sqrtm(matrices: torch.Tensor) -> torch.Tensor:
    eigenvalues, vectors = torch.linalg.eigh(matrices)
    return vectors @ torch.diag_embed(eigenvalues.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)


def _relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((approx.double() - exact).norm(dim=(1, 2)) / exact.norm(dim=(1, 2))).max())


@pytest.mark.parametrize(("dim", "tolerance"), [(4, 2e-3), (8, 2e-2)])
def test_isqrt_with_five_iterations_matches_eigh_on_well_conditioned_matrices(dim, tolerance):
    sigma = 3.0 * _spd(4, dim, low=0.5, high=2.0)
    approx = isqrt(sigma, iterations=5)
    assert approx.dtype == torch.float32 and approx.shape == sigma.shape
    assert _relative_error(approx, _sqrtm(sigma)) < tolerance
    assert torch.allclose(approx, approx.transpose(1, 2), atol=1e-5)


def test_isqrt_error_decreases_with_iterations_to_the_exact_root():
    sigma = 5.0 * _spd(3, 16, low=0.5, high=2.0, seed=1)
    exact = _sqrtm(sigma)
    errors = [_relative_error(isqrt(sigma, iterations=n), exact) for n in (1, 2, 3, 5, 8)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[0] > 0.3 and errors[-1] < 1e-5, errors


def test_isqrt_post_compensation_undoes_the_trace_normalisation():
    sigma = _spd(2, 6, low=0.1, high=1.0, seed=2)
    for scale in (1e-3, 1e3):
        assert torch.allclose(isqrt(scale * sigma, iterations=3), scale**0.5 * isqrt(sigma, iterations=3), rtol=1e-4)


def test_isqrt_is_float32_under_autocast_and_zero_safe():
    sigma = _spd(2, 8, low=0.5, high=2.0, seed=3).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.bmm(sigma, sigma).dtype == torch.bfloat16  # what the iterations would run in
        inside = isqrt(sigma, iterations=5)
    assert inside.dtype == torch.float32
    assert torch.allclose(inside, isqrt(sigma, iterations=5), atol=1e-6)
    zero = torch.zeros(1, 4, 4, requires_grad=True)
    out = isqrt(zero)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(zero.grad).all()
    with pytest.raises(ValueError, match="iterations"):
        isqrt(sigma, iterations=0)


def test_covariance_and_upper_triangle():
    x = torch.randn(3, 5, 4, 6)
    cov = covariance(x)
    for b in range(3):
        assert torch.allclose(cov[b], torch.cov(x[b].flatten(1), correction=0), atol=1e-5)
    matrix = torch.arange(16.0).view(1, 4, 4)
    assert triu_vector(matrix).tolist() == [[0, 1, 2, 3, 5, 6, 7, 10, 11, 15]]


@pytest.mark.parametrize("dim", [2, 8, 33])
def test_pool_output_is_the_upper_triangle_of_dim(dim):
    pool = CovariancePool(16, dim=dim, iterations=3)
    out = pool(torch.randn(2, 16, 3, 5))
    assert out.shape == (2, dim * (dim + 1) // 2) == (2, pool.out_features)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet10t", "test_efficientnet", "test_convnext", "test_mambaout"])
def test_create_model_isqrtcov_trains_end_to_end(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, head="isqrtcov", head_dim=16, head_iterations=3, drop_rate=0.1)
    assert isinstance(model, CovarianceModel)
    classifier = model.get_classifier()
    assert isinstance(classifier, torch.nn.Linear)
    assert classifier.in_features == model.num_features == 16 * 17 // 2 and classifier.out_features == 7
    assert model.head_config == {"type": "isqrtcov", "dim": 16, "iterations": 3}
    logits = model(torch.randn(4, 3, 96, 96))
    assert logits.shape == (4, 7)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    first_conv = next(p for n, p in model.backbone.named_parameters() if p.ndim == 4)
    for parameter in (first_conv, model.head.pool.reduce.weight, classifier.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    # Nothing left unused (DistributedDataParallel would refuse it): timm's post-pooling layers are pruned.
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_what_forward_features_does_not_use_is_pruned_whatever_its_name():
    # As timm 1.0.29 leaves ConvNeXt's post-pooling head.norm: a module with parameters that forward_features
    # never calls, under a name no list of timm's attribute names would know.
    backbone = timm.create_model("resnet10t", num_classes=0)
    backbone.after_pooling = torch.nn.Sequential(torch.nn.LayerNorm(512), torch.nn.Linear(512, 4))
    assert unused_modules(backbone) == ["after_pooling"]
    reference = backbone.eval().forward_features(torch.ones(1, 3, 64, 64))
    model = CovarianceModel(backbone.train(), num_classes=3, dim=8, iterations=3)
    assert isinstance(model.backbone.after_pooling, torch.nn.Identity) and model.backbone.training
    assert torch.equal(model.eval().forward_features(torch.ones(1, 3, 64, 64)), reference)  # the rest untouched
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_covariance_model_keeps_timm_interface():
    model = create_model("resnet10t", num_classes=5, head=HeadType.ISQRTCOV, head_dim=8, channels_last=True)
    reference = create_model("resnet10t", num_classes=5)
    assert model.default_cfg is model.pretrained_cfg and model.pretrained_cfg["classifier"] == "head.fc"
    config = resolve_data_config(model)
    assert config == resolve_data_config(reference)
    assert model.head.pool.iterations == 5 and model.num_classes == 5
    modules = dict(model.named_modules())
    assert [info["module"] for info in model.feature_info][-1] == "backbone.layer4" and "backbone.layer4" in modules
    model.reset_classifier(3)
    assert model.get_classifier().out_features == 3 and model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(torch.randn(2, 3, 64, 64)).float()).all()
    with pytest.raises(ValueError, match="not one of"):
        create_model("resnet10t", num_classes=5, head="max")
    with pytest.raises(ValueError, match="isqrtcov"):
        create_model("resnet10t", num_classes=5, head_dim=8)
    with pytest.raises(ValueError, match="feature map"):
        create_model("test_vit", num_classes=5, head="isqrtcov", head_dim=4)(torch.randn(1, 3, 160, 160))


def test_checkpoint_round_trip_rebuilds_the_head(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=6, head="isqrtcov", head_dim=12, head_iterations=4)
    model(torch.randn(8, 3, 64, 64)).sum().backward()  # moves the BatchNorm statistics off their defaults
    metadata = {"model": "resnet10t", "num_classes": 6, "category_ids": [5, 4, 3, 2, 1, 0]}
    save_checkpoint(tmp_path / "best", model, metadata)
    state_dict, stored, _ = load_checkpoint(tmp_path)
    assert stored["head"] == {"type": "isqrtcov", "dim": 12, "iterations": 4}
    assert json.loads((tmp_path / "best.json").read_text())["head"] == stored["head"]
    assert head_options(stored) == {"head": HeadType.ISQRTCOV, "head_dim": 12, "head_iterations": 4}
    assert head_options(metadata) == {}
    assert set(state_dict) == set(model.state_dict())
    rebuilt, _ = load_model(tmp_path)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_pretrained_backbone_from_a_local_file(tmp_path):
    source = create_model("resnet10t", num_classes=1000)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = create_model("resnet10t", num_classes=4, pretrained=path, head="isqrtcov", head_dim=8)
    assert torch.equal(model.backbone.conv1[0].weight, source.conv1[0].weight)
    assert not any(name.startswith("backbone.fc.") for name in model.state_dict())
