"""Seeding that makes a run reproducible and resumable at any epoch, on any number of ranks."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = ["seed_run", "seed_epoch", "SeedPerDraw", "deterministic_algorithms"]


def seed_run(seed: int) -> None:
    """Seed torch, NumPy and ``random`` at the start of a run (the model's initial weights draw from them)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed torch, NumPy and ``random`` from (seed, epoch, rank): resumable at any epoch, distinct per rank."""
    words = np.random.SeedSequence([seed % 2**32, epoch, rank]).generate_state(2)
    torch.manual_seed(int(words[0]))
    np.random.seed(int(words[1]))
    random.seed(int(words[0]))


#: cuBLAS's deterministic workspace setting (NVIDIA's documented value; read when cuBLAS first starts).
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """Deterministic kernels inside the block (``train --deterministic``); the previous settings restored after.

    ``torch.use_deterministic_algorithms`` (an op without a deterministic kernel warns, naming itself), cuDNN's
    deterministic algorithms without autotuning (``cudnn.benchmark`` off), and ``CUBLAS_WORKSPACE_CONFIG`` so that
    cuBLAS reduces in a fixed order (set only when unset: cuBLAS reads it once per process, at its first call). On
    the CPU the kernels are deterministic already and this costs nothing; on a GPU, resume and accumulation are then
    bit-exact at the price of slower kernels (see the README).
    """
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)  # fmt: skip
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


class SeedPerDraw(torch.utils.data.Dataset):
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
