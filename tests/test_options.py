"""Tests of the torch-free shared choices: Enums parsed with clear errors, the device resolver."""

from __future__ import annotations

import pytest
import torch

from inatcomp.options import AmpMode, enum_choice, resolve_device


def test_enum_choice_takes_members_and_values_and_names_the_choices():
    assert enum_choice(AmpMode, "bf16", option="amp") is AmpMode.BF16
    assert enum_choice(AmpMode, AmpMode.FP16, option="amp") is AmpMode.FP16
    with pytest.raises(ValueError, match=r"^amp: 'fp8' is not one of off, bf16, fp16$"):
        enum_choice(AmpMode, "fp8", option="amp")


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match=f"device: '{bad}' is not a device"):
            resolve_device(bad)
