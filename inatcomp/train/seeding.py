"""Seeding that makes a run reproducible and resumable at any epoch, on any number of ranks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_run", "seed_epoch", "SeedPerDraw"]


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
