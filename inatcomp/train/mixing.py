"""Mixup and CutMix on a batch, with timm's ``Mixup`` semantics (batch mode).

Mixup (Zhang et al., ICLR 2018) blends two images, ``λ x_i + (1 − λ) x_j``; CutMix (Yun et al., ICCV 2019) pastes
a box of ``x_j`` into ``x_i`` and takes ``λ`` as the share of ``x_i`` left. As in timm, one ``λ`` is drawn per batch
(``Beta(α, α)``), each image is paired with the batch flipped (image ``i`` with image ``n − 1 − i``), a batch is
mixed with probability ``mix_prob``, and when both are on, CutMix is chosen with probability ``switch_prob``.

The target is ``λ · t(y_i) + (1 − λ) · t(y_j)``, where ``t`` is whatever target distribution the loss builds from a
label (one-hot, label-smoothed, or spread over the taxonomy). Every loss of :mod:`inatcomp.models.losses` is linear in
that distribution, so :func:`mixed_loss` computes ``λ · L(z, y_i) + (1 − λ) · L(z, y_j)``: the same number, with
the loss's own smoothing applied to each label, and no loss has to take soft targets.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

__all__ = ["BatchMix", "MixConfig", "Mixer", "mixed_loss", "soft_targets"]


@dataclasses.dataclass(frozen=True)
class MixConfig:
    """What :class:`Mixer` does.

    Attributes:
        mixup_alpha: ``α`` of mixup's ``Beta(α, α)`` (0: no mixup).
        cutmix_alpha: ``α`` of CutMix's ``Beta(α, α)`` (0: no CutMix).
        prob: Probability that a batch is mixed at all.
        switch_prob: With both on, the probability of CutMix rather than mixup.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        """Whether any mixing can happen."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


@dataclasses.dataclass(frozen=True)
class BatchMix:
    """One mixed batch: the inputs, the two label sets and the weight of the first.

    Attributes:
        inputs: The mixed images.
        targets: The original labels (image ``i``'s).
        partner_targets: The partners' labels (image ``n − 1 − i``'s).
        lam: The first labels' weight (1: the batch was not mixed).
        kind: ``mixup``, ``cutmix`` or ``none``.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    partner_targets: torch.Tensor
    lam: float
    kind: str


class Mixer:
    """Draws each batch's mixing from its own seeded generator (the same run mixes the same way).

    Args:
        config: The mixing.
        seed: Seed of the draws (the run's seed; the loop reseeds per epoch with :meth:`set_epoch`).
    """

    def __init__(self, config: MixConfig, *, seed: int = 0) -> None:
        self.config = config
        self.seed = seed
        self.rng = np.random.default_rng([seed, 0])

    def set_epoch(self, epoch: int) -> None:
        """Reseed for an epoch, so that a resumed run mixes its epochs as an unbroken one does."""
        self.rng = np.random.default_rng([self.seed, epoch + 1])

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> BatchMix:
        """Mix a batch of ``[n, C, H, W]`` images and their ``[n]`` labels."""
        config, rng = self.config, self.rng
        partner = targets.flip(0)
        if not config.enabled or rng.random() >= config.prob:
            return BatchMix(inputs, targets, partner, 1.0, "none")
        use_cutmix = config.cutmix_alpha > 0 and (config.mixup_alpha <= 0 or rng.random() < config.switch_prob)
        if not use_cutmix:
            lam = float(rng.beta(config.mixup_alpha, config.mixup_alpha))
            mixed = inputs * lam + inputs.flip(0) * (1.0 - lam)
            return BatchMix(mixed, targets, partner, lam, "mixup")
        lam = float(rng.beta(config.cutmix_alpha, config.cutmix_alpha))
        height, width = inputs.shape[-2:]
        top, bottom, left, right = _box(height, width, lam, rng)
        mixed = inputs.clone()
        mixed[..., top:bottom, left:right] = inputs.flip(0)[..., top:bottom, left:right]
        # λ is the area actually kept (the box is clipped at the borders), as timm's correct_lam does.
        lam = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return BatchMix(mixed, targets, partner, lam, "cutmix")


def _box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A box of about ``1 − λ`` of the image, centred uniformly, clipped to the image."""
    ratio = math.sqrt(1.0 - lam)
    box_h, box_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
    return top, bottom, left, right


def mixed_loss(criterion: torch.nn.Module, logits: torch.Tensor, mix: BatchMix) -> torch.Tensor:
    """The loss of a mixed batch: ``λ · L(z, y_i) + (1 − λ) · L(z, y_j)`` (exact for targets linear in the label)."""
    if mix.lam >= 1.0:
        return criterion(logits, mix.targets)
    return mix.lam * criterion(logits, mix.targets) + (1.0 - mix.lam) * criterion(logits, mix.partner_targets)


def soft_targets(mix: BatchMix, n_classes: int, *, smoothing: float = 0.0) -> torch.Tensor:
    """The mixed target distributions ``[n, n_classes]`` (uniform label smoothing on each label first)."""

    def one(labels: torch.Tensor) -> torch.Tensor:
        hot = torch.nn.functional.one_hot(labels, n_classes).float()
        return hot * (1.0 - smoothing) + smoothing / n_classes

    return mix.lam * one(mix.targets) + (1.0 - mix.lam) * one(mix.partner_targets)
