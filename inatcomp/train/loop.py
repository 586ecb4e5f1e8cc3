"""The training loop: ``inatcomp train``.

One run folder holds everything: ``config.yaml`` (the resolved configuration), ``metrics.csv`` and
``metrics.json`` (per epoch: losses, val top-1/top-3 error, images/s, skipped images, learning rate),
``best.*`` and ``last.*`` checkpoints (safetensors plus JSON metadata, see :mod:`inatcomp.models`) and
``last.state.*`` (optimizer, EMA, sampler and RNG states) from which ``--resume`` continues exactly.

Configuration precedence lives in :func:`resolve_config`: command line over ``-c config.yaml`` over the
defaults of :class:`TrainConfig`.

Recipes on top of the loop (configs in ``kernels/configs/``):

* ``--init CHECKPOINT`` starts from a checkpoint. With the same categories every weight is loaded; with
  another category set (a new taxon set) the classifier rows of the taxa both share are moved to their new
  positions, matched by ``--transfer-match`` (names across releases, or ids), new taxa start at
  ``--new-taxa-init`` (zero or the mean row); everything else is loaded. The counts of taxa carried, added
  and dropped are logged, in every metrics row and in the checkpoints' ``transfer`` metadata.
* ``--freeze none|backbone|all-but-last-N`` trains only the classifier, or the last N stages and what
  follows them; frozen BatchNorm layers keep their statistics (see :func:`inatcomp.models.freeze_model`).
* ``--categories-from init|CHECKPOINT|JSON`` takes the head's categories (and their order) from elsewhere
  than the training JSON: val fine-tuning trains on a val file under the train file's category set.
* Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins the process group (gloo on the CPU, NCCL
  on CUDA, one GPU per ``LOCAL_RANK``), the model is wrapped in DistributedDataParallel, the sampler shards
  each epoch's global order and the val set is sharded, losses and error counts are summed over the ranks,
  and only rank 0 logs progress and writes files. ``batch_size`` is per process: the global batch is
  ``batch_size × WORLD_SIZE`` (scale ``lr`` yourself). Each sample's augmentation is seeded by its draw
  (seed, epoch, place in the epoch's global order) and the global random generators by (seed, epoch,
  rank) at the start of each epoch, so a run on W ranks with batch B takes the same steps over the same
  augmented images as one process with batch W·B, and a resumed run continues exactly.
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel

from inatcomp.formats import write_atomic
from inatcomp.heads import HeadType
from inatcomp.models import (
    FreezeMode,
    NewTaxaInit,
    TaxonMatch,
    choose_taxon_match,
    classifier_names,
    create_model,
    freeze_model,
    freeze_norm_statistics,
    load_checkpoint,
    parse_freeze,
    resolve_checkpoint,
    save_checkpoint,
    set_drop_rate,
    taxon_keys,
    transfer_classifier,
)
from inatcomp.options import AmpMode

__all__ = [
    "AmpMode",
    "OptimizerType",
    "ScheduleType",
    "TrainConfig",
    "TrainResult",
    "ModelEma",
    "DistributedContext",
    "distributed_context",
    "init_distributed",
    "resolve_config",
    "lr_at",
    "train",
    "train_one_epoch",
    "evaluate",
    "Stage",
    "STAGE_KEYS",
    "progressive_stages",
    "stage_at",
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


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; a YAML config file holds the same keys.

    The defaults follow the 2018 baseline recipe (formats.md §5) where it speaks: SGD, momentum 0.9,
    weight decay 1e-4, lr ×0.1 every 30 epochs. ``batch_size`` and ``val_batch_size`` are per process
    (under torchrun the global batch is ``batch_size × WORLD_SIZE``).

    Recipe fields: ``init`` (a checkpoint, stem or run folder to start from); ``categories_from`` (``init``,
    a checkpoint or a dataset JSON whose categories make the head, default: the training JSON's);
    ``transfer_match`` (:class:`~inatcomp.models.TaxonMatch`: ``auto``, ``id`` or ``name``) and
    ``new_taxa_init`` (:class:`~inatcomp.models.NewTaxaInit`: ``zero`` or ``mean``) for an ``init`` with
    another category set; ``freeze`` (``none``, ``backbone`` or ``all-but-last-N``, see
    :func:`~inatcomp.models.parse_freeze`; one option, as the command line writes it); ``freeze_norm_stats``
    (every BatchNorm layer keeps the running statistics it starts with while its weights train: for val
    fine-tuning, where a few dozen small-set batches would otherwise replace them).
    """

    train: str = ""
    val: str | None = None
    images: str = ""
    out: str = ""
    model: str = "resnet18"
    pretrained: str | None = None
    init: str | None = None
    categories_from: str | None = None
    transfer_match: str = "auto"
    new_taxa_init: str = "zero"
    freeze: str = "none"
    freeze_norm_stats: bool = False
    img_size: int = 224
    crop_pct: float = 0.875
    epochs: int = 10
    batch_size: int = 64
    val_batch_size: int | None = None
    workers: int = 2
    seed: int = 0
    drop_rate: float | None = None
    head: str = "avg"
    head_dim: int | None = None
    head_iterations: int | None = None
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
    color_jitter: float = 0.4
    hue: float = 0.0
    progressive: list[dict[str, Any]] | None = None
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
        for name, enum_type in (
            ("optimizer", OptimizerType),
            ("schedule", ScheduleType),
            ("amp", AmpMode),
            ("transfer_match", TaxonMatch),
            ("new_taxa_init", NewTaxaInit),
            ("head", HeadType),
        ):
            try:
                enum_type(getattr(self, name))
            except ValueError:
                choices = ", ".join(e.value for e in enum_type)
                raise ValueError(f"{name}: {getattr(self, name)!r} is not one of {choices}") from None
        parse_freeze(self.freeze)
        if self.categories_from == "init" and not self.init:
            raise ValueError("categories_from: init takes the head's categories from --init: give --init CHECKPOINT")
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
        if self.color_jitter < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError(f"color_jitter must be ≥ 0 and hue in [0, 0.5], got {self.color_jitter}, {self.hue}")
        progressive_stages(self)


@dataclasses.dataclass(frozen=True)
class Stage:
    """A stretch of epochs at one image size (progressive learning; a plain run is one stage).

    Attributes:
        first_epoch: The stage's first epoch.
        epochs: How many epochs it lasts.
        img_size: Training (and validation) image size.
        batch_size: Images per batch (per process).
        magnitude: Augmentation magnitude (colour jitter strength).
        drop_rate: Dropout before the classifier (``None``: the model's own).
        lr_scale: Multiplies the schedule's learning rate.
    """

    first_epoch: int
    epochs: int
    img_size: int
    batch_size: int
    magnitude: float
    drop_rate: float | None
    lr_scale: float = 1.0


#: Keys of a ``progressive:`` stage.
STAGE_KEYS = ("epochs", "img_size", "batch_size", "magnitude", "drop_rate", "lr_scale")


def progressive_stages(config: TrainConfig) -> list[Stage]:
    """The run's stages: ``config.progressive`` (each key defaulting to the run's own value), or one stage.

    EfficientNetV2-style progressive learning (as iNaturalist trained in 2024): small images, large batches and
    weak regularisation first, growing to the full size with regularisation scaled up alongside. The stages'
    epochs must add up to ``config.epochs``, so the learning-rate schedule spans the whole run.

    Raises:
        ValueError: A stage that is not a mapping, an unknown key or a bad value, naming ``progressive[i]``.
    """
    if not config.progressive:
        return [Stage(0, config.epochs, config.img_size, config.batch_size, config.magnitude, config.drop_rate)]
    if not isinstance(config.progressive, list):
        raise ValueError(f"progressive must be a list of stages (mappings of {', '.join(STAGE_KEYS)})")
    stages, first = [], 0
    for i, raw in enumerate(config.progressive):
        where = f"progressive[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a mapping of {', '.join(STAGE_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a stage sets {', '.join(STAGE_KEYS)}")
        try:
            stage = Stage(
                first_epoch=first,
                epochs=int(raw["epochs"]),
                img_size=int(raw.get("img_size", config.img_size)),
                batch_size=int(raw.get("batch_size", config.batch_size)),
                magnitude=float(raw.get("magnitude", config.magnitude)),
                drop_rate=None
                if raw.get("drop_rate", config.drop_rate) is None
                else float(raw.get("drop_rate", config.drop_rate)),
                lr_scale=float(raw.get("lr_scale", 1.0)),
            )
        except KeyError:
            raise ValueError(f"{where}: epochs is required") from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from None
        if stage.epochs < 1 or stage.batch_size < 1 or stage.img_size < 8 or stage.magnitude < 0 or stage.lr_scale <= 0:
            raise ValueError(f"{where}: epochs, batch_size ≥ 1, img_size ≥ 8, magnitude ≥ 0, lr_scale > 0 expected")
        stages.append(stage)
        first += stage.epochs
    if first != config.epochs:
        raise ValueError(f"progressive: the stages last {first} epochs but epochs is {config.epochs}; make them agree")
    return stages


def stage_at(stages: Sequence[Stage], epoch: int) -> Stage:
    """The stage an epoch belongs to."""
    return next((s for s in stages if s.first_epoch <= epoch < s.first_epoch + s.epochs), stages[-1])


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


#: Options an ``init`` checkpoint fills when neither the command line nor the config file gives them.
_FROM_INIT = ("model", "img_size", "crop_pct", "head", "head_dim", "head_iterations")


def resolve_config(
    *, config_file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The run's configuration: command line (``overrides``, ``None`` = not given) over the file over defaults.

    With ``init`` (a checkpoint to start from) the checkpoint's ``model``, ``img_size``, ``crop_pct`` and head
    options come between the file and the defaults, so a fine-tuning recipe need not repeat the architecture.

    Raises:
        ValueError: An unreadable config file, an unknown or bad option, or an ``init`` that is no checkpoint.
    """
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    needed = [name for name in _FROM_INIT if name not in values]
    if "head" in values:  # the head's options go with the head given, not with the checkpoint's
        needed = [name for name in needed if not name.startswith("head_")]
    if values.get("init") and needed:
        metadata_file = resolve_checkpoint(values["init"]).with_suffix(".json")
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"--init {values['init']}: unreadable checkpoint metadata ({error})") from None
        inherited = {"model": metadata.get("model"), **(metadata.get("train_config") or {})}
        values.update({k: inherited[k] for k in needed if inherited.get(k) is not None})
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
        """Move the average towards the model's current weights (a DDP wrapper is unwrapped)."""
        model = getattr(model, "module", model)
        for ema, current in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.mul_(self.decay).add_(current.detach(), alpha=1 - self.decay)
            else:
                ema.copy_(current)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs progress and writes files."""
        return self.rank == 0


def distributed_context() -> DistributedContext:
    """This process's place: from the running process group, else from torchrun's environment, else rank 0 of 1.

    torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in each process.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(rank=int(os.environ["RANK"]), world_size=world_size, local_rank=local_rank)


def init_distributed(device: str = "auto") -> tuple[DistributedContext, torch.device, bool]:
    """Join torchrun's process group when launched under it (gloo on the CPU, NCCL on CUDA).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` … (``cuda`` without an index becomes ``cuda:LOCAL_RANK``).

    Returns:
        The context, this process's device and whether the group was started here (then
        ``torch.distributed.destroy_process_group()`` is the caller's to call).
    """
    context = distributed_context()
    target = _device(device)
    if not context.enabled:
        return context, target, False
    if target.type == "cuda":
        if target.index is None:
            target = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(target)
    if dist.is_initialized():
        return context, target, False
    dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    _logger.debug("rank %d of %d joined the process group on %s", context.rank, context.world_size, target)
    return context, target, True


def _all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum numbers over the process group (float64, so counts stay exact)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


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
    distributed: bool = False,
    lr_scale: float = 1.0,
) -> dict[str, float]:
    """One pass over the loader; returns loss, images/s, skipped images and the last learning rate.

    With ``distributed`` (each rank trained on its shard) the loss, images and skipped images are summed
    over the process group, so the numbers are the global batch's; only rank 0 logs progress.
    """
    model.train()
    log_progress = bool(config.log_every) and _is_main_process()
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
        lr = lr_at(config, epoch * steps_per_epoch + step, steps_per_epoch) * lr_scale
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
        if log_progress and steps % config.log_every == 0:
            rate = images / max(time.perf_counter() - start, 1e-9)
            _logger.info("epoch %d step %d/%d loss %.4f lr %.5f %.1f img/s", epoch, steps, steps_per_epoch,
                         total_loss / images, lr, rate)  # fmt: skip
    seconds = time.perf_counter() - start
    if distributed:
        total_loss, images, skipped = _all_reduce_sum([total_loss, images, skipped], device)
        images, skipped = int(images), int(skipped)
    return {
        "train_loss": total_loss / max(images, 1),
        "train_images_per_s": images / max(seconds, 1e-9),
        "train_seconds": seconds,
        "skipped_images": skipped,
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
    if distributed:
        loss_sum, count, top1, topk, skipped = _all_reduce_sum([loss_sum, count, top1, topk, skipped], device)
        count, top1, topk, skipped = int(count), int(top1), int(topk), int(skipped)
    return {
        "val_loss": loss_sum / max(count, 1),
        "val_top1_error": 1 - top1 / max(count, 1),
        f"val_top{k}_error": 1 - topk / max(count, 1),
        "val_skipped_images": skipped,
    }


def _seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, NumPy and ``random`` from (seed, epoch, rank): resumable at any epoch, distinct per rank."""
    words = np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(2)
    torch.manual_seed(int(words[0]))
    np.random.seed(int(words[1]))
    random.seed(int(words[0]))


class _SeedPerDraw(torch.utils.data.Dataset):
    """The training set read by :class:`~inatcomp.data.samplers.Draw`, each sample seeded by its draw.

    The augmentation (and a bad image's replacement) depends on (seed, epoch, place in the epoch's global
    order) only, not on which rank or loader worker reads the sample, nor on what it read before.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed % 2**32

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, draw: Any) -> Any:
        index, epoch, position = draw
        self.dataset.reseed(int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0]))
        return self.dataset[index]


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


def _metadata(
    config: TrainConfig, train_set: Any, data_config: Any, epoch: int, metrics: dict, transfer: dict | None
) -> dict[str, Any]:
    extra = {"transfer": transfer} if transfer is not None else {}
    return {
        **extra,
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


def _head_categories(source: str) -> tuple[list[int], list[dict] | None]:
    """Category ids and records in head order from a checkpoint (file, stem or run folder) or a dataset JSON.

    Raises:
        ValueError: Neither a checkpoint with category ids nor a readable dataset JSON.
    """
    from inatcomp.data import CompetitionDataset

    try:
        weights = resolve_checkpoint(source)
    except ValueError:
        weights = None
    if weights is not None:
        metadata = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
        if not metadata.get("category_ids"):
            raise ValueError(f"--categories-from {source}: its checkpoint metadata has no category_ids")
        return [int(c) for c in metadata["category_ids"]], metadata.get("categories")
    try:
        dataset = CompetitionDataset(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"--categories-from {source}: neither a checkpoint nor a dataset JSON ({error})") from None
    return [int(c) for c in dataset.category_ids], dataset.categories


def _fill_category_records(dataset: Any, records: Sequence[Mapping[str, Any]] | None) -> None:
    """Give head classes the JSON does not describe (records of only an id) the records of the head's source."""
    by_id = {int(r["id"]): dict(r) for r in records or [] if "id" in r}
    dataset.categories = [by_id.get(int(r["id"]), r) if set(r) == {"id"} else r for r in dataset.categories]


def _init_from(model: torch.nn.Module, config: TrainConfig, train_set: Any) -> dict[str, Any]:
    """Load ``config.init`` into the model, its classifier rows mapped by taxon onto the training set's head.

    Returns:
        The transfer record: source, match, init, counts of taxa carried, added and dropped, and those taxa.

    Raises:
        ValueError: An unreadable checkpoint, one without category ids, or weights that do not fit the model.
    """
    state_dict, metadata, _ = load_checkpoint(config.init)
    if metadata.get("model") not in (None, config.model):
        raise ValueError(f"--init {config.init}: a {metadata['model']} checkpoint, but --model is {config.model}")
    source_ids = [int(c) for c in metadata.get("category_ids") or []]
    if not source_ids:
        raise ValueError(f"--init {config.init}: its metadata has no category_ids")
    target_ids = [int(c) for c in train_set.category_ids]
    match = TaxonMatch(config.transfer_match)
    if match is TaxonMatch.AUTO:
        same = source_ids == target_ids
        match = TaxonMatch.ID if same else choose_taxon_match(metadata.get("categories"), train_set.categories)
    state_dict, report = transfer_classifier(
        state_dict,
        source_taxa=taxon_keys(source_ids, metadata.get("categories"), match=match),
        target_taxa=taxon_keys(target_ids, train_set.categories, match=match),
        classifier=classifier_names(model),
        init=NewTaxaInit(config.new_taxa_init),
        match=match,
    )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"--init {config.init}: its weights do not fit --model {config.model} ({error})") from None
    return {"source": str(config.init), **report.to_dict()}


def _prepare_model(
    config: TrainConfig, train_set: Any, *, checkpoint_metadata: Mapping[str, Any] | None
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model over the training set's head: ``--init`` loaded (or transferred) unless resuming, then frozen.

    Returns:
        The model (on the CPU) and the transfer record (the resumed run's, when resuming; ``None`` without init).
    """
    main = _is_main_process()
    model = create_model(
        config.model,
        num_classes=train_set.num_classes,
        pretrained=config.pretrained,
        drop_rate=config.drop_rate,
        channels_last=config.channels_last,
        head=config.head,
        head_dim=config.head_dim,
        head_iterations=config.head_iterations,
    )
    transfer = None
    if checkpoint_metadata is not None:
        transfer = checkpoint_metadata.get("transfer")
    elif config.init:
        transfer = _init_from(model, config, train_set)
        if main:
            _logger.info("--init %s: %d taxa carried, %d added (rows at %s), %d dropped; matched by %s", config.init,
                         transfer["carried"], transfer["added"], transfer["init"], transfer["dropped"],
                         transfer["match"])  # fmt: skip
    freeze_mode, keep_last = parse_freeze(config.freeze)
    if freeze_mode is not FreezeMode.NONE:
        frozen = freeze_model(model, mode=freeze_mode, keep_last=keep_last)
        if main:
            _logger.info("--freeze %s: %d of %d parameters train (%s); %d BatchNorm layers keep their statistics",
                         config.freeze, frozen.trainable_parameters,
                         frozen.trainable_parameters + frozen.frozen_parameters,
                         ", ".join(frozen.trainable_modules), frozen.frozen_norms)  # fmt: skip
    if config.freeze_norm_stats:
        fixed = freeze_norm_statistics(model)
        if main:
            _logger.info("--freeze-norm-stats: %d BatchNorm layers keep their statistics", fixed)
    return model, transfer


def train(config: TrainConfig, *, resume: bool = False, stop_after_epochs: int | None = None) -> TrainResult:
    """Train a model as configured; with ``resume`` continue the run in ``config.out`` exactly.

    Launched under ``torchrun`` the run is one of ``WORLD_SIZE`` processes (see the module docstring); the
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
    from inatcomp.data import (
        CompetitionDataset,
        SamplerType,
        create_loader,
        create_sampler,
        create_transform,
        resolve_data_config,
    )
    from inatcomp.data.samplers import DrawSampler

    main = context.is_main
    run_dir = Path(config.out)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    random.seed(config.seed)

    checkpoint = load_checkpoint(run_dir, with_training_state=True) if resume else None
    head_ids = head_records = None
    if checkpoint is not None:  # the head of the run being resumed, whatever the JSON says now
        head_ids, head_records = checkpoint[1]["category_ids"], checkpoint[1].get("categories")
    elif config.categories_from:
        head_ids, head_records = _head_categories(
            config.init if config.categories_from == "init" else config.categories_from
        )
    train_set = CompetitionDataset(config.train, config.images, seed=config.seed, category_ids=head_ids)
    _fill_category_records(train_set, head_records)
    val_set = CompetitionDataset(config.val, config.images, category_ids=train_set.category_ids) if config.val else None
    model, transfer = _prepare_model(config, train_set, checkpoint_metadata=checkpoint[1] if checkpoint else None)
    model.to(device)
    stages = progressive_stages(config)

    def enter(stage: Stage) -> Any:
        """Set the stage's image size, augmentation and dropout; returns its data config."""
        stage_config = resolve_data_config(model, input_size=stage.img_size, crop_pct=config.crop_pct)
        train_set.transform = create_transform(
            config=stage_config, training=True, magnitude=stage.magnitude, color_jitter=config.color_jitter,
            hue=config.hue, scale=(config.crop_scale[0], config.crop_scale[1]), seed=config.seed,
        )  # fmt: skip
        if val_set is not None:
            val_set.transform = create_transform(config=stage_config, training=False)
        if stage.drop_rate is not None:
            set_drop_rate(model, stage.drop_rate)
        if main and len(stages) > 1:
            _logger.info("stage from epoch %d: %d px, batch %d, magnitude %.2f, dropout %s, lr ×%.3g",
                         stage.first_epoch, stage.img_size, stage.batch_size, stage.magnitude, stage.drop_rate,
                         stage.lr_scale)  # fmt: skip
        return stage_config

    sampler = create_sampler(
        sampler_type=SamplerType(config.sampler.replace("-", "_")),
        labels=train_set.labels,
        num_samples=config.samples_per_epoch,
        seed=config.seed,
        rank=context.rank,
        world_size=context.world_size,
    )
    criterion = _loss_for(config, train_set).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=AmpMode(config.amp) is AmpMode.FP16)
    ema = ModelEma(model, config.ema_decay) if config.ema_decay > 0 else None

    def steps_in(stage: Stage) -> int:
        # The loader drops the last, incomplete batch whenever there is a full one (see below).
        steps = len(sampler) // stage.batch_size if len(sampler) >= stage.batch_size else 1
        return steps if config.max_steps_per_epoch is None else min(steps, config.max_steps_per_epoch)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    best_error = math.inf
    state: dict[str, Any] = {}
    if checkpoint is not None:  # every rank loads the same checkpoint
        state_dict, metadata, state = checkpoint
        model.load_state_dict(state_dict)
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        sampler.load_state_dict(state["sampler"])
        history = list(state["history"])
        best_error = state["best_error"]
        start_epoch = metadata["epoch"] + 1
        if main:
            _logger.info("resuming %s at epoch %d", run_dir, start_epoch)
    trained = model
    if context.enabled:
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = _optimizer_for(config, model)
    if checkpoint is not None:
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    if main:
        write_atomic(run_dir / "config.yaml", _config_yaml(config))

    evaluated = ema.module if ema is not None else model
    val_shard = val_set
    if val_set is not None and context.enabled:
        val_shard = torch.utils.data.Subset(val_set, range(context.rank, len(val_set), context.world_size))
    draws = _SeedPerDraw(train_set, config.seed)
    end_epoch = config.epochs if stop_after_epochs is None else min(config.epochs, start_epoch + stop_after_epochs)
    stage = None
    for epoch in range(start_epoch, end_epoch):
        epoch_start = time.perf_counter()
        if stage_at(stages, epoch) != stage:
            stage = stage_at(stages, epoch)
            data_config = enter(stage)
        steps_per_epoch = steps_in(stage)
        sampler.set_epoch(epoch)
        _seed_epoch(config.seed, epoch, context.rank)
        # A fresh loader per epoch; each sample's augmentation is seeded by its draw (see _SeedPerDraw).
        loader = create_loader(
            dataset=draws,
            batch_size=stage.batch_size,
            sampler=DrawSampler(sampler),
            num_workers=config.workers,
            drop_last=len(sampler) >= stage.batch_size,
            seed=config.seed * 1_000_003 + epoch,
            pin_memory=device.type == "cuda",
        )
        row: dict[str, Any] = {"epoch": epoch, "img_size": stage.img_size, "batch_size": stage.batch_size}
        row.update(
            train_one_epoch(
                model=trained,
                criterion=criterion,
                optimizer=optimizer,
                loader=((b.image, b.label, b.skipped) for b in loader),
                device=device,
                config=config,
                epoch=epoch,
                steps_per_epoch=steps_per_epoch,
                scaler=scaler,
                ema=ema,
                distributed=context.enabled,
                lr_scale=stage.lr_scale,
            )
        )
        if val_shard is not None:
            val_loader = create_loader(
                dataset=val_shard, batch_size=config.val_batch_size or stage.batch_size, num_workers=config.workers
            )
            row.update(evaluate(evaluated, ((b.image, b.label, b.skipped) for b in val_loader), device,
                                amp=AmpMode(config.amp), distributed=context.enabled))  # fmt: skip
        if transfer is not None:
            row.update(taxa_carried=transfer["carried"], taxa_added=transfer["added"], taxa_dropped=transfer["dropped"])
        error = row.get("val_top1_error", row["train_loss"])  # the same on every rank: reduced
        metadata = _metadata(config, train_set, data_config, epoch, row, transfer)
        if error <= best_error:
            best_error = error
            if main:
                save_checkpoint(run_dir / "best", evaluated, metadata)
        # Wall time of the whole epoch: loader, steps, evaluation, best checkpoint (the last follows).
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        history.append(row)
        sampler.set_epoch(epoch + 1)
        if not main:
            continue
        _logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        training_state = {
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "sampler": sampler.state_dict(),
            "best_error": best_error,
            "history": history,
        }
        if ema is not None:
            training_state["ema"] = ema.module.state_dict()
        save_checkpoint(run_dir / "last", model, metadata, training_state=training_state)
        _write_metrics(run_dir, history)
    return TrainResult(run_dir=run_dir, metrics=history, best_checkpoint=run_dir / "best.safetensors",
                       last_checkpoint=run_dir / "last.safetensors")  # fmt: skip
