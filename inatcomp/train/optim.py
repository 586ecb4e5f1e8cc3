"""The optimizer and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from inatcomp.train.config import OptimizerType, ScheduleType, TrainConfig

__all__ = ["lr_at", "create_optimizer"]


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at an optimizer step: linear warm-up, then step decay or cosine; stateless, so resumable."""
    epoch = step / max(steps_per_epoch, 1)
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        return config.lr * (epoch + 1 / max(steps_per_epoch, 1)) / config.warmup_epochs
    if config.schedule is ScheduleType.STEP:
        return config.lr * config.step_gamma ** int(epoch // max(config.step_epochs, 1))
    span = max(config.epochs - config.warmup_epochs, 1e-9)
    progress = min(1.0, (epoch - config.warmup_epochs) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def create_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (Nesterov when there is momentum) or AdamW over the parameters that train."""
    # No weight decay on biases and normalisation weights (timm's default grouping).
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer is OptimizerType.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)
