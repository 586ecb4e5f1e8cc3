"""The configuration of a training run, free of torch so the command line and config files are checked at once.

:class:`TrainConfig` holds every option; :func:`resolve_config` applies the precedence (command line over
``-c config.yaml`` over an ``--init`` checkpoint's architecture over the defaults) and checks the result.
Choice fields are Enums defined here (or in :mod:`inatcomp.options`); the loop maps them to the torch-side
Enums of :mod:`inatcomp.data`,
:mod:`inatcomp.models.losses`, :mod:`inatcomp.models.heads`, :mod:`inatcomp.models.transfer` and
:mod:`inatcomp.models.freezing`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from inatcomp.fileio import read_json, resolve_checkpoint
from inatcomp.options import AmpMode, enum_choice, parse_freeze, parse_pretrained

__all__ = [
    "DecodeOption",
    "OptimizerType",
    "ScheduleType",
    "SamplerOption",
    "LossOption",
    "HeadOption",
    "TransferMatchOption",
    "NewTaxaInitOption",
    "TrainConfig",
    "TrainStage",
    "Stage",
    "STAGE_KEYS",
    "progressive_stages",
    "stage_at",
    "load_config_file",
    "resolve_config",
]


def _dashed(enum_type: type[enum.Enum], value: object) -> enum.Enum | None:
    """The member whose value is ``value`` with dashes for underscores (``class_balanced`` was always accepted)."""
    if isinstance(value, str) and "_" in value:
        return next((member for member in enum_type if member.value == value.replace("_", "-")), None)
    return None


class OptimizerType(enum.Enum):
    """Optimizers."""

    SGD = "sgd"
    ADAMW = "adamw"


class ScheduleType(enum.Enum):
    """Learning-rate schedules (both after a linear warm-up)."""

    STEP = "step"
    COSINE = "cosine"


class DecodeOption(enum.Enum):
    """Where training JPEGs are decoded (:class:`inatcomp.data.gpudecode.DecodeMode` of the same name)."""

    CPU = "cpu"  #: in the loader workers, at reduced scale
    GPU = "gpu"  #: nvJPEG in batches, crops augmented on the GPU (:mod:`inatcomp.train.gpuaugment`)


class SamplerOption(enum.Enum):
    """How an epoch's images are drawn (:class:`~inatcomp.data.SamplerType` of the same name builds it)."""

    RANDOM = "random"
    CLASS_BALANCED = "class-balanced"
    SQRT = "sqrt"

    @classmethod
    def _missing_(cls, value: object) -> SamplerOption | None:
        return _dashed(cls, value)


class LossOption(enum.Enum):
    """The loss; label and taxonomy smoothing are options of ``ce`` (see :func:`inatcomp.models.losses.create_loss`)."""

    CE = "ce"
    CLASS_BALANCED = "class-balanced"
    LOGIT_ADJUSTED = "logit-adjusted"  #: cross-entropy (smoothed as asked) on logits + τ · log π (Menon et al.)
    BALANCED_SOFTMAX = "balanced-softmax"  #: the same with τ = 1 (Ren et al. 2020)

    @classmethod
    def _missing_(cls, value: object) -> LossOption | None:
        return _dashed(cls, value)


class TrainStage(enum.Enum):
    """What a run trains: the whole network, or only the classifier over a frozen ``init`` (Kang et al.'s cRT)."""

    FULL = "full"
    CLASSIFIER = "classifier"


class HeadOption(enum.Enum):
    """The classification head (:class:`~inatcomp.models.heads.HeadType` of the same value)."""

    AVG = "avg"
    ISQRTCOV = "isqrtcov"


class TransferMatchOption(enum.Enum):
    """How an ``init`` checkpoint's taxa are matched (``models.transfer.TaxonMatch`` of the same value)."""

    AUTO = "auto"
    ID = "id"
    NAME = "name"


class NewTaxaInitOption(enum.Enum):
    """Start of the classifier rows of taxa an ``init`` lacks (:class:`~inatcomp.models.transfer.NewTaxaInit`)."""

    ZERO = "zero"
    MEAN = "mean"


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run; a YAML config file holds the same keys.

    The defaults follow the 2018 baseline recipe (docs/formats.md §5) where it speaks: SGD, momentum 0.9,
    weight decay 1e-4, lr ×0.1 every 30 epochs. ``batch_size`` and ``val_batch_size`` are per process
    (under torchrun the global batch is ``batch_size × WORLD_SIZE``).

    Recipe fields: ``pretrained`` (the backbone's weights: a local file, ``timm`` or ``hf-hub:OWNER/NAME.TAG``,
    see :func:`~inatcomp.models.factory.create_model`); ``init`` (a checkpoint, stem or run folder to start from);
    ``categories_from`` (``init``, a checkpoint or a dataset JSON whose categories make the head, default: the
    training JSON's);
    ``transfer_match`` (``auto``, ``id`` or ``name``, see :class:`~inatcomp.models.transfer.TaxonMatch`) and
    ``new_taxa_init`` (``zero`` or ``mean``, see :class:`~inatcomp.models.transfer.NewTaxaInit`) for an ``init`` with
    another category set; ``freeze`` (``none``, ``backbone`` or ``all-but-last-N``, see
    :func:`~inatcomp.options.parse_freeze`; one option, as the command line writes it); ``freeze_norm_stats``
    (every BatchNorm layer keeps the running statistics it starts with while its weights train: for val
    fine-tuning, where a few dozen small-set batches would otherwise replace them); ``stage`` (``classifier``:
    classifier re-training, Kang et al. ICLR 2020's cRT: needs ``init``, freezes everything but the classifier,
    BatchNorm statistics included, and draws class-balanced batches unless ``sampler`` is given;
    ``reset_head`` re-initialises the classifier first instead of keeping ``init``'s).

    Trainer fields: ``mixup``/``cutmix`` (``α`` of each's ``Beta(α, α)``, 0: off), ``mix_prob`` and
    ``mix_switch_prob`` (timm's ``Mixup`` semantics, :mod:`inatcomp.train.mixing`; off in the classifier stage);
    ``accum_steps`` (gradients of N batches per optimizer step: an N times larger batch); ``compile``
    (``torch.compile`` the trained model, falling back to eager with a warning where it cannot compile);
    ``deterministic`` (deterministic kernels, cuDNN and cuBLAS settings: bit-exact resume and accumulation on a GPU
    too, at the cost of slower kernels; :func:`inatcomp.train.seeding.deterministic_algorithms`); ``decode``
    (``gpu``: the workers read bytes and draw the augmentation, nvJPEG decodes and the GPU crops, flips and
    jitters, :mod:`inatcomp.train.gpuaugment`; without CUDA one warning, then ``cpu``);
    ``keep_epochs`` (the evaluated weights of the last N epochs kept as ``epochs/epochNNN``, for ``inatcomp
    average --last N``).

    Every choice field holds a member of its Enum (the type its annotation names); a string is converted
    when the config is made, so a bad choice fails at once, naming the option and the allowed values.
    :meth:`to_dict` gives the values back as the strings a config file writes.
    """

    train: str = ""
    val: str | None = None
    images: str = ""
    out: str = ""
    model: str = "resnet18"
    pretrained: str | None = None
    init: str | None = None
    categories_from: str | None = None
    transfer_match: TransferMatchOption = TransferMatchOption.AUTO
    new_taxa_init: NewTaxaInitOption = NewTaxaInitOption.ZERO
    freeze: str = "none"
    freeze_norm_stats: bool = False
    stage: TrainStage = TrainStage.FULL
    reset_head: bool = False
    img_size: int = 224
    crop_pct: float = 0.875
    epochs: int = 10
    batch_size: int = 64
    val_batch_size: int | None = None
    workers: int = 2
    seed: int = 0
    drop_rate: float | None = None
    head: HeadOption = HeadOption.AVG
    head_dim: int | None = None
    head_iterations: int | None = None
    channels_last: bool = False
    sampler: SamplerOption = SamplerOption.RANDOM
    samples_per_epoch: int | None = None
    loss: LossOption = LossOption.CE
    label_smoothing: float = 0.0
    taxonomy_smoothing: bool = False
    taxonomy_weights: list[float] = dataclasses.field(default_factory=lambda: [0.6, 0.3, 0.1])
    class_balanced_beta: float = 0.999
    logit_adjust_tau: float = 1.0
    optimizer: OptimizerType = OptimizerType.SGD
    lr: float = 0.0045
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: ScheduleType = ScheduleType.STEP
    step_epochs: int = 30
    step_gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    amp: AmpMode = AmpMode.OFF
    clip_grad: float | None = None
    ema_decay: float = 0.0
    magnitude: float = 1.0
    color_jitter: float = 0.4
    hue: float = 0.0
    progressive: list[dict[str, Any]] | None = None
    crop_scale: list[float] = dataclasses.field(default_factory=lambda: [0.08, 1.0])
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_prob: float = 1.0
    mix_switch_prob: float = 0.5
    accum_steps: int = 1
    compile: bool = False
    deterministic: bool = False
    decode: DecodeOption = DecodeOption.CPU
    keep_epochs: int = 0
    max_steps_per_epoch: int | None = None
    log_every: int = 20
    device: str = "auto"

    def __post_init__(self) -> None:
        """Turn each choice given as a string into its Enum member (a ValueError names a bad one)."""
        for name, enum_type in _CHOICES.items():
            setattr(self, name, enum_choice(enum_type, getattr(self, name), option=name))

    def to_dict(self) -> dict[str, Any]:
        """The options as plain values (an Enum as its value): what ``config.yaml`` and checkpoint metadata hold."""
        return {k: v.value if isinstance(v, enum.Enum) else v for k, v in dataclasses.asdict(self).items()}

    def check(self) -> None:
        """Reject missing or contradictory options.

        Raises:
            ValueError: Naming the option and what was expected.
        """
        for name in ("train", "images", "out"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required")
        parse_freeze(self.freeze)
        if self.pretrained:
            parse_pretrained(self.pretrained)
        if self.stage is TrainStage.CLASSIFIER and not self.init:
            raise ValueError("stage: classifier re-trains the classifier of --init RUN: give --init")
        if self.stage is TrainStage.CLASSIFIER and self.freeze not in ("none", "backbone"):
            raise ValueError(f"stage: classifier freezes the backbone itself; freeze: {self.freeze} contradicts it")
        if self.reset_head and self.stage is not TrainStage.CLASSIFIER:
            raise ValueError("reset_head re-initialises the classifier of stage: classifier; set --stage classifier")
        if self.categories_from == "init" and not self.init:
            raise ValueError("categories_from: init takes the head's categories from --init: give --init CHECKPOINT")
        if self.epochs < 1 or self.batch_size < 1 or self.img_size < 8:
            raise ValueError("epochs and batch_size must be ≥ 1 and img_size ≥ 8")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.taxonomy_smoothing and self.loss is LossOption.CLASS_BALANCED:
            raise ValueError("taxonomy_smoothing works with --loss ce (the class-balanced loss smooths uniformly)")
        if self.taxonomy_smoothing and self.label_smoothing <= 0:
            raise ValueError("taxonomy_smoothing spreads the label-smoothing mass: set label_smoothing > 0 (e.g. 0.1)")
        if len(self.taxonomy_weights) != 3 or min(self.taxonomy_weights) < 0 or sum(self.taxonomy_weights) <= 0:
            raise ValueError(f"taxonomy_weights must be 3 non-negative numbers, got {self.taxonomy_weights}")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be two numbers 0 < min ≤ max ≤ 1, got {self.crop_scale}")
        if self.mixup < 0 or self.cutmix < 0:
            raise ValueError(f"mixup and cutmix are Beta(α, α) parameters ≥ 0, got {self.mixup}, {self.cutmix}")
        if not (0 <= self.mix_prob <= 1 and 0 <= self.mix_switch_prob <= 1):
            raise ValueError(
                f"mix_prob and mix_switch_prob must be in [0, 1], got {self.mix_prob}, {self.mix_switch_prob}"
            )
        if self.keep_epochs < 0:
            raise ValueError(f"keep_epochs must be ≥ 0, got {self.keep_epochs}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be ≥ 1, got {self.accum_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.color_jitter < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError(f"color_jitter must be ≥ 0 and hue in [0, 0.5], got {self.color_jitter}, {self.hue}")
        progressive_stages(self)


#: The choice fields and their Enums, read from the annotations as the command line reads them.
_CHOICES: dict[str, type[enum.Enum]] = {
    name: hint
    for name, hint in typing.get_type_hints(TrainConfig).items()
    if isinstance(hint, type) and issubclass(hint, enum.Enum)
}


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


def _inherited_from_init(values: Mapping[str, Any]) -> dict[str, Any]:
    """The ``_FROM_INIT`` options ``values`` lacks, from the metadata of its ``init`` checkpoint (none without one).

    Raises:
        ValueError: An ``init`` that is no checkpoint, or unreadable metadata.
    """
    needed = [name for name in _FROM_INIT if name not in values]
    if "head" in values:  # the head's options go with the head given, not with the checkpoint's
        needed = [name for name in needed if not name.startswith("head_")]
    if not values.get("init") or not needed:
        return {}
    metadata_file = resolve_checkpoint(values["init"]).with_suffix(".json")
    try:
        metadata = read_json(metadata_file)
    except (OSError, ValueError) as error:
        raise ValueError(f"--init {values['init']}: unreadable checkpoint metadata ({error})") from None
    inherited = {"model": metadata.get("model"), **(metadata.get("train_config") or {})}
    return {k: inherited[k] for k in needed if inherited.get(k) is not None}


def resolve_config(
    *, config_file: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The run's configuration: command line (``overrides``, ``None`` = not given) over the file over defaults.

    ``stage: classifier`` draws class-balanced batches unless ``sampler`` is given. With ``init`` (a checkpoint to
    start from) the checkpoint's ``model``, ``img_size``, ``crop_pct`` and head
    options come between the file and the defaults, so a fine-tuning recipe need not repeat the architecture.

    Raises:
        ValueError: An unreadable config file, an unknown or bad option, or an ``init`` that is no checkpoint.
    """
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if values.get("stage") in (TrainStage.CLASSIFIER, TrainStage.CLASSIFIER.value):
        values.setdefault("sampler", SamplerOption.CLASS_BALANCED)  # cRT's batches, unless asked otherwise
    config = TrainConfig(**values)  # bad choices fail here, before the init checkpoint is read
    inherited = _inherited_from_init(values)
    if inherited:
        config = dataclasses.replace(config, **inherited)
    config.check()
    return config
