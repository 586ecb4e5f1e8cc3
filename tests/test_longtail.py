"""Long-tail tools: post-hoc logit adjustment, the logit-adjusted loss, τ-norm, and classifier re-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_config as _config
from safetensors.torch import load_file

from inatcomp.cli import main
from inatcomp.formats.predictions import PredictionWriter, open_predictions
from inatcomp.models.factory import create_model
from inatcomp.models.losses import LogitAdjustedLoss, LossType, create_loss
from inatcomp.predict.longtail import (
    SAMPLER_PRIOR_POWER,
    ClassPrior,
    adjust_scores,
    class_prior,
    fit_tau,
    tau_towards,
)
from inatcomp.predict.taunorm import tau_normalise
from inatcomp.train import train

COUNTS = np.array([90, 9, 1])


def test_logit_adjustment_with_tau_zero_is_the_identity():
    p = np.random.default_rng(0).dirichlet(np.ones(5), size=7).astype(np.float32)
    prior = ClassPrior(counts=np.array([50, 20, 5, 2, 0]), source="hand")
    assert np.array_equal(adjust_scores(p, prior.log_prior, 0.0), p)


def test_logit_adjustment_shifts_the_argmax_as_by_hand():
    p = np.array([[0.5, 0.4, 0.1]], dtype=np.float32)
    prior = ClassPrior(counts=COUNTS, source="hand")
    # τ = 1: p / π = (0.5 / 0.9, 0.4 / 0.09, 0.1 / 0.01) = (0.556, 4.44, 10), renormalised.
    by_hand = np.array([0.5 / 0.9, 0.4 / 0.09, 0.1 / 0.01])
    np.testing.assert_allclose(adjust_scores(p, prior.log_prior, 1.0)[0], by_hand / by_hand.sum(), rtol=1e-5)
    assert adjust_scores(p, prior.log_prior, 1.0).argmax() == 2
    # τ = 0.5: (0.5 / 0.949, 0.4 / 0.3, 0.1 / 0.1) = (0.527, 1.333, 1.0): the middle class wins.
    assert adjust_scores(p, prior.log_prior, 0.5).argmax() == 1
    # τ = -1 (towards the train prior): 0.5 · 0.9 dominates.
    assert adjust_scores(p, prior.log_prior, -1.0).argmax() == 0
    # A class without train images counts as one image.
    assert ClassPrior(counts=np.array([3, 0]), source="hand").log_prior[1] == pytest.approx(np.log(1 / 4))


def test_the_logit_adjusted_loss_matches_its_formula():
    torch.manual_seed(0)
    logits, target, tau = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0]), 0.7
    loss = create_loss(loss_type=LossType.CROSS_ENTROPY, class_counts=COUNTS, logit_adjust_tau=tau)
    assert isinstance(loss, LogitAdjustedLoss)
    z = logits.double().numpy() + tau * np.log(COUNTS / COUNTS.sum())
    by_hand = np.mean([np.log(np.exp(z[i]).sum()) - z[i, target[i]] for i in range(6)])
    assert float(loss(logits, target)) == pytest.approx(by_hand, rel=1e-5)
    # τ = 0 is plain cross-entropy; smoothing applies to the adjusted logits.
    plain = create_loss(loss_type=LossType.CROSS_ENTROPY, class_counts=COUNTS, logit_adjust_tau=0.0)
    assert float(plain(logits, target)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)))
    smooth = create_loss(loss_type=LossType.LABEL_SMOOTHING, smoothing=0.1, class_counts=COUNTS, logit_adjust_tau=tau)
    shifted = torch.as_tensor(z, dtype=torch.float32)
    expected = torch.nn.functional.cross_entropy(shifted, target, label_smoothing=0.1)
    assert float(smooth(logits, target)) == pytest.approx(float(expected), rel=1e-5)


def test_tau_norm_with_p_zero_is_the_identity_and_p_one_gives_unit_rows():
    model = create_model("resnet10t", num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert tau_normalise(model, 0.0) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert tau_normalise(model, 1.0) == 1
    torch.testing.assert_close(model.fc.weight.norm(dim=1), torch.ones(4))
    assert torch.equal(model.fc.bias, before["fc.bias"])  # the bias is kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if not k.startswith("fc."))


def _write_predictions(path: Path, scores: np.ndarray, *, header: dict | None = None) -> Path:
    with PredictionWriter(path, image_ids=np.arange(len(scores)) + 1, category_ids=[10, 11, 12],
                          header=header) as writer:  # fmt: skip
        writer.write(scores)
    return path


def _labelled(path: Path, labels: list[int], counts: np.ndarray | None = None) -> Path:
    """A labelled JSON: images 1..n with ``labels``, or (``counts``) a train JSON with that many per class."""
    if counts is not None:
        labels = [c for c, n in zip([10, 11, 12], counts) for _ in range(int(n))]
    images = [{"id": i + 1, "file_name": f"{i}.jpg", "width": 8, "height": 8} for i in range(len(labels))]
    annotations = [{"id": i + 1, "image_id": i + 1, "category_id": c} for i, c in enumerate(labels)]
    categories = [{"id": c, "name": f"G s{c}"} for c in (10, 11, 12)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_fit_tau_follows_the_target_distribution(tmp_path):
    # Images x | y ~ N(μ_y, 1) and the Bayes posterior under the long-tailed train prior: p(x | y) · π_train(y),
    # the model plain cross-entropy on train estimates.
    rng = np.random.default_rng(0)
    truth = np.repeat([10, 11, 12], 300)  # a balanced val
    means = np.array([0.0, 1.5, 3.0])
    x = rng.normal(means[truth - 10], 1.0)
    likelihood = np.exp(-0.5 * (x[:, None] - means[None, :]) ** 2)
    scores = likelihood * (COUNTS / COUNTS.sum())
    scores /= scores.sum(axis=1, keepdims=True)
    val = _write_predictions(tmp_path / "val.pred", scores)
    labels = _labelled(tmp_path / "val.json", truth.tolist())
    prior = class_prior(_labelled(tmp_path / "train.json", [], counts=COUNTS), [10, 11, 12])
    assert prior.counts.tolist() == COUNTS.tolist()
    # For the balanced val the prior must come out (τ near 1) …
    balanced = fit_tau(val, labels, prior=prior, target="val")
    assert 0.5 <= balanced.tau <= 1.5 and balanced.top1_error < balanced.unadjusted_top1_error - 0.2
    # … for a test that follows train it is already right (τ near 0).
    long_tail = fit_tau(val, labels, prior=prior, target="train")
    assert abs(long_tail.tau) <= 0.5 and long_tail.tau < balanced.tau
    assert long_tail.errors[0.0] < long_tail.errors[1.0]
    # Weighted to train's distribution, the 300 images of the head class carry 90 % of the weight: the effective
    # sample shrinks from 900 images to about 300 / 0.9² ≈ 370, and is said with the fit.
    assert balanced.effective_images == pytest.approx(900.0)
    w = np.repeat(COUNTS / COUNTS.sum() * 3, 300)
    assert long_tail.effective_images == pytest.approx(w.sum() ** 2 / (w**2).sum()) and long_tail.effective_images < 400


def test_tau_towards_the_published_prior():
    # Menon et al.'s post-hoc rule for a balanced test, and its inverse for a test that follows train.
    assert tau_towards(trained_power=SAMPLER_PRIOR_POWER["random"], target="val") == 1.0
    assert tau_towards(trained_power=SAMPLER_PRIOR_POWER["random"], target="train") == 0.0
    assert tau_towards(trained_power=SAMPLER_PRIOR_POWER["sqrt"], target="train") == -0.5
    assert tau_towards(trained_power=SAMPLER_PRIOR_POWER["class-balanced"], target="train") == -1.0
    # A model trained under π^α, moved by τ = α - 1, scores exactly p(x | y) · π (the train-prior posterior).
    likelihood = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    prior = COUNTS / COUNTS.sum()
    for alpha in (0.0, 0.5, 1.0):
        trained = likelihood * prior**alpha
        trained /= trained.sum(axis=1, keepdims=True)
        moved = adjust_scores(trained, np.log(prior), tau_towards(trained_power=alpha, target="train"))
        want = likelihood * prior
        np.testing.assert_allclose(moved, want / want.sum(axis=1, keepdims=True), rtol=1e-5)


def test_commands_apply_and_record_the_adjustment(tmp_path, caplog):
    p = np.array([[0.5, 0.4, 0.1], [0.2, 0.7, 0.1]])
    train_json = _labelled(tmp_path / "train.json", [], counts=COUNTS)
    pred = _write_predictions(tmp_path / "test.pred", p)
    # submit: labels ranked after the adjustment, the prior read from the training JSON.
    assert main(["submit", str(pred), "--format", "inat2018", "--out", str(tmp_path / "plain.csv")]) == 0
    assert main(["submit", str(pred), "--format", "inat2018", "--out", str(tmp_path / "adjusted.csv"),
                 "--logit-adjust", "1", "--prior", str(train_json)]) == 0  # fmt: skip
    first = [line.split(",")[1].split()[0] for line in (tmp_path / "adjusted.csv").read_text().splitlines()[1:]]
    assert first == ["12", "12"]
    assert (tmp_path / "plain.csv").read_text().splitlines()[1].split(",")[1].startswith("10 11 12")
    # ensemble: the written file is adjusted, and its header says how.
    assert main(["ensemble", str(pred), str(pred), "--out", str(tmp_path / "ens.pred"), "--logit-adjust", "0.5",
                 "--prior", str(train_json)]) == 0  # fmt: skip
    ens = open_predictions(tmp_path / "ens.pred")
    record = ens.header["logit_adjust"][0]
    assert record["tau"] == 0.5 and record["prior"] == str(train_json)
    np.testing.assert_allclose(ens.read_rows(0, 2), adjust_scores(p, class_prior(train_json, [10, 11, 12]).log_prior,
                                                                 0.5), atol=1e-3)  # fmt: skip
    # Without --prior and without a checkpoint behind the predictions: a clear error.
    assert main(["submit", str(pred), "--format", "inat2018", "--out", str(tmp_path / "x.csv"),
                 "--logit-adjust", "1"]) != 0  # fmt: skip
    assert "give --prior TRAIN.json" in caplog.text and not (tmp_path / "x.csv").exists()


def test_classifier_stage_leaves_the_backbone_and_trains_the_head(tmp_path, tiny_dataset):
    data = tiny_dataset(tmp_path / "data", names=["A a", "A b", "B c", "C d"], per_class=6)
    base = train(_config(data, tmp_path / "base"))
    meta = json.loads((base.run_dir / "last.json").read_text())
    assert meta["class_counts"] == [6, 6, 6, 6]  # the prior post-hoc logit adjustment reads
    config = _config(data, tmp_path / "crt", init=str(base.run_dir / "last"), stage="classifier", epochs=2, lr=0.1)
    assert config.sampler.value == "class-balanced" and config.stage.value == "classifier"
    crt = train(config)
    before, after = load_file(base.last_checkpoint), load_file(crt.last_checkpoint)
    backbone = [k for k in before if not k.startswith("fc.")]
    assert any(k.endswith("running_mean") for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone), "a backbone tensor moved"
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    # reset_head starts the classifier afresh (its rows no longer those of --init, before any step at lr 0).
    reset = train(_config(data, tmp_path / "reset", init=str(base.run_dir / "last"), stage="classifier", lr=0.0,
                          reset_head=True))  # fmt: skip
    fresh = load_file(reset.last_checkpoint)
    assert not torch.equal(fresh["fc.weight"], before["fc.weight"])
    assert all(torch.equal(before[k], fresh[k]) for k in backbone)
    with pytest.raises(ValueError, match="give --init"):
        _config(data, tmp_path / "bad", stage="classifier")
    with pytest.raises(ValueError, match="contradicts"):
        _config(data, tmp_path / "bad", stage="classifier", init=str(base.run_dir / "last"), freeze="all-but-last-1")


def test_predict_with_tau_norm_and_the_checkpoints_prior(tmp_path, tiny_dataset):
    data = tiny_dataset(tmp_path / "data", names=["A a", "A b", "B c"], per_class=4)
    run = train(_config(data, tmp_path / "run"))
    common = ["predict", "--checkpoint", str(run.run_dir), "--data", str(data), "--tta", "center"]
    assert main([*common, "--out", str(tmp_path / "plain.pred")]) == 0
    assert main([*common, "--out", str(tmp_path / "normed.pred"), "--tau-norm", "1", "--logit-adjust", "0.5"]) == 0
    normed = open_predictions(tmp_path / "normed.pred")
    assert normed.header["tau_norm"] == 1.0
    assert normed.header["logit_adjust"][0]["tau"] == 0.5  # the prior: the checkpoint's class counts
    assert normed.header["logit_adjust"][0]["prior"] == str(run.run_dir)
    plain = open_predictions(tmp_path / "plain.pred").read_rows(0, 12).astype(np.float32)
    assert not np.allclose(plain, normed.read_rows(0, 12).astype(np.float32), atol=1e-3)
