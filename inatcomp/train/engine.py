"""One epoch of training and one evaluation pass: :func:`train_one_epoch` and :func:`evaluate`."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from inatcomp.data.feed import InputNorm, device_batches
from inatcomp.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from inatcomp.options import AmpMode
from inatcomp.train.config import TrainConfig
from inatcomp.train.distributed import all_reduce_sum, is_main_process
from inatcomp.train.ema import ModelEma
from inatcomp.train.mixing import Mixer, mixed_loss
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
    mixer: Mixer | None = None,
    micro_batches: int | None = None,
    input_norm: InputNorm | None = None,
) -> dict[str, float]:
    """One pass over the loader; returns loss, images/s, bad images and the last learning rate.

    The loader yields ``(inputs, targets)``, optionally with each sample's failed reads and the indices of the
    images that failed (:class:`~inatcomp.data.Sample`). ``skipped_images`` counts distinct bad images,
    ``failed_reads`` the reads that failed (an image drawn twice, or a bad replacement, counts again there).
    With ``distributed`` (each rank trained on its shard) the loss, images and counts are over the process
    group, so the numbers are the global batch's; only rank 0 logs progress.

    With ``config.accum_steps`` = N, each optimizer step sums the gradients of N loader batches, each batch's
    loss divided by the number of batches in its group (the last group of an epoch may be smaller): the same
    update as one batch N times larger. ``steps_per_epoch`` counts optimizer steps, ``micro_batches`` the loader's
    batches (default ``steps_per_epoch × N``). The loss is summed on the device and read back only at logging
    intervals and at the end, so the step loop does not wait for the device.

    Inputs may be uint8 crops (``[N, H, W, 3]``, from presets made with ``uint8=True``): they are copied to the
    device one batch ahead (:func:`~inatcomp.data.feed.device_batches`) and normalised there by ``input_norm``
    (default: ImageNet's mean and std, ``config.channels_last``) before mixup/CutMix; float inputs are taken
    as already normalised.
    """
    model.train()
    log_progress = bool(config.log_every) and is_main_process()
    accum = config.accum_steps
    micro_batches = steps_per_epoch * accum if micro_batches is None else min(micro_batches, steps_per_epoch * accum)
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    images = steps = 0
    bad = _BadImages()
    start = time.perf_counter()
    lr = config.lr
    if mixer is not None:
        mixer.set_epoch(epoch)
    norm = input_norm or InputNorm(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, channels_last=config.channels_last)
    for micro, (inputs, targets) in enumerate(device_batches(_counted(loader, bad, micro_batches), device)):
        step, first = divmod(micro, accum)
        group = min(accum, micro_batches - step * accum)  # batches in this optimizer step
        last = first == group - 1
        inputs = norm(inputs)
        if first == 0:
            lr = lr_at(config, epoch * steps_per_epoch + step, steps_per_epoch) * lr_scale
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr * param_group.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
        # Under DDP only the group's last backward all-reduces the gradients.
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(device, config.amp):
                if mixer is None:
                    loss = criterion(model(inputs), targets)
                else:
                    mix = mixer(inputs, targets)
                    loss = mixed_loss(criterion, model(mix.inputs), mix)
            scaler.scale(loss / group).backward()
        total_loss += loss.detach().double() * len(targets)
        images += len(targets)
        if not last:
            continue
        if config.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        steps = step + 1
        if log_progress and steps % config.log_every == 0:
            rate = images / max(time.perf_counter() - start, 1e-9)
            _logger.info("epoch %d step %d/%d loss %.4f lr %.5f %.1f img/s", epoch, steps, steps_per_epoch,
                         float(total_loss) / images, lr, rate)  # fmt: skip
    seconds = time.perf_counter() - start
    loss_sum = float(total_loss)
    if distributed:
        loss_sum, images = all_reduce_sum([loss_sum, images], device)
        images = int(images)
    skipped, failed_reads = bad.counts(distributed=distributed, device=device)
    return {
        "train_loss": loss_sum / max(images, 1),
        "train_images_per_s": images / max(seconds, 1e-9),
        "train_seconds": seconds,
        "skipped_images": skipped,
        "failed_reads": failed_reads,
        "lr": lr,
    }


def _counted(loader: Iterable, bad: _BadImages, limit: int | None = None) -> Iterator[tuple[Any, Any]]:
    """The loader's ``(inputs, targets)``, its failed reads counted on the host (at most ``limit`` batches)."""
    for index, batch in enumerate(loader):
        if limit is not None and index >= limit:
            return
        bad.add(batch)
        yield batch[0], batch[1]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp: AmpMode = AmpMode.OFF,
    k: int = 3,
    distributed: bool = False,
    input_norm: InputNorm | None = None,
) -> dict[str, float]:
    """Cross-entropy, top-1 and top-k error over a labelled loader.

    With ``distributed`` each rank passes its own shard of the images and the sums are reduced over the
    process group, so every rank returns the numbers of the whole set. uint8 inputs are normalised on the
    device by ``input_norm`` (default: ImageNet's mean and std), as in :func:`train_one_epoch`.
    """
    model.eval()
    loss_sum = 0.0
    count = top1 = topk = 0
    bad = _BadImages()
    norm = input_norm or InputNorm(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    for inputs, targets in device_batches(_counted(loader, bad), device):
        inputs = norm(inputs)
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
