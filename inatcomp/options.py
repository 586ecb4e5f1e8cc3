"""Choices shared by several stages, kept free of torch so the command line can offer them at once.

Every command builds its parser from these Enums (and the config dataclasses), so ``inatcomp --help`` and the
scoring commands never import torch, timm or torchvision.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = ["AmpMode", "enum_choice", "resolve_device"]


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
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {name!r}: not a torch device (cpu, cuda, cuda:1, mps ...): {error}") from None
