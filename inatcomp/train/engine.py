"""One epoch of training and one evaluation pass: :func:`train_one_epoch` and :func:`evaluate`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist

from inatcomp.options import AmpMode
from inatcomp.train.config import TrainConfig
from inatcomp.train.distributed import all_reduce_sum, is_main_process
from inatcomp.train.ema import ModelEma
from inatcomp.train.optim import lr_at

__all__ = ["autocast", "train_one_epoch", "evaluate"]

_logger = logging.getLogger(__name__)


def autocast(device: torch.device, amp: AmpMode) -> torch.autocast:
    """Mixed precision as ``amp`` says (off: full precision)."""
    dtype = {AmpMode.BF16: torch.bfloat16, AmpMode.FP16: torch.float16}.get(amp)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=amp is not AmpMode.OFF)


class _BadImages:
    """The unreadable images an epoch met: distinct images, and reads that failed."""

    def __init__(self) -> None:
        self.images: set[int] = set()
        self.failed_reads = 0

    def add(self, batch: Sequence[Any]) -> None:
        """Count a batch's failures (its third item: failed reads per sample; fourth: their image indices)."""
        if len(batch) > 2:
            reads = int(torch.as_tensor(batch[2]).sum())
            self.failed_reads += reads
            if reads and len(batch) > 3:
                failed = torch.as_tensor(batch[3])
                self.images.update(failed[failed >= 0].tolist())

    def counts(self, *, distributed: bool, device: torch.device) -> tuple[int, int]:
        """``(distinct bad images, failed reads)``, over the process group when ``distributed``."""
        images, reads = self.images, self.failed_reads
        if distributed:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, sorted(images))  # a bad image met on two ranks counts once
            images = set().union(*map(set, gathered))
            reads = int(all_reduce_sum([reads], device)[0])
        return len(images), reads


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
    distributed: bool = False,
    lr_scale: float = 1.0,
) -> dict[str, float]:
    """One pass over the loader; returns loss, images/s, bad images and the last learning rate.

    The loader yields ``(inputs, targets)``, optionally with each sample's failed reads and the indices of the
    images that failed (:class:`~inatcomp.data.Sample`). ``skipped_images`` counts distinct bad images,
    ``failed_reads`` the reads that failed (an image drawn twice, or a bad replacement, counts again there).
    With ``distributed`` (each rank trained on its shard) the loss, images and counts are over the process
    group, so the numbers are the global batch's; only rank 0 logs progress.
    """
    model.train()
    log_progress = bool(config.log_every) and is_main_process()
    total_loss = 0.0
    images = steps = 0
    bad = _BadImages()
    start = time.perf_counter()
    lr = config.lr
    for step, batch in enumerate(loader):
        if config.max_steps_per_epoch is not None and step >= config.max_steps_per_epoch:
            break
        inputs, targets = batch[0], batch[1]
        bad.add(batch)
        inputs = inputs.to(device, non_blocking=True)
        if config.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        lr = lr_at(config, epoch * steps_per_epoch + step, steps_per_epoch) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with autocast(device, config.amp):
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
        if log_progress and steps % config.log_every == 0:
            rate = images / max(time.perf_counter() - start, 1e-9)
            _logger.info("epoch %d step %d/%d loss %.4f lr %.5f %.1f img/s", epoch, steps, steps_per_epoch,
                         total_loss / images, lr, rate)  # fmt: skip
    seconds = time.perf_counter() - start
    if distributed:
        total_loss, images = all_reduce_sum([total_loss, images], device)
        images = int(images)
    skipped, failed_reads = bad.counts(distributed=distributed, device=device)
    return {
        "train_loss": total_loss / max(images, 1),
        "train_images_per_s": images / max(seconds, 1e-9),
        "train_seconds": seconds,
        "skipped_images": skipped,
        "failed_reads": failed_reads,
        "lr": lr,
    }


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: AmpMode = AmpMode.OFF,
    k: int = 3,
    distributed: bool = False,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-k error over a labelled loader.

    With ``distributed`` each rank passes its own shard of the images and the sums are reduced over the
    process group, so every rank returns the numbers of the whole set.
    """
    model.eval()
    loss_sum = 0.0
    count = top1 = topk = 0
    bad = _BadImages()
    for batch in loader:
        inputs, targets = batch[0].to(device), batch[1].to(device)
        bad.add(batch)
        with autocast(device, amp):
            logits = model(inputs).float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        best = logits.topk(min(k, logits.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == targets).sum())
        topk += int((best == targets[:, None]).any(dim=1).sum())
        count += len(targets)
    if distributed:
        loss_sum, count, top1, topk = all_reduce_sum([loss_sum, count, top1, topk], device)
        count, top1, topk = int(count), int(top1), int(topk)
    skipped, failed_reads = bad.counts(distributed=distributed, device=device)
    return {
        "val_loss": loss_sum / max(count, 1),
        "val_top1_error": 1 - top1 / max(count, 1),
        f"val_top{k}_error": 1 - topk / max(count, 1),
        "val_skipped_images": skipped,
        "val_failed_reads": failed_reads,
    }
