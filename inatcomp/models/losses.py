"""Classification losses: label smoothing, taxonomy-aware smoothing, class-balanced cross-entropy.

* :class:`LabelSmoothingCrossEntropy`: timm's: ``(1 - ε) · NLL + ε · mean over classes of -log p``.
* :class:`TaxonomySmoothingCrossEntropy`: the 2018 runner-up's taxonomy-aware label smoothing. The true
  class keeps ``1 - ε``; ε goes to its relatives in three groups: the other species of its genus, the
  other species of its family outside the genus, and every class outside the family, in proportion to
  ``weights = (genus, family, uniform)`` and evenly within a group. A group that is empty for the class
  passes its share on to the next broader non-empty group (a class without siblings gives its genus share
  to its family, or to the uniform group when it is alone in its family too), or back to the nearest
  narrower one when no broader group is left (all classes in one family); the shares are normalised over
  the non-empty groups, so every row sums to 1. With one class only the target is one-hot.
* :class:`ClassBalancedCrossEntropy`: Cui et al. 2019, "Class-Balanced Loss Based on Effective Number of
  Samples": each sample's loss weighted by ``w_c = (1 - β) / (1 - β^n_c)`` of its class, the weights
  normalised to sum to the number of classes C; optional label smoothing.
* :class:`LogitAdjustedLoss`: Menon et al. 2021, "Long-tail learning via logit adjustment": any of the above
  computed on ``logits + τ · log π`` (π the train class prior), so the logits themselves learn the balanced
  scores; τ = 1 is also Ren et al. 2020's balanced softmax. At prediction time the raw logits are used.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the library's own idiom)
from torch import nn

__all__ = [
    "ClassBalancedCrossEntropy",
    "LabelSmoothingCrossEntropy",
    "LogitAdjustedLoss",
    "LossType",
    "TaxonomySmoothingCrossEntropy",
    "class_balanced_weights",
    "create_loss",
    "taxonomy_smoothing_targets",
]

_logger = logging.getLogger(__name__)


class LossType(enum.Enum):
    """Which loss :func:`create_loss` builds."""

    CROSS_ENTROPY = "cross_entropy"
    LABEL_SMOOTHING = "label_smoothing"
    TAXONOMY_SMOOTHING = "taxonomy_smoothing"
    CLASS_BALANCED = "class_balanced"


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy with uniform label smoothing (timm's).

    Args:
        smoothing: ε, the mass spread evenly over all classes.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logprobs = F.log_softmax(logits, dim=-1)
        nll = -logprobs.gather(-1, target.unsqueeze(1)).squeeze(1)
        smooth = -logprobs.mean(dim=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * smooth).mean()


def taxonomy_smoothing_targets(
    labels: torch.Tensor,
    *,
    genus_of: torch.Tensor,
    family_of: torch.Tensor,
    smoothing: float,
    weights: Sequence[float] = (0.6, 0.3, 0.1),
) -> torch.Tensor:
    """Soft targets of taxonomy-aware label smoothing.

    Args:
        labels: True class indices, shape (B,).
        genus_of: Genus group of each class, shape (C,).
        family_of: Family group of each class, shape (C,); classes of one genus share a family.
        smoothing: ε, the mass moved off the true class.
        weights: Shares of ε for (siblings in the genus, the rest of the family, all classes outside the
            family); an empty group's share goes to the next broader non-empty group.

    Returns:
        Targets of shape (B, C), each row summing to 1.
    """
    if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"weights must be three non-negative numbers, not all 0, got {tuple(weights)}")
    genus_of = genus_of.to(labels.device)
    family_of = family_of.to(labels.device)
    num_classes = genus_of.shape[0]
    own = F.one_hot(labels, num_classes).bool()
    same_genus = genus_of.unsqueeze(0) == genus_of[labels].unsqueeze(1)
    same_family = family_of.unsqueeze(0) == family_of[labels].unsqueeze(1)
    groups = torch.stack([same_genus & ~own, same_family & ~same_genus, ~same_family], dim=1)  # (B, 3, C)
    sizes = groups.sum(dim=-1).to(torch.float32)  # (B, 3)
    present = sizes > 0
    w = torch.as_tensor([float(x) for x in weights], dtype=torch.float32, device=labels.device)
    share = w.expand_as(sizes).clone()
    # An empty group passes its share on to the next broader non-empty group …
    carry = torch.zeros_like(sizes[:, 0])
    for k in range(3):
        total = share[:, k] + carry
        share[:, k] = torch.where(present[:, k], total, torch.zeros_like(total))
        carry = torch.where(present[:, k], torch.zeros_like(total), total)
    # … or, when there is none, back to the nearest narrower one.
    for k in (2, 1, 0):
        give = torch.where(present[:, k], carry, torch.zeros_like(carry))
        share[:, k] += give
        carry = carry - give
    total = share.sum(dim=-1, keepdim=True)
    share = share / total.clamp_min(1e-12)
    per_class = share / sizes.clamp_min(1.0)  # (B, 3): ε share of one class of each group
    targets = smoothing * (groups.to(torch.float32) * per_class.unsqueeze(-1)).sum(dim=1)
    keep = 1.0 - smoothing * (share.sum(dim=-1) > 0).to(torch.float32)
    return targets + own.to(torch.float32) * keep.unsqueeze(1)


class TaxonomySmoothingCrossEntropy(nn.Module):
    """Cross-entropy against taxonomy-aware smoothed targets (see :func:`taxonomy_smoothing_targets`).

    Args:
        smoothing: ε.
        genus_of: Genus group of each class, shape (C,).
        family_of: Family group of each class, shape (C,).
        weights: Shares of ε for (genus siblings, family, uniform).
    """

    def __init__(
        self,
        *,
        smoothing: float,
        genus_of: torch.Tensor | np.ndarray,
        family_of: torch.Tensor | np.ndarray,
        weights: Sequence[float] = (0.6, 0.3, 0.1),
    ) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        genus = torch.as_tensor(np.asarray(genus_of), dtype=torch.long)
        family = torch.as_tensor(np.asarray(family_of), dtype=torch.long)
        if genus.shape != family.shape or genus.ndim != 1:
            raise ValueError(f"genus_of and family_of must be 1-D of one length, got {genus.shape}, {family.shape}")
        self.smoothing = smoothing
        self.weights = tuple(float(w) for w in weights)
        self.register_buffer("genus_of", genus, persistent=False)
        self.register_buffer("family_of", family, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        soft = taxonomy_smoothing_targets(
            target, genus_of=self.genus_of, family_of=self.family_of, smoothing=self.smoothing, weights=self.weights
        )
        return torch.sum(-soft * F.log_softmax(logits, dim=-1), dim=-1).mean()


def class_balanced_weights(class_counts: Sequence[int] | np.ndarray, beta: float = 0.999) -> torch.Tensor:
    """Effective-number class weights ``(1 - β) / (1 - β^n_c)``, normalised to sum to C.

    Classes without images are counted as having one (their weight never applies: they are never targets).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    weights = weights / weights.sum() * len(counts)
    return torch.as_tensor(weights, dtype=torch.float32)


class ClassBalancedCrossEntropy(nn.Module):
    """Cross-entropy weighted per class by the effective number of samples (Cui et al. 2019).

    The loss is the batch mean of ``w_y · CE(sample)``, with CE label-smoothed like
    :class:`LabelSmoothingCrossEntropy` when ``smoothing`` > 0.

    Args:
        class_counts: Training images per class.
        beta: β of the effective number (0 gives equal weights; closer to 1 weights rare classes more).
        smoothing: ε of uniform label smoothing.
    """

    def __init__(
        self, *, class_counts: Sequence[int] | np.ndarray, beta: float = 0.999, smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = smoothing
        self.beta = beta
        self.register_buffer("class_weights", class_balanced_weights(class_counts, beta), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logprobs = F.log_softmax(logits, dim=-1)
        nll = -logprobs.gather(-1, target.unsqueeze(1)).squeeze(1)
        loss = (1.0 - self.smoothing) * nll + self.smoothing * -logprobs.mean(dim=-1)
        return (self.class_weights[target] * loss).mean()


class LogitAdjustedLoss(nn.Module):
    """A loss computed on logits shifted by ``τ · log π``: the logit-adjusted loss (Menon et al. 2021).

    ``loss(f(x) + τ · log π, y)``: the head classes' prior is added inside the loss, so ``f`` need not learn it
    and its argmax estimates the balanced error's Bayes rule. With plain cross-entropy and τ = 1 this is the
    balanced softmax (Ren et al. 2020). Classes without train images count as one image.

    Args:
        base: The loss on the shifted logits (cross-entropy, label or taxonomy smoothing, class-balanced).
        class_counts: Training images per class.
        tau: τ.
    """

    def __init__(self, base: nn.Module, *, class_counts: Sequence[int] | np.ndarray, tau: float = 1.0) -> None:
        super().__init__()
        counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
        self.base = base
        self.tau = float(tau)
        log_prior = torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)
        self.register_buffer("log_prior", log_prior, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(logits + self.tau * self.log_prior.to(logits.dtype), target)


def create_loss(
    *,
    loss_type: LossType,
    smoothing: float = 0.1,
    taxonomy: Any = None,
    class_counts: Sequence[int] | np.ndarray | None = None,
    beta: float = 0.999,
    taxonomy_weights: Sequence[float] = (0.6, 0.3, 0.1),
    logit_adjust_tau: float | None = None,
) -> nn.Module:
    """Build a loss.

    Args:
        loss_type: Which loss.
        smoothing: ε of the smoothing losses (and of the class-balanced one).
        taxonomy: An object with ``genus_of`` and ``family_of`` per class, e.g.
            :meth:`inatcomp.data.CompetitionDataset.taxonomy`; needed for taxonomy smoothing.
        class_counts: Training images per class; needed for the class-balanced loss.
        beta: β of the class-balanced loss.
        taxonomy_weights: Shares of ε for (genus, family, uniform).
        logit_adjust_tau: τ of :class:`LogitAdjustedLoss` around the loss (``None``: no adjustment); needs
            ``class_counts``.

    Raises:
        ValueError: A needed argument is missing.
    """
    if logit_adjust_tau is not None:
        if class_counts is None:
            raise ValueError("the logit-adjusted loss needs class_counts")
        base = create_loss(
            loss_type=loss_type, smoothing=smoothing, taxonomy=taxonomy, class_counts=class_counts, beta=beta,
            taxonomy_weights=taxonomy_weights,
        )  # fmt: skip
        return LogitAdjustedLoss(base, class_counts=class_counts, tau=logit_adjust_tau)
    if loss_type is LossType.CROSS_ENTROPY:
        return nn.CrossEntropyLoss()
    if loss_type is LossType.LABEL_SMOOTHING:
        return LabelSmoothingCrossEntropy(smoothing)
    if loss_type is LossType.TAXONOMY_SMOOTHING:
        if taxonomy is None:
            raise ValueError("taxonomy smoothing needs a taxonomy (genus_of, family_of per class)")
        return TaxonomySmoothingCrossEntropy(
            smoothing=smoothing, genus_of=taxonomy.genus_of, family_of=taxonomy.family_of, weights=taxonomy_weights
        )
    if loss_type is LossType.CLASS_BALANCED:
        if class_counts is None:
            raise ValueError("the class-balanced loss needs class_counts")
        return ClassBalancedCrossEntropy(class_counts=class_counts, beta=beta, smoothing=smoothing)
    raise ValueError(f"unknown loss type {loss_type}")
