"""timm models with a head over the competition's categories: :func:`create_model` and the per-stage dropout.

Where the pieces around a model live: :mod:`~inatcomp.models.heads` (the iSQRT-COV head),
:mod:`~inatcomp.models.pretrained` (the backbone's starting weights: a local file, timm's or a Hugging Face hub
model's, or the shipped synthetic-world weights), :mod:`~inatcomp.models.checkpoints` (safetensors plus JSON
metadata), :mod:`~inatcomp.models.transfer` (classifier rows moved between taxon sets) and
:mod:`~inatcomp.models.freezing` (frozen parameters and BatchNorm statistics, BatchNorm folded for inference).
"""

from __future__ import annotations

import os
from typing import Any

import timm
import torch

from inatcomp.models.heads import CovarianceModel, HeadType
from inatcomp.models.pretrained import create_timm_model

__all__ = ["create_model", "set_drop_rate"]


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    drop_rate: float | None = None,
    channels_last: bool = False,
    head: HeadType | str = HeadType.AVG,
    head_dim: int | None = None,
    head_iterations: int | None = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """A timm model with a ``num_classes`` head: timm's own (average pooling) or iSQRT-COV.

    Args:
        name: Any timm architecture name.
        num_classes: Number of categories.
        pretrained: The backbone's weights (the head is always new, ``num_classes`` wide): a local weights
            file (``.safetensors`` or ``.pth`` from timm; nothing is downloaded); ``"timm"``, timm's published
            default weights for ``name`` (or its tag, ``NAME.TAG``); or ``"hf-hub:OWNER/NAME.TAG"``, that Hugging
            Face hub model, whose architecture must be ``name``'s. The last two go through timm and
            ``huggingface_hub``: downloaded when online, else read from the hub cache (``HF_HUB_OFFLINE=1``,
            ``HF_HOME`` / ``HF_HUB_CACHE``). ``"synth"``: the backbone ``inatcomp pretrain`` trained on a
            synthetic world for ``name``, from :func:`~inatcomp.models.pretrained.synth_weights_dir` (checked
            against its manifest's sha256). ``None`` or ``"none"``: from scratch.
        drop_rate: Dropout before the classifier, or ``None`` for the model's default.
        channels_last: Put the weights in channels-last memory format (faster convolutions).
        head: :attr:`HeadType.AVG` keeps timm's model as it is; :attr:`HeadType.ISQRTCOV` puts covariance
            pooling on a CNN's feature map (a :class:`~inatcomp.models.heads.CovarianceModel`, see
            :mod:`inatcomp.models.heads`).
        head_dim: iSQRT-COV channels after the 1×1 reduction (``None``: 256, a 32,896-dim vector).
        head_iterations: iSQRT-COV Newton–Schulz steps (``None``: 5).
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        ValueError: An unknown architecture or head, a missing weights file, hub weights neither online nor
            cached, a hub model of another architecture, synth weights missing for ``name`` or not matching
            their manifest's sha256, or head options without a head.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"--model {name}: not a timm architecture (see timm.list_models())")
    try:
        head = HeadType(head)
    except ValueError:
        raise ValueError(f"--head {head!r}: not one of {', '.join(h.value for h in HeadType)}") from None
    if head is HeadType.AVG and (head_dim is not None or head_iterations is not None):
        raise ValueError("head_dim and head_iterations are options of --head isqrtcov")
    if drop_rate is not None and head is HeadType.AVG:
        kwargs["drop_rate"] = drop_rate
    model = create_timm_model(name, num_classes=num_classes, pretrained=pretrained, **kwargs)
    if head is HeadType.ISQRTCOV:
        model = CovarianceModel(
            model,
            num_classes=num_classes,
            dim=256 if head_dim is None else head_dim,
            iterations=5 if head_iterations is None else head_iterations,
            drop_rate=drop_rate or 0.0,
        )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def set_drop_rate(model: torch.nn.Module, rate: float) -> None:
    """Set the dropout before the classifier (per stage of progressive learning).

    timm models keep it as ``drop_rate`` (applied functionally in ``forward_head``) or as an ``nn.Dropout`` in
    their head; the covariance head has ``head.drop``. Dropout elsewhere (attention, MLP blocks) is left alone.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"drop_rate must be in [0, 1), got {rate}")
    if hasattr(model, "drop_rate"):
        model.drop_rate = rate
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and (name in ("drop", "head_drop") or name.startswith("head.")):
            module.p = rate
