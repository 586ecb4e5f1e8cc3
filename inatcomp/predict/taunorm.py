"""τ-normalised classifier weights for the long tail: ``inatcomp predict --tau-norm P``.

Kang et al., "Decoupling representation and classifier for long-tailed recognition" (ICLR 2020): after training,
each classifier row ``w_c`` is divided by ``‖w_c‖^P``; long-tailed training leaves head-class rows with larger norms,
and ``P`` between 0 (identity) and 1 (unit norms) trades head for tail accuracy. :func:`tau_normalise` applies it to
a model in place (the bias is kept). It changes a model, not a prediction file, so it lives apart from the torch-free
tools of :mod:`inatcomp.predict.longtail`.
"""

from __future__ import annotations

from typing import Any

import torch

from inatcomp.models.transfer import classifier_names

__all__ = ["tau_normalise"]


def tau_normalise(model: Any, power: float) -> int:
    """Divide each classifier row by its norm to the ``power`` (Kang et al.'s τ-norm), in place.

    Args:
        model: A timm model (its classifier found by :func:`inatcomp.models.transfer.classifier_names`).
        power: ``P`` in ``[0, 1]`` usually; 0 leaves the weights unchanged.

    Returns:
        The number of classifier weight matrices normalised.
    """
    if power == 0:
        return 0
    modules = dict(model.named_modules())
    done = 0
    with torch.no_grad():
        for name in classifier_names(model):
            weight = getattr(modules[name], "weight", None)
            if weight is None or weight.ndim != 2:
                continue
            weight.div_(weight.norm(dim=1, keepdim=True).clamp_min(1e-12).pow(power))
            done += 1
    if not done:
        raise ValueError("τ-norm: the model has no linear classifier weights")
    return done
