"""What competitors expect of a trainer: mixup/CutMix, gradient accumulation, torch.compile."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_train_config as _config
from safetensors.torch import load_file

from inatcomp.models.losses import LossType, TaxonomySmoothingCrossEntropy, create_loss, taxonomy_smoothing_targets
from inatcomp.train import train
from inatcomp.train.mixing import MixConfig, Mixer, mixed_loss, soft_targets
from inatcomp.train.parts import compile_or_eager


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 16, 16, generator=gen), torch.arange(n) % 4


def test_mixup_mixes_each_image_with_its_flipped_partner_and_targets_sum_to_one():
    inputs, labels = _batch()
    mix = Mixer(MixConfig(mixup_alpha=1.0), seed=3)(inputs, labels)
    assert mix.kind == "mixup" and 0.0 < mix.lam < 1.0
    torch.testing.assert_close(mix.inputs, mix.lam * inputs + (1 - mix.lam) * inputs.flip(0))
    assert mix.partner_targets.tolist() == labels.flip(0).tolist()
    soft = soft_targets(mix, 4)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(len(labels)))
    for i in range(len(labels)):  # image i carries λ of its label and 1 - λ of image n - 1 - i's
        want = torch.zeros(4)
        want[labels[i]] += mix.lam
        want[labels[len(labels) - 1 - i]] += 1 - mix.lam
        torch.testing.assert_close(soft[i], want)


def test_cutmix_pastes_the_partners_box_and_lambda_is_the_area_kept():
    inputs, labels = _batch()
    inputs = inputs + torch.arange(len(labels)).view(-1, 1, 1, 1) * 10  # every image's pixels tell whose they are
    mix = Mixer(MixConfig(cutmix_alpha=1.0), seed=5)(inputs, labels)
    assert mix.kind == "cutmix"
    own = (mix.inputs == inputs).all(dim=1)  # [n, H, W]: pixels still the image's own
    partner = (mix.inputs == inputs.flip(0)).all(dim=1)
    assert torch.all(own | partner)
    kept = own[0].float().mean().item()
    assert mix.lam == pytest.approx(kept) and 0.0 <= mix.lam < 1.0
    torch.testing.assert_close(soft_targets(mix, 4, smoothing=0.1).sum(dim=1), torch.ones(len(labels)))


def test_mix_probability_and_switch():
    inputs, labels = _batch()
    never = Mixer(MixConfig(mixup_alpha=1.0, prob=0.0))(inputs, labels)
    assert never.kind == "none" and never.lam == 1.0 and torch.equal(never.inputs, inputs)
    both = Mixer(MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5), seed=0)
    kinds = {both(inputs, labels).kind for _ in range(40)}
    assert kinds == {"mixup", "cutmix"}


@pytest.mark.parametrize("smoothing", ["label", "taxonomy"])
def test_mixed_loss_is_the_loss_of_the_mixed_smoothed_targets(smoothing):
    inputs, labels = _batch()
    logits = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(1))
    mix = Mixer(MixConfig(mixup_alpha=0.4), seed=2)(inputs, labels)
    genus, family = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 0, 1])
    if smoothing == "label":
        criterion = create_loss(loss_type=LossType.LABEL_SMOOTHING, smoothing=0.1)
        target = soft_targets(mix, 4, smoothing=0.1)
    else:
        criterion = TaxonomySmoothingCrossEntropy(smoothing=0.1, genus_of=genus, family_of=family)
        each = (taxonomy_smoothing_targets(t, genus_of=genus, family_of=family, smoothing=0.1)
                for t in (mix.targets, mix.partner_targets))  # fmt: skip
        target = mix.lam * next(each) + (1 - mix.lam) * next(each)
    torch.testing.assert_close(target.sum(dim=1), torch.ones(len(labels)))
    want = torch.sum(-target * torch.log_softmax(logits, dim=1), dim=1).mean()
    torch.testing.assert_close(mixed_loss(criterion, logits, mix), want)


def test_accumulation_gives_the_update_of_a_larger_batch(tmp_path, tiny_dataset):
    train_json = tiny_dataset(tmp_path / "data", names=["Aa aa", "Bb bb", "Cc cc", "Dd dd"], per_class=8)
    # BatchNorm keeps its statistics (eval mode): a batch of 8 normalises by its own, a batch of 16 by its own.
    common = dict(freeze_norm_stats=True, max_steps_per_epoch=2, epochs=2, optimizer="sgd", schedule="cosine",
                  device="cpu")  # fmt: skip
    big = train(_config(train_json, tmp_path / "big", batch_size=16, **common))
    small = train(_config(train_json, tmp_path / "accum", batch_size=8, accum_steps=2, **common))
    plain = train(_config(train_json, tmp_path / "small", batch_size=8, **common))
    weights = {name: load_file(r.last_checkpoint) for name, r in (("big", big), ("accum", small), ("plain", plain))}
    for key, value in weights["big"].items():
        torch.testing.assert_close(weights["accum"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert any(not torch.allclose(weights["plain"][k], v, atol=1e-4) for k, v in weights["big"].items())
    assert big.metrics[-1]["train_loss"] == pytest.approx(small.metrics[-1]["train_loss"], rel=1e-4)


def test_mixup_trains_and_is_off_in_the_classifier_stage(tmp_path, tiny_dataset, caplog):
    train_json = tiny_dataset(tmp_path / "data", names=["Aa aa", "Bb bb", "Cc cc"], per_class=8)
    mixed = train(_config(train_json, tmp_path / "mix", mixup=0.8, cutmix=1.0, label_smoothing=0.1, epochs=2))
    plain = train(_config(train_json, tmp_path / "plain", label_smoothing=0.1, epochs=2))
    assert mixed.metrics[-1]["train_loss"] != pytest.approx(plain.metrics[-1]["train_loss"])
    caplog.set_level(logging.WARNING)
    train(_config(train_json, tmp_path / "crt", init=str(plain.run_dir), stage="classifier", mixup=0.8))
    assert "without mixup/CutMix" in caplog.text


def test_compile_runs_or_falls_back_to_eager(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    wrapped = compile_or_eager(model)
    x = torch.randn(5, 4)
    caplog.set_level(logging.WARNING)
    torch.testing.assert_close(wrapped(x), model(x), rtol=1e-5, atol=1e-6)
    # Either it compiled, or it said why it could not and ran the same function eagerly.
    assert not getattr(wrapped, "failed", False) or "--compile" in caplog.text
    assert set(dict(wrapped.named_parameters())) >= {"eager.0.weight"} or wrapped is model


def test_kept_loader_workers_give_the_epochs_of_in_process_loading(tmp_path, tiny_dataset):
    # The loader's workers start once per stage and serve every epoch; each sample is seeded by its draw, so two
    # epochs through two kept workers train exactly what in-process loading trains.
    train_json = tiny_dataset(tmp_path / "data", names=["Aa aa", "Bb bb"], per_class=8)
    common = dict(epochs=2, val=str(train_json), device="cpu")  # bit for bit: CPU kernels
    kept = train(_config(train_json, tmp_path / "kept", workers=2, **common))
    here = train(_config(train_json, tmp_path / "here", workers=0, **common))
    a, b = load_file(kept.last_checkpoint), load_file(here.last_checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["val_top1_error"] for r in kept.metrics] == [r["val_top1_error"] for r in here.metrics]
