"""An exponential moving average of the trained weights (evaluated and checkpointed as ``best`` when on)."""

from __future__ import annotations

import copy

import torch

__all__ = ["ModelEma"]


class ModelEma:
    """Exponential moving average of a model's weights (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current weights (a DDP wrapper is unwrapped)."""
        model = getattr(model, "module", model)
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.mul_(self.decay).add_(current.detach(), alpha=1 - self.decay)
            else:
                ema.copy_(current)
