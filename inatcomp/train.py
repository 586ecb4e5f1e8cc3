"""The training loop: ``inatcomp train``.

One run folder holds everything: ``config.yaml`` (the resolved configuration), ``metrics.csv`` and
``metrics.json`` (per epoch: losses, val top-1/top-3 error, images/s, skipped images, learning rate),
``best.*`` and ``last.*`` checkpoints (safetensors plus JSON metadata, see :mod:`inatcomp.models`) and
``last.state.*`` (optimizer, EMA, sampler and RNG states) from which ``--resume`` continues exactly.

Configuration precedence lives in :func:`resolve_config`: command line over ``-c config.yaml`` over the
defaults of :class:`TrainConfig`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import enum
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from inatcomp.formats import write_atomic
from inatcomp.models import create_model, load_checkpoint, save_checkpoint

__all__ = [
    "AmpMode",
    "OptimizerType",
    "ScheduleType",
    "TrainConfig",
    "TrainResult",
    "ModelEma",
    "resolve_config",
    "lr_at",
    "train",
    "train_one_epoch",
    "evaluate",
]

_logger = logging.getLogger(__name__)


class OptimizerType(enum.Enum):
    """Optimizers."""

    SGD = "sgd"
    ADAMW = "adamw"


class ScheduleType(enum.Enum):
    """Learning-rate schedules (both after a linear warm-up)."""

    STEP = "step"
    COSINE = "cosine"


class AmpMode(enum.Enum):
    """Mixed precision through ``torch.autocast``; bf16 also runs on the CPU."""

    OFF = "off"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; a YAML config file holds the same keys.

    The defaults follow the 2018 baseline recipe (formats.md §5) where it speaks: SGD, momentum 0.9,
    weight decay 1e-4, lr ×0.1 every 30 epochs.
    """

    train: str = ""
    val: str | None = None
    images: str = ""
    out: str = ""
    model: str = "resnet18"
    pretrained: str | None = None
    init: str | None = None
    img_size: int = 224
    crop_pct: float = 0.875
    epochs: int = 10
    batch_size: int = 64
    val_batch_size: int | None = None
    workers: int = 2
    seed: int = 0
    drop_rate: float | None = None
    channels_last: bool = False
    sampler: str = "random"
    samples_per_epoch: int | None = None
    loss: str = "ce"
    label_smoothing: float = 0.0
    taxonomy_smoothing: bool = False
    taxonomy_weights: list[float] = dataclasses.field(default_factory=lambda: [0.6, 0.3, 0.1])
    class_balanced_beta: float = 0.999
    optimizer: str = "sgd"
    lr: float = 0.0045
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"
    step_epochs: int = 30
    step_gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    amp: str = "off"
    clip_grad: float | None = None
    ema_decay: float = 0.0
    magnitude: float = 1.0
    crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.08, 1.0])
    max_steps_per_epoch: int | None = None
    log_every: int = 20
    device: str = "auto"

    def check(self) -> None:
        """Reject missing or contradictory options.

        Raises:
            ValueError: Naming the option and what was expected.
        """
        for name in ("train", "images", "out"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        for name, enum_type in (("optimizer", OptimizerType), ("schedule", ScheduleType), ("amp", AmpMode)):
            try:
                enum_type(getattr(self, name))
            except ValueError:
                choices = ", ".join(e.value for e in enum_type)
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {choices}") from None
        if self.epochs < 1 or self.batch_size < 1 or self.img_size < 8:
            raise ValueError("epochs and batch_size must be ≥ 1 and img_size ≥ 8")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.taxonomy_smoothing and self.label_smoothing <= 0:
            raise ValueError("taxonomy_smoothing spreads the label-smoothing mass: set label_smoothing > 0 (e.g. 0.1)")
        if len(self.taxonomy_weights) != 3 or min(self.taxonomy_weights) < 0 or sum(self.taxonomy_weights) <= 0:
            raise ValueError(f"taxonomy_weights must be 3 non-negative numbers, got {self.taxonomy_weights}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be two numbers 0 < min ≤ max ≤ 1, got {self.crop_scale}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config; keys may use dashes or underscores.

    Raises:
        ValueError: Unreadable YAML, not a mapping, or an unknown key (naming the file and the key).
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: unreadable config ({error})") from error
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a config must be a mapping of option: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _FIELDS:
            raise ValueError(f"{path}: unknown option {key!r} (known: {', '.join(sorted(_FIELDS))})")
        out[name] = value
    return out


def resolve_config(
    *, config_file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The run's configuration: command line (``overrides``, ``None`` = not given) over the file over defaults."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    config = TrainConfig(**values)
    config.check()
    return config


def lr_at(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at an optimizer step: linear warm-up, then step decay or cosine; stateless, so resumable."""
    epoch = step / max(steps_per_epoch, 1)
    if config.warmup_epochs > 0 and epoch < config.warmup_epochs:
        return config.lr * (epoch + 1 / max(steps_per_epoch, 1)) / config.warmup_epochs
    if ScheduleType(config.schedule) is ScheduleType.STEP:
        return config.lr * config.step_gamma ** int(epoch // max(config.step_epochs, 1))
    span = max(config.epochs - config.warmup_epochs, 1e-9)
    progress = min(1.0, (epoch - config.warmup_epochs) / span)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


class ModelEma:
    """Exponential moving average of a model's weights (buffers are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the model's current weights."""
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.mul_(self.decay).add_(current.detach(), alpha=1 - self.decay)
            else:
                ema.copy_(current)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _autocast(device: torch.device, amp: AmpMode):
    dtype = {AmpMode.BF16: torch.bfloat16, AmpMode.FP16: torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp is not AmpMode.OFF)


def train_one_epoch(
    *,
    model: torch.nn.Module,
    criterion: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable,
    device: torch.device,
    config: TrainConfig,
    epoch: int,
    steps_per_epoch: int,
    scaler: torch.amp.GradScaler,
    ema: ModelEma | None = None,
) -> dict[str, float]:
    """One pass over the loader; returns loss, images/s, skipped images and the last learning rate."""
    model.train()
    amp = AmpMode(config.amp)
    total_loss = 0.0
    images = skipped = steps = 0
    start = time.perf_counter()
    lr = config.lr
    for step, batch in enumerate(loader):
        if config.max_steps_per_epoch is not None and step >= config.max_steps_per_epoch:
            break
        inputs, targets = batch[0], batch[1]
        if len(batch) > 2:
            skipped += int(torch.as_tensor(batch[2]).sum())
        inputs = inputs.to(device, non_blocking=True)
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        lr = lr_at(config, epoch * steps_per_epoch + step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with _autocast(device, amp):
            loss = criterion(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        total_loss += float(loss.detach()) * len(targets)
        images += len(targets)
        steps = step + 1
        if config.log_every and steps % config.log_every == 0:
            rate = images / max(time.perf_counter() - start, 1e-9)
            _logger.info("epoch %d step %d/%d loss %.4f lr %.5f %.1f img/s", epoch, steps, steps_per_epoch,
                         total_loss / images, lr, rate)  # fmt: skip
    seconds = time.perf_counter() - start
    return {
        "train_loss": total_loss / max(images, 1),
        "train_images_per_s": images / max(seconds, 1e-9),
        "train_seconds": seconds,
        "skipped_images": skipped,
        "lr": lr,
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: Iterable, device: torch.device, *, amp: AmpMode = AmpMode.OFF, k: int = 3
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-k error over a labelled loader."""
    model.eval()
    loss_sum = 0.0
    count = top1 = topk = skipped = 0
    for batch in loader:
        inputs, targets = batch[0].to(device), batch[1].to(device)
        if len(batch) > 2:
            skipped += int(torch.as_tensor(batch[2]).sum())
        with _autocast(device, amp):
            logits = model(inputs).float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        best = logits.topk(min(k, logits.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == targets).sum())
        topk += int((best == targets[:, None]).any(dim=1).sum())
        count += len(targets)
    return {
        "val_loss": loss_sum / max(count, 1),
        "val_top1_error": 1 - top1 / max(count, 1),
        f"val_top{k}_error": 1 - topk / max(count, 1),
        "val_skipped_images": skipped,
    }


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    metrics: list[dict[str, float]]
    best_checkpoint: Path
    last_checkpoint: Path


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_atomic(run_dir / "metrics.json", json.dumps(history, indent=2))
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in history for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(run_dir / "metrics.csv", buffer.getvalue())


def _config_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def _loss_for(config: TrainConfig, train_set: Any) -> torch.nn.Module:
    from inatcomp.losses import LossType, create_loss

    if config.loss not in ("ce", "class-balanced", "class_balanced"):
        raise ValueError(f"loss: {config.loss!r} is not one of ce, class-balanced")
    balanced = config.loss != "ce"
    if balanced and config.taxonomy_smoothing:
        raise ValueError("taxonomy_smoothing works with --loss ce (the class-balanced loss smooths uniformly)")
    if balanced:
        loss_type = LossType.CLASS_BALANCED
    elif config.taxonomy_smoothing:
        loss_type = LossType.TAXONOMY_SMOOTHING
    elif config.label_smoothing > 0:
        loss_type = LossType.LABEL_SMOOTHING
    else:
        loss_type = LossType.CROSS_ENTROPY
    return create_loss(
        loss_type=loss_type,
        smoothing=config.label_smoothing,
        taxonomy=train_set.taxonomy() if config.taxonomy_smoothing else None,
        class_counts=train_set.class_counts(),
        beta=config.class_balanced_beta,
        taxonomy_weights=tuple(config.taxonomy_weights),
    )


def _optimizer_for(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    # No weight decay on biases and normalisation weights (timm's default grouping).
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if OptimizerType(config.optimizer) is OptimizerType.SGD:
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def _metadata(config: TrainConfig, train_set: Any, data_config: Any, epoch: int, metrics: dict) -> dict[str, Any]:
    return {
        "format": "inatcomp-checkpoint-1",
        "model": config.model,
        "num_classes": int(train_set.num_classes),
        "category_ids": [int(c) for c in train_set.category_ids],
        "categories": train_set.categories,
        "data_config": {
            "input_size": list(data_config.input_size),
            "mean": list(data_config.mean),
            "std": list(data_config.std),
            "crop_pct": data_config.crop_pct,
            "interpolation": data_config.interpolation.value,
        },
        "train_config": dataclasses.asdict(config),
        "epoch": epoch,
        "metrics": metrics,
    }


def train(config: TrainConfig, *, resume: bool = False, stop_after_epochs: int | None = None) -> TrainResult:
    """Train a model as configured; with ``resume`` continue the run in ``config.out`` exactly.

    Args:
        config: The resolved configuration.
        resume: Continue from the run folder's ``last`` checkpoint and training state.
        stop_after_epochs: Stop after this many epochs in this call (the schedule still spans
            ``config.epochs``), as an interrupted run would; resume later to finish.

    Raises:
        ValueError: Bad options, unreadable data, or (with ``resume``) no checkpoint to continue from.
    """
    from inatcomp.data import (
        CompetitionDataset,
        SamplerType,
        create_loader,
        create_sampler,
        create_transform,
        resolve_data_config,
    )

    config.check()
    run_dir = Path(config.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    train_set = CompetitionDataset(config.train, config.images, seed=config.seed)
    val_set = CompetitionDataset(config.val, config.images, category_ids=train_set.category_ids) if config.val else None
    model = create_model(
        config.model,
        num_classes=train_set.num_classes,
        pretrained=config.pretrained,
        drop_rate=config.drop_rate,
        channels_last=config.channels_last,
    )
    if config.init:
        state_dict, metadata, _ = load_checkpoint(config.init)
        if metadata.get("category_ids") != [int(c) for c in train_set.category_ids]:
            raise ValueError(
                f"--init {config.init}: its categories differ from the training set's; "
                "transfer between taxon sets maps classifier rows by taxon (see the recipes)"
            )
        model.load_state_dict(state_dict)
    model.to(device)
    data_config = resolve_data_config(model, input_size=config.img_size, crop_pct=config.crop_pct)
    train_set.transform = create_transform(
        config=data_config,
        training=True,
        magnitude=config.magnitude,
        scale=(config.crop_scale[0], config.crop_scale[1]),
        seed=config.seed,
    )
    if val_set is not None:
        val_set.transform = create_transform(config=data_config, training=False)
    sampler = create_sampler(
        sampler_type=SamplerType(config.sampler.replace("-", "_")),
        labels=train_set.labels,
        num_samples=config.samples_per_epoch,
        seed=config.seed,
    )
    criterion = _loss_for(config, train_set).to(device)
    optimizer = _optimizer_for(config, model)
    scaler = torch.amp.GradScaler(device.type, enabled=AmpMode(config.amp) is AmpMode.FP16)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    # The loader drops the last, incomplete batch whenever there is a full one (see below).
    steps_per_epoch = len(sampler) // config.batch_size if len(sampler) >= config.batch_size else 1
    if config.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    best_error = math.inf
    if resume:
        state_dict, metadata, state = load_checkpoint(run_dir, with_training_state=True)
        model.load_state_dict(state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        history = list(state["history"])
        best_error = state["best_error"]
        start_epoch = metadata["epoch"] + 1
        _set_rng_state(state["rng"])
        _logger.info("resuming %s at epoch %d", run_dir, start_epoch)
    write_atomic(run_dir / "config.yaml", _config_yaml(config))

    evaluated = ema.module if ema is not None else model
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch)
        # A fresh loader per epoch seeded by (seed, epoch): augmentation does not depend on earlier epochs.
        loader = create_loader(
            dataset=train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.workers,
            drop_last=len(sampler) >= config.batch_size,
            seed=config.seed * 1_000_003 + epoch,
            pin_memory=device.type == "cuda",
        )
        row: dict[str, Any] = {"epoch": epoch}
        row.update(
            train_one_epoch(
                model=model,
                criterion=criterion,
                optimizer=optimizer,
                loader=((b.image, b.label, b.skipped) for b in loader),
                device=device,
                config=config,
                epoch=epoch,
                steps_per_epoch=steps_per_epoch,
                scaler=scaler,
                ema=ema,
            )
        )
        if val_set is not None:
            val_loader = create_loader(
                dataset=val_set, batch_size=config.val_batch_size or config.batch_size, num_workers=config.workers
            )
            row.update(evaluate(evaluated, ((b.image, b.label, b.skipped) for b in val_loader), device,
                                amp=AmpMode(config.amp)))  # fmt: skip
        error = row.get("val_top1_error", row["train_loss"])
        metadata = _metadata(config, train_set, data_config, epoch, row)
        if error <= best_error:
            best_error = error
            save_checkpoint(run_dir / "best", evaluated, metadata)
        # Wall time of the whole epoch: loader, steps, evaluation, best checkpoint (the last follows).
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        _logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        sampler.set_epoch(epoch + 1)
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(),
            "rng": _rng_state(),
            "best_error": best_error,
            "history": history,
        }
        if ema is not None:
            training_state["ema"] = ema.module.state_dict()
        save_checkpoint(run_dir / "last", model, metadata, training_state=training_state)
        _write_metrics(run_dir, history)
    return TrainResult(run_dir=run_dir, metrics=history, best_checkpoint=run_dir / "best.safetensors",
                       last_checkpoint=run_dir / "last.safetensors")  # fmt: skip
