"""The parts a run trains with, built from its config: datasets, model, sampler, loss, optimizer, EMA.

A resumed run's parts are restored from its ``last`` checkpoint here (weights, EMA, sampler, optimizer and
gradient scaler), in the order the first run built them, so the resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from inatcomp.data.dataset import CompetitionDataset
from inatcomp.data.feed import InputNorm
from inatcomp.data.gpudecode import DecodeMode, resolve_decode
from inatcomp.data.samplers import SamplerType, create_sampler
from inatcomp.data.transforms import create_transform, resolve_data_config
from inatcomp.models.factory import set_drop_rate
from inatcomp.models.losses import LossType, create_loss
from inatcomp.options import AmpMode
from inatcomp.train.config import LossOption, SamplerOption, Stage, TrainConfig, TrainStage
from inatcomp.train.distributed import DistributedContext
from inatcomp.train.ema import ModelEma
from inatcomp.train.gpuaugment import DeviceAugment, RawTrainSet
from inatcomp.train.mixing import MixConfig, Mixer
from inatcomp.train.optim import create_optimizer
from inatcomp.train.recipes import fill_category_records, head_categories, prepare_model
from inatcomp.train.seeding import SeedPerDraw

__all__ = [
    "RunParts",
    "build_parts",
    "compile_or_eager",
    "create_criterion",
    "enter_stage",
    "micro_batches_in",
    "steps_in",
]

_logger = logging.getLogger(__name__)

#: A checkpoint as :func:`inatcomp.models.checkpoints.load_checkpoint` returns it with its training state.
Checkpoint = tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]


@dataclasses.dataclass
class RunParts:
    """What a run trains with.

    Attributes:
        config: The resolved configuration.
        context: This process's place among the ranks.
        device: This process's device.
        train_set: The training :class:`~inatcomp.data.CompetitionDataset` (its transform set per stage).
        val_set: The validation dataset, or ``None``.
        model: The model (unwrapped).
        trained: The model as trained: wrapped in DistributedDataParallel under torchrun.
        transfer: The ``--init`` transfer record, or ``None``.
        sampler: The epoch sampler (sharded under torchrun).
        criterion: The loss.
        optimizer: The optimizer.
        scaler: The gradient scaler (enabled for fp16 only).
        ema: The weights' moving average, or ``None``.
        mixer: Mixup/CutMix of each batch, or ``None``.
        input_norm: The current stage's normalisation of the workers' uint8 crops on the device.
        decode: Where training images are decoded (the resolved ``--decode``).
        augment: Under ``--decode gpu``, the current stage's decoding and augmentation on the device.
    """

    config: TrainConfig
    context: DistributedContext
    device: torch.device
    train_set: Any
    val_set: Any | None
    model: torch.nn.Module
    trained: torch.nn.Module
    transfer: dict[str, Any] | None
    sampler: Any
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    mixer: Mixer | None = None
    input_norm: InputNorm | None = None
    decode: DecodeMode = DecodeMode.CPU
    augment: DeviceAugment | None = None

    @property
    def evaluated(self) -> torch.nn.Module:
        """The model evaluated and saved as ``best``: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def draws(self) -> SeedPerDraw:
        """The training set read by the sampler's draws, each sample seeded by its draw."""
        if self.decode is DecodeMode.GPU:  # the workers read bytes and draw the augmentation
            return SeedPerDraw(RawTrainSet(self.train_set), self.config.seed)
        return SeedPerDraw(self.train_set, self.config.seed)

    @property
    def val_shard(self) -> Any | None:
        """This rank's share of the validation set (all of it in a single process)."""
        if self.val_set is None or not self.context.enabled:
            return self.val_set
        return torch.utils.data.Subset(
            self.val_set, range(self.context.rank, len(self.val_set), self.context.world_size)
        )


def _datasets(config: TrainConfig, resumed: Mapping[str, Any] | None) -> tuple[Any, Any | None]:
    """The training and validation sets over the head's categories (the resumed run's, or ``categories_from``'s)."""
    head_ids = head_records = None
    if resumed is not None:  # the head of the run being resumed, whatever the JSON says now
        head_ids, head_records = resumed["category_ids"], resumed.get("categories")
    elif config.categories_from:
        head_ids, head_records = head_categories(
            config.init if config.categories_from == "init" else config.categories_from
        )
    train_set = CompetitionDataset(config.train, config.images, seed=config.seed, category_ids=head_ids)
    fill_category_records(train_set, head_records)
    val_set = CompetitionDataset(config.val, config.images, category_ids=train_set.category_ids) if config.val else None
    return train_set, val_set


def _sampler_for(config: TrainConfig, train_set: Any, context: DistributedContext) -> Any:
    """The epoch sampler ``config.sampler`` names, sharded over the ranks."""
    sampler_types = {
        SamplerOption.RANDOM: SamplerType.RANDOM,
        SamplerOption.CLASS_BALANCED: SamplerType.CLASS_BALANCED,
        SamplerOption.SQRT: SamplerType.SQRT,
    }
    return create_sampler(
        sampler_type=sampler_types[config.sampler],
        labels=train_set.labels,
        num_samples=config.samples_per_epoch,
        seed=config.seed,
        rank=context.rank,
        world_size=context.world_size,
    )


def create_criterion(config: TrainConfig, train_set: Any) -> torch.nn.Module:
    """The loss ``config.loss`` names, with the label or taxonomy smoothing it asks for.

    ``logit-adjusted`` and ``balanced-softmax`` wrap the cross-entropy (smoothed or not) in
    :class:`~inatcomp.models.losses.LogitAdjustedLoss` (τ = ``logit_adjust_tau``, or 1 for the balanced softmax).
    """
    if config.loss is LossOption.CLASS_BALANCED:
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
        logit_adjust_tau={LossOption.LOGIT_ADJUSTED: config.logit_adjust_tau, LossOption.BALANCED_SOFTMAX: 1.0}.get(
            config.loss
        ),
    )


def build_parts(
    config: TrainConfig, *, context: DistributedContext, device: torch.device, checkpoint: Checkpoint | None
) -> RunParts:
    """Build the run's parts; with a ``checkpoint`` (resuming) restore their states from it.

    The order is the first run's whatever happens: the model's initial weights draw from the generators
    seeded just before.
    """
    train_set, val_set = _datasets(config, checkpoint[1] if checkpoint is not None else None)
    model, transfer = prepare_model(config, train_set, checkpoint_metadata=checkpoint[1] if checkpoint else None)
    model.to(device)
    sampler = _sampler_for(config, train_set, context)
    criterion = create_criterion(config, train_set).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp is AmpMode.FP16)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None
    if checkpoint is not None:  # every rank loads the same checkpoint
        state_dict, _, state = checkpoint
        model.load_state_dict(state_dict)
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
    trained = compile_or_eager(model) if config.compile else model
    if context.enabled:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = create_optimizer(config, model)
    if checkpoint is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    return RunParts(
        config=config, context=context, device=device, train_set=train_set, val_set=val_set, model=model,
        trained=trained, transfer=transfer, sampler=sampler, criterion=criterion, optimizer=optimizer,
        scaler=scaler, ema=ema, mixer=_mixer_for(config, context), decode=resolve_decode(config.decode.value, device),
    )  # fmt: skip


def enter_stage(parts: RunParts, stage: Stage, *, log: bool) -> Any:
    """Set the stage's image size, augmentation and dropout; returns its data config.

    The presets return uint8 crops; ``parts.input_norm`` normalises them on the device (the stage's mean and std).

    Args:
        parts: The run's parts.
        stage: The stage entered.
        log: Log the stage (rank 0 of a progressive run).
    """
    config = parts.config
    stage_config = resolve_data_config(parts.model, input_size=stage.img_size, crop_pct=config.crop_pct)
    parts.train_set.transform = create_transform(
        config=stage_config, training=True, magnitude=stage.magnitude, color_jitter=config.color_jitter,
        hue=config.hue, scale=(config.crop_scale[0], config.crop_scale[1]), seed=config.seed, uint8=True,
    )  # fmt: skip
    if parts.val_set is not None:
        parts.val_set.transform = create_transform(config=stage_config, training=False, uint8=True)
    parts.input_norm = InputNorm(stage_config.mean, stage_config.std, channels_last=config.channels_last)
    if parts.decode is DecodeMode.GPU:
        parts.augment = DeviceAugment(parts.train_set.transform, parts.device)
    if stage.drop_rate is not None:
        set_drop_rate(parts.model, stage.drop_rate)
    if log:
        _logger.info("stage from epoch %d: %d px, batch %d, magnitude %.2f, dropout %s, lr ×%.3g",
                     stage.first_epoch, stage.img_size, stage.batch_size, stage.magnitude, stage.drop_rate,
                     stage.lr_scale)  # fmt: skip
    return stage_config


def micro_batches_in(parts: RunParts, stage: Stage) -> int:
    """Loader batches trained on in an epoch of the stage (``accum_steps`` of them per optimizer step)."""
    # The loader drops the last, incomplete batch whenever there is a full one (see the loop).
    sampler, config = parts.sampler, parts.config
    batches = len(sampler) // stage.batch_size if len(sampler) >= stage.batch_size else 1
    if config.max_steps_per_epoch is not None:
        batches = min(batches, config.max_steps_per_epoch * config.accum_steps)
    return batches


def steps_in(parts: RunParts, stage: Stage) -> int:
    """Optimizer steps in an epoch of the stage (a last, smaller accumulation group counts as one)."""
    return -(-micro_batches_in(parts, stage) // parts.config.accum_steps)


def _mixer_for(config: TrainConfig, context: Any) -> Mixer | None:
    """Mixup/CutMix as configured; none in the classifier stage (its class-balanced batches train the head alone)."""
    mix = MixConfig(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.mix_prob,
                    switch_prob=config.mix_switch_prob)  # fmt: skip
    if not mix.enabled:
        return None
    if config.stage is TrainStage.CLASSIFIER:
        _logger.warning("stage: classifier trains without mixup/CutMix (mixup %g, cutmix %g ignored)",
                        config.mixup, config.cutmix)  # fmt: skip
        return None
    return Mixer(mix, seed=config.seed * 1_000_003 + context.rank)


class _CompiledOrEager(torch.nn.Module):
    """``torch.compile``'s module, or the eager one once compiling has failed (logged once, as a warning)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.eager = model
        self.compiled: Any = torch.compile(model)
        self.failed = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.failed:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - any compiler failure: the eager model is the same function
                self.failed = True
                _logger.warning("--compile: torch.compile failed (%s: %s); training in eager mode",
                                type(error).__name__, str(error).splitlines()[0] if str(error) else "")  # fmt: skip
        return self.eager(*args, **kwargs)


def compile_or_eager(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile(model)``, falling back to ``model`` itself, with a warning, where it cannot compile.

    The weights are shared: checkpoints and evaluation keep using the unwrapped model.
    """
    try:
        return _CompiledOrEager(model)
    except Exception as error:  # noqa: BLE001 - e.g. a platform torch.compile does not support
        _logger.warning("--compile: torch.compile is unavailable (%s); training in eager mode", error)
        return model
