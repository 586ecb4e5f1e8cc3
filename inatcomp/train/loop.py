"""The epoch loop: :func:`train` builds the run's parts, then trains, evaluates and checkpoints epoch by epoch."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from inatcomp.data.dataset import create_loader
from inatcomp.data.samplers import DrawSampler
from inatcomp.fileio import write_atomic
from inatcomp.models.checkpoints import load_checkpoint, save_checkpoint
from inatcomp.train.checkpointing import Progress, checkpoint_metadata, config_yaml, training_state, write_metrics
from inatcomp.train.config import Stage, TrainConfig, progressive_stages, stage_at
from inatcomp.train.distributed import DistributedContext, init_distributed
from inatcomp.train.engine import evaluate, train_one_epoch
from inatcomp.train.gpuaugment import raw_collate
from inatcomp.train.parts import RunParts, build_parts, enter_stage, micro_batches_in, steps_in
from inatcomp.train.seeding import deterministic_algorithms, seed_epoch, seed_run

__all__ = ["TrainResult", "train"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    metrics: list[dict[str, float]]
    best_checkpoint: Path
    last_checkpoint: Path


def train(config: TrainConfig, *, resume: bool = False, stop_after_epochs: int | None = None) -> TrainResult:
    """Train a model as configured; with ``resume`` continue the run in ``config.out`` exactly.

    Launched under ``torchrun`` the run is one of ``WORLD_SIZE`` processes (see :mod:`inatcomp.train`); the
    process group is started here when none runs yet, and destroyed at the end.

    Args:
        config: The resolved configuration.
        resume: Continue from the run folder's ``last`` checkpoint and training state.
        stop_after_epochs: Stop after this many epochs in this call (the schedule still spans
            ``config.epochs``), as an interrupted run would; resume later to finish.

    Raises:
        ValueError: Bad options, unreadable data, or (with ``resume``) no checkpoint to continue from.
    """
    config.check()
    context, device, owns_group = init_distributed(config.device)
    # Ranks other than 0 log warnings only (an unreadable image in their shard), not progress.
    package_logger = logging.getLogger("inatcomp")
    level = package_logger.level
    if not context.is_main:
        package_logger.setLevel(max(level, logging.WARNING))
    try:
        with deterministic_algorithms(config.deterministic):
            result = _train(config, context=context, device=device, resume=resume, stop_after_epochs=stop_after_epochs)
        if context.enabled:
            dist.barrier()  # every rank returns once rank 0's files are written
        return result
    finally:
        package_logger.setLevel(level)
        if owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    *,
    context: DistributedContext,
    device: torch.device,
    resume: bool,
    stop_after_epochs: int | None,
) -> TrainResult:
    """Build (or restore) the run's parts and progress, write ``config.yaml``, then run the epochs."""
    run_dir = Path(config.out)
    if context.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_run(config.seed)
    checkpoint = load_checkpoint(run_dir, with_training_state=True) if resume else None
    parts = build_parts(config, context=context, device=device, checkpoint=checkpoint)
    progress = Progress() if checkpoint is None else Progress.resumed(checkpoint[1], checkpoint[2])
    if context.is_main:
        if checkpoint is not None:
            _logger.info("resuming %s at epoch %d", run_dir, progress.start_epoch)
        write_atomic(run_dir / "config.yaml", config_yaml(config))
    stages = progressive_stages(config)
    end_epoch = (
        config.epochs if stop_after_epochs is None else min(config.epochs, progress.start_epoch + stop_after_epochs)
    )
    stage = data_config = loaders = None
    for epoch in range(progress.start_epoch, end_epoch):
        epoch_start = time.perf_counter()
        if stage_at(stages, epoch) != stage:
            stage = stage_at(stages, epoch)
            data_config = enter_stage(parts, stage, log=context.is_main and len(stages) > 1)
            loaders = _stage_loaders(parts, stage, epoch)
        row = _run_epoch(parts, stage, epoch, loaders)
        _finish_epoch(parts, progress, row, run_dir=run_dir, data_config=data_config, epoch_start=epoch_start)
    return TrainResult(run_dir=run_dir, metrics=progress.history, best_checkpoint=run_dir / "best.safetensors",
                       last_checkpoint=run_dir / "last.safetensors")  # fmt: skip


def _stage_loaders(parts: RunParts, stage: Stage, epoch: int) -> tuple[Any, Any]:
    """The train and val loaders of a stage, their workers kept across its epochs (started once per stage).

    Each sample's augmentation is seeded by its draw (see SeedPerDraw), not by the worker, so kept workers give
    the epochs a fresh loader would, and a resumed run the epochs of an unbroken one.
    """
    config, device, sampler = parts.config, parts.device, parts.sampler
    keep = config.workers > 0
    train_loader = create_loader(
        dataset=parts.draws, batch_size=stage.batch_size, sampler=DrawSampler(sampler), num_workers=config.workers,
        drop_last=len(sampler) >= stage.batch_size, seed=config.seed * 1_000_003 + epoch,
        pin_memory=device.type == "cuda", persistent_workers=keep,
        collate_fn=raw_collate if parts.augment is not None else None,
    )  # fmt: skip
    val_loader = None
    if parts.val_shard is not None:
        val_loader = create_loader(dataset=parts.val_shard, batch_size=config.val_batch_size or stage.batch_size,
                                   num_workers=config.workers, persistent_workers=keep,
                                   pin_memory=device.type == "cuda")  # fmt: skip
    return train_loader, val_loader


def _run_epoch(parts: RunParts, stage: Stage, epoch: int, loaders: Any) -> dict[str, Any]:
    """Train one epoch of the stage and evaluate on this rank's val shard; returns the epoch's metrics row."""
    config, context, device, sampler = parts.config, parts.context, parts.device, parts.sampler
    steps_per_epoch = steps_in(parts, stage)
    sampler.set_epoch(epoch)  # the kept loader's DrawSampler reads the sampler's epoch when iterated
    seed_epoch(config.seed, epoch, context.rank)
    loader, val_loader = loaders
    row: dict[str, Any] = {"epoch": epoch, "img_size": stage.img_size, "batch_size": stage.batch_size}
    row.update(
        train_one_epoch(
            model=parts.trained,
            criterion=parts.criterion,
            optimizer=parts.optimizer,
            loader=_train_batches(loader, parts.augment),
            device=device,
            config=config,
            epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            scaler=parts.scaler,
            ema=parts.ema,
            distributed=context.enabled,
            lr_scale=stage.lr_scale,
            mixer=parts.mixer,
            micro_batches=micro_batches_in(parts, stage),
            input_norm=parts.input_norm,
        )
    )
    if val_loader is not None:
        row.update(evaluate(parts.evaluated, ((b.image, b.label, b.skipped, b.failed) for b in val_loader), device,
                            amp=config.amp, distributed=context.enabled, input_norm=parts.input_norm))  # fmt: skip
    if parts.transfer is not None:
        transfer = parts.transfer
        row.update(taxa_carried=transfer["carried"], taxa_added=transfer["added"], taxa_dropped=transfer["dropped"])
    return row


def _train_batches(loader: Any, augment: Any) -> Iterator[tuple[Any, Any, Any, Any]]:
    """The loader's ``(images, labels, failed reads, failed indices)``; under ``--decode gpu`` decoded and augmented
    on the device first (:class:`~inatcomp.train.gpuaugment.DeviceAugment`)."""
    for batch in loader:
        if augment is not None:
            images, batch = augment(batch)
            yield images, batch.label, batch.skipped, batch.failed
        else:
            yield batch.image, batch.label, batch.skipped, batch.failed


def _finish_epoch(
    parts: RunParts, progress: Progress, row: dict[str, Any], *, run_dir: Path, data_config: Any, epoch_start: float
) -> None:
    """Record the epoch: the ``best`` checkpoint when it improved, then (rank 0) the log line, ``last`` and metrics."""
    config, epoch = parts.config, row["epoch"]
    error = row.get("val_top1_error", row["train_loss"])  # the same on every rank: reduced
    metadata = checkpoint_metadata(config, parts.train_set, data_config, epoch, row, parts.transfer)
    if error <= progress.best_error:
        progress.best_error = error
        if parts.context.is_main:
            save_checkpoint(run_dir / "best", parts.evaluated, metadata)
    # Wall time of the whole epoch: loader, steps, evaluation, best checkpoint (the last follows).
    row["epoch_seconds"] = time.perf_counter() - epoch_start
    progress.history.append(row)
    parts.sampler.set_epoch(epoch + 1)
    if not parts.context.is_main:
        return
    _logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    save_checkpoint(run_dir / "last", parts.model, metadata, training_state=training_state(parts, progress))
    if config.keep_epochs:
        _keep_epoch(run_dir / "epochs", parts.evaluated, metadata, epoch=epoch, keep=config.keep_epochs)
    write_metrics(run_dir, progress.history)


def _keep_epoch(folder: Path, model: Any, metadata: dict[str, Any], *, epoch: int, keep: int) -> None:
    """Save this epoch's weights as ``folder/epochNNN`` and delete all but the last ``keep`` epochs."""
    save_checkpoint(folder / f"epoch{epoch:03d}", model, metadata)
    for old in sorted(folder.glob("epoch*.json"))[:-keep]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink()
