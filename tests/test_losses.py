"""Tests of the losses: hand computations on tiny tensors and a hand-made genus/family table."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from inatcomp.models.losses import (
    ClassBalancedCrossEntropy,
    LabelSmoothingCrossEntropy,
    LossType,
    TaxonomySmoothingCrossEntropy,
    class_balanced_weights,
    create_loss,
    taxonomy_smoothing_targets,
)

# Seven classes: genus 0 = {0, 1, 2}, genus 1 = {3} (same family as genus 0), genera 2, 3 = {4}, {5}
# (family 1), genus 4 = {6} alone in family 2.
GENUS_OF = torch.tensor([0, 0, 0, 1, 2, 3, 4])
FAMILY_OF = torch.tensor([0, 0, 0, 0, 1, 1, 2])


def _targets(labels: list[int], smoothing: float = 0.2, weights=(0.6, 0.3, 0.1)) -> torch.Tensor:
    return taxonomy_smoothing_targets(
        torch.tensor(labels), genus_of=GENUS_OF, family_of=FAMILY_OF, smoothing=smoothing, weights=weights
    )


def test_label_smoothing_equals_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    target = torch.tensor([0, 1])
    eps = 0.1
    expected = 0.0
    for row, t in zip(logits.tolist(), target.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        logp = [v - log_z for v in row]
        expected += (1 - eps) * -logp[t] + eps * -sum(logp) / 3
    expected /= 2
    assert LabelSmoothingCrossEntropy(eps)(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert LabelSmoothingCrossEntropy(0.0)(logits, target).item() == pytest.approx(
        nn.functional.cross_entropy(logits, target).item(), rel=1e-6
    )


@pytest.mark.parametrize("label", range(7))
def test_taxonomy_targets_sum_to_one_and_keep_one_minus_eps(label):
    targets = _targets([label])
    assert targets.shape == (1, 7)
    assert targets.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert targets[0, label].item() == pytest.approx(0.8, abs=1e-6)
    assert (targets >= 0).all()


def test_taxonomy_targets_follow_the_weights():
    eps = 0.2
    t = _targets([0], eps)[0]
    # Siblings 1, 2 share 0.6 ε; class 3 (family, other genus) 0.3 ε; classes 4–6 (outside) 0.1 ε.
    np.testing.assert_allclose(t[1:3].numpy(), 0.6 * eps / 2, atol=1e-7)
    assert t[3].item() == pytest.approx(0.3 * eps, abs=1e-7)
    np.testing.assert_allclose(t[4:].numpy(), 0.1 * eps / 3, atol=1e-7)
    # Genus only: nothing outside the genus.
    t = _targets([1], eps, weights=(1.0, 0.0, 0.0))[0]
    np.testing.assert_allclose(t.numpy(), [eps / 2, 0.8, eps / 2, 0, 0, 0, 0], atol=1e-7)


def test_taxonomy_class_without_siblings_gives_genus_share_to_the_next_group():
    eps = 0.2
    # Class 3: no siblings; family {0, 1, 2}; outside {4, 5, 6}. Genus share 0.6 goes to the family.
    t = _targets([3], eps)[0]
    np.testing.assert_allclose(t[:3].numpy(), (0.6 + 0.3) * eps / 3, atol=1e-7)
    np.testing.assert_allclose(t[4:].numpy(), 0.1 * eps / 3, atol=1e-7)
    # Class 4 with genus-only weights: the share goes to its family ({5}), not uniform.
    t = _targets([4], eps, weights=(1.0, 0.0, 0.0))[0]
    np.testing.assert_allclose(t.numpy(), [0, 0, 0, 0, 0.8, eps, 0], atol=1e-7)
    # Class 6 is alone in its family: genus and family shares go to the uniform group.
    t = _targets([6], eps)[0]
    np.testing.assert_allclose(t[:6].numpy(), eps / 6, atol=1e-7)


def test_taxonomy_targets_edge_cases():
    # All classes in one family: the uniform share flows back to the family.
    t = taxonomy_smoothing_targets(
        torch.tensor([2]), genus_of=torch.tensor([0, 0, 1]), family_of=torch.tensor([0, 0, 0]), smoothing=0.1
    )[0]
    np.testing.assert_allclose(t.numpy(), [0.05, 0.05, 0.9], atol=1e-7)
    one = taxonomy_smoothing_targets(
        torch.tensor([0]), genus_of=torch.tensor([0]), family_of=torch.tensor([0]), smoothing=0.1
    )
    assert one.tolist() == [[1.0]]
    with pytest.raises(ValueError):
        _targets([0], weights=(0.0, 0.0, 0.0))


def test_taxonomy_loss_matches_its_targets():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, requires_grad=True)
    labels = torch.tensor([0, 3, 4, 6, 2])
    loss = TaxonomySmoothingCrossEntropy(smoothing=0.2, genus_of=GENUS_OF, family_of=FAMILY_OF)(logits, labels)
    expected = -(_targets(labels.tolist()) * torch.log_softmax(logits, -1)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_class_balanced_weights_match_the_formula():
    counts = [1000, 100, 10, 1]
    beta = 0.99
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w / sum(raw) * 4 for w in raw]
    weights = class_balanced_weights(counts, beta)
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    assert weights.sum().item() == pytest.approx(4.0)
    np.testing.assert_allclose(class_balanced_weights(counts, 0.0).numpy(), 1.0)  # β = 0: no re-weighting


def test_class_balanced_loss_weights_each_sample():
    counts = [50, 5, 1]
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.5], [0.0, 2.0, 1.0]])
    target = torch.tensor([0, 1, 2])
    weights = class_balanced_weights(counts, 0.9)
    ce = nn.functional.cross_entropy(logits, target, reduction="none")
    expected = (weights[target] * ce).mean()
    loss = ClassBalancedCrossEntropy(class_counts=counts, beta=0.9)(logits, target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_create_loss():
    taxonomy = SimpleNamespace(genus_of=GENUS_OF.numpy(), family_of=FAMILY_OF.numpy())
    assert isinstance(create_loss(loss_type=LossType.CROSS_ENTROPY), nn.CrossEntropyLoss)
    assert isinstance(create_loss(loss_type=LossType.LABEL_SMOOTHING, smoothing=0.1), LabelSmoothingCrossEntropy)
    loss = create_loss(loss_type=LossType.TAXONOMY_SMOOTHING, smoothing=0.1, taxonomy=taxonomy)
    assert isinstance(loss, TaxonomySmoothingCrossEntropy)
    assert loss(torch.zeros(2, 7), torch.tensor([0, 6])).item() == pytest.approx(math.log(7), rel=1e-6)
    loss = create_loss(loss_type=LossType.CLASS_BALANCED, class_counts=[3, 1], beta=0.9, smoothing=0.1)
    assert isinstance(loss, ClassBalancedCrossEntropy)
    with pytest.raises(ValueError, match="taxonomy"):
        create_loss(loss_type=LossType.TAXONOMY_SMOOTHING)
    with pytest.raises(ValueError, match="class_counts"):
        create_loss(loss_type=LossType.CLASS_BALANCED)
