"""Choices shared by several stages, kept free of torch so the command line can offer them at once.

Every command builds its parser from these Enums (and the config dataclasses), so ``inatcomp --help`` and the
scoring commands never import torch, timm or torchvision.
"""

from __future__ import annotations

import enum
import re
from typing import Any

__all__ = [
    "AmpMode",
    "FreezeMode",
    "PretrainedSource",
    "enum_choice",
    "parse_freeze",
    "parse_pretrained",
    "resolve_device",
]


class AmpMode(enum.Enum):
    """Mixed precision through ``torch.autocast``; bf16 also runs on the CPU."""

    OFF = "off"
    BF16 = "bf16"
    FP16 = "fp16"


def enum_choice(enum_type: type[enum.Enum], value: object, *, option: str) -> enum.Enum:
    """``value`` as a member of ``enum_type`` (a member, or its value as a string).

    Raises:
        ValueError: Naming the option, the value and every allowed choice.
    """
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        choices = ", ".join(str(member.value) for member in enum_type)
        raise ValueError(f"{option}: {value!r} is not one of {choices}") from None


def resolve_device(name: str | None = None) -> Any:
    """The ``torch.device`` a run uses: ``None`` or ``auto`` is CUDA when available, else the CPU.

    The one device resolver of training, prediction and the geo prior; it imports torch only when called.

    Raises:
        ValueError: A name torch does not know as a device, naming it.
    """
    import torch  # lazy: the torch-free file commands import options too; only the device resolver needs torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device: {name!r} is not a device (auto, cpu, cuda, cuda:N, mps, ...)") from None


class FreezeMode(enum.Enum):
    """Which parts of a model stay fixed during training."""

    NONE = "none"  #: everything trains
    BACKBONE = "backbone"  #: only the classifier trains
    ALL_BUT_LAST = "all-but-last"  #: the last N stages train, with everything after them (final norm, head)


_FREEZE_PATTERN = re.compile(r"all-but-last-(\d+)")


def parse_freeze(text: str) -> tuple[FreezeMode, int]:
    """Parse ``none``, ``backbone`` or ``all-but-last-N`` (N ≥ 1) into a mode and N.

    Here rather than in :mod:`inatcomp.models.freezing` so a training config is checked without importing torch.

    Raises:
        ValueError: Anything else.
    """
    text = str(text).strip().lower().replace("_", "-")
    found = _FREEZE_PATTERN.fullmatch(text)
    if found and int(found.group(1)) >= 1:
        return FreezeMode.ALL_BUT_LAST, int(found.group(1))
    if text in (FreezeMode.NONE.value, FreezeMode.BACKBONE.value):
        return FreezeMode(text), 0
    raise ValueError(f"freeze: {text!r} is not one of none, backbone, all-but-last-N (N ≥ 1)")


class PretrainedSource(enum.Enum):
    """Where ``--pretrained`` takes the backbone's weights from."""

    NONE = "none"  #: no weights: the model starts from scratch (overrides a config file's or a default's source)
    FILE = "file"  #: a local ``.safetensors`` or ``.pth`` file
    SYNTH = "synth"  #: this package's backbone for ``--model``, pretrained on a synthetic world (``inatcomp pretrain``)
    TIMM = "timm"  #: timm's published default weights for ``--model``, through the Hugging Face hub or its cache
    HF_HUB = "hf-hub"  #: one Hugging Face hub model, ``hf-hub:timm/NAME.TAG`` (timm's own model-name prefix)


_HF_HUB_PREFIX = f"{PretrainedSource.HF_HUB.value}:"


def parse_pretrained(text: object) -> tuple[PretrainedSource, str]:
    """Parse a ``--pretrained`` value into its source and what follows: a path, a word, or a hub repo id.

    The words are ``none`` (from scratch), ``synth`` (the package's synthetic-world backbone) and ``timm``; each
    is the word even if a file of that name exists (write ``./timm`` for the file). Whether a path is an
    existing file, or whether synth weights exist for the model, is checked where the weights are loaded.

    Raises:
        ValueError: ``hf-hub:`` with no repo id after it.
    """
    text = str(text)
    for word in (PretrainedSource.NONE, PretrainedSource.SYNTH, PretrainedSource.TIMM):
        if text == word.value:
            return word, text
    if text.startswith(_HF_HUB_PREFIX):
        repo_id = text[len(_HF_HUB_PREFIX) :].strip()
        if not repo_id:
            raise ValueError(f"--pretrained {text}: no hub model after hf-hub: (e.g. hf-hub:timm/resnet10t.tv_in1k)")
        return PretrainedSource.HF_HUB, repo_id
    return PretrainedSource.FILE, text
