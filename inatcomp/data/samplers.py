"""Epoch samplers: random, class-balanced and square-root, deterministic, shardable and resumable.

Every sampler draws one *global* order per epoch from ``(seed, epoch)`` alone, pads it to a multiple of
the world size by wrapping around, and gives rank ``r`` the positions ``r, r + world_size, …`` of it:
the ranks' slices are disjoint and together cover the epoch. The sampler remembers its epoch and its
position in its slice, so ``state_dict()`` / ``load_state_dict()`` resume the same sequence mid-epoch.

Under ``torchrun`` every rank builds the sampler with the same seed and its own ``rank``: with a batch of B
per rank, step k of rank r takes the global positions ``r + W·(kB + j)``, so the W ranks together take
exactly positions ``kBW … (k+1)BW - 1``, the k-th batch a single process with batch ``B·W`` would take.
:class:`DrawSampler` yields each draw as a :class:`Draw` (index, epoch, global position), so a dataset can
seed a sample's augmentation by its draw and augment it alike whatever the number of ranks or workers.

* ``RANDOM``: a permutation of the images (repeated permutations when ``num_samples`` exceeds them).
* ``CLASS_BALANCED``: every class equally often (the 2018 runner-up's balanced batches), then, within a
  class, its images in a fresh random order, cycling when the class is drawn more often than it has images.
* ``SQRT``: classes in proportion to the square root of their image counts, images as above.

Classes are allotted their share of an epoch's draws exactly (largest remainders, ties broken at random)
and the draws shuffled, which keeps the class frequencies of an epoch at their target rather than
around it. Images with a negative label (unlabelled) are never drawn by the class-aware samplers.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "SamplerType",
    "Draw",
    "DrawSampler",
    "EpochSampler",
    "RandomSampler",
    "ClassBalancedSampler",
    "SqrtSampler",
    "create_sampler",
]

_logger = logging.getLogger(__name__)


class SamplerType(enum.Enum):
    """How an epoch's images are drawn."""

    RANDOM = "random"
    CLASS_BALANCED = "class_balanced"
    SQRT = "sqrt"


class Draw(NamedTuple):
    """One draw of an epoch.

    Attributes:
        index: The image's index in the dataset.
        epoch: The epoch.
        position: The draw's place in the epoch's global order (the same whatever the number of ranks).
    """

    index: int
    epoch: int
    position: int


class EpochSampler(Sampler[int]):
    """Base class: a deterministic global order per epoch, this rank's slice of it, and a resumable position.

    Args:
        labels: Class index of every image (negative: unlabelled).
        num_samples: Draws per epoch over all ranks (default: the number of images).
        seed: Seed shared by all ranks.
        rank: This process's rank.
        world_size: Number of ranks.
    """

    def __init__(
        self,
        *,
        labels: Sequence[int] | np.ndarray,
        num_samples: int | None = None,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.labels = np.asarray(labels, dtype=np.int64)
        if self.labels.ndim != 1 or len(self.labels) == 0:
            raise ValueError("labels must be a non-empty 1-D sequence")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 ≤ rank < world_size, got rank {rank}, world_size {world_size}")
        self.num_samples = int(num_samples) if num_samples is not None else len(self.labels)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {self.num_samples}")
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.per_rank = math.ceil(self.num_samples / world_size)
        self.epoch = 0
        self.position = 0

    def _global_order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def global_order(self, epoch: int) -> np.ndarray:
        """The order of all ranks for an epoch, padded to ``per_rank * world_size`` draws."""
        order = np.asarray(self._global_order(np.random.default_rng([self.seed, epoch])), dtype=np.int64)
        total = self.per_rank * self.world_size
        if len(order) < total:
            order = np.resize(order, total)  # wraps around
        return order[:total]

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's whole slice of an epoch (default: the current epoch)."""
        order = self.global_order(self.epoch if epoch is None else epoch)
        return order[self.rank :: self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Move to an epoch; the position restarts at 0 unless it is the epoch already set (a resumed run)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self.position = 0

    def draws(self) -> Iterator[Draw]:
        """This rank's draws from the current position on, as :class:`Draw` records (advancing the position)."""
        mine = self.indices()
        start = self.position
        for i in range(start, len(mine)):
            self.position = i + 1
            yield Draw(int(mine[i]), self.epoch, self.rank + i * self.world_size)
        self.position = 0  # a completed pass: iterating again replays the epoch unless set_epoch moves on

    def __iter__(self) -> Iterator[int]:
        return (draw.index for draw in self.draws())

    def __len__(self) -> int:
        return self.per_rank

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """The state to resume from.

        Args:
            consumed: Samples of this epoch this rank has actually trained on. With loader workers the
                sampler runs ahead of training (prefetching), so a trainer should pass
                ``batches_done * batch_size``; ``None`` takes the number handed out so far.
        """
        return {
            "epoch": self.epoch,
            "position": self.position if consumed is None else int(consumed),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration continues the saved epoch from the saved position."""
        for key in ("seed", "num_samples", "world_size"):
            if key in state and state[key] != getattr(self, key):
                _logger.warning(
                    "sampler state has %s=%s but this sampler %s; the sequence will differ",
                    key,
                    state[key],
                    getattr(self, key),
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if not 0 <= self.position <= self.per_rank:
            raise ValueError(f"sampler position {self.position} outside 0..{self.per_rank}")


class DrawSampler(Sampler[Draw]):
    """An :class:`EpochSampler` that yields :class:`Draw` records instead of indices (the same sequence).

    Give the loader a dataset that takes a :class:`Draw` as its key (the trainer seeds each sample's
    augmentation by ``(seed, draw.epoch, draw.position)``); ``set_epoch`` and the state stay on ``sampler``.
    """

    def __init__(self, sampler: EpochSampler) -> None:
        super().__init__()
        self.sampler = sampler

    def __iter__(self) -> Iterator[Draw]:
        return self.sampler.draws()

    def __len__(self) -> int:
        return len(self.sampler)


class RandomSampler(EpochSampler):
    """Images in a fresh random order each epoch."""

    def _global_order(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.labels)
        rounds = math.ceil(self.num_samples / n)
        return np.concatenate([rng.permutation(n) for _ in range(rounds)])[: self.num_samples]


def _allot(weights: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` draws in proportion to ``weights`` (largest remainders, ties at random)."""
    quota = weights / weights.sum() * total
    counts = np.floor(quota).astype(np.int64)
    left = total - int(counts.sum())
    if left > 0:
        remainder = quota - counts
        # Random tie-break: sort by remainder, then by a random key.
        order = np.lexsort((rng.random(len(weights)), -remainder))
        counts[order[:left]] += 1
    return counts


class _ClassWeightedSampler(EpochSampler):
    """Classes drawn by weight, then each class's images in a random order (cycling)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        labelled = np.flatnonzero(self.labels >= 0)
        if len(labelled) == 0:
            raise ValueError("a class-aware sampler needs labelled images")
        self.classes, self.class_counts = np.unique(self.labels[labelled], return_counts=True)
        self._labelled = labelled

    def _class_weights(self) -> np.ndarray:
        raise NotImplementedError

    def _global_order(self, rng: np.random.Generator) -> np.ndarray:
        draws = _allot(self._class_weights(), self.num_samples, rng)
        drawn = rng.permutation(np.repeat(np.arange(len(self.classes)), draws))
        # Images grouped by class, random order within each class.
        labels = self.labels[self._labelled]
        grouped = self._labelled[np.lexsort((rng.random(len(labels)), labels))]
        starts = np.concatenate([[0], np.cumsum(self.class_counts)[:-1]])
        # k-th draw of a class takes its (k mod count)-th image.
        occurrence = np.empty(len(drawn), dtype=np.int64)
        by_class = np.argsort(drawn, kind="stable")
        draw_starts = np.concatenate([[0], np.cumsum(draws)[:-1]])
        occurrence[by_class] = np.arange(len(drawn)) - np.repeat(draw_starts, draws)
        return grouped[starts[drawn] + occurrence % self.class_counts[drawn]]


class ClassBalancedSampler(_ClassWeightedSampler):
    """Every class equally often, whatever its number of images."""

    def _class_weights(self) -> np.ndarray:
        return np.ones(len(self.classes))


class SqrtSampler(_ClassWeightedSampler):
    """Classes in proportion to the square root of their image counts."""

    def _class_weights(self) -> np.ndarray:
        return np.sqrt(self.class_counts.astype(np.float64))


_SAMPLERS: dict[SamplerType, type[EpochSampler]] = {
    SamplerType.RANDOM: RandomSampler,
    SamplerType.CLASS_BALANCED: ClassBalancedSampler,
    SamplerType.SQRT: SqrtSampler,
}


def create_sampler(
    *,
    sampler_type: SamplerType,
    labels: Sequence[int] | np.ndarray,
    num_samples: int | None = None,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> EpochSampler:
    """Build a sampler.

    Args:
        sampler_type: Random, class-balanced or square-root.
        labels: Class index of every image of the dataset (``dataset.labels``).
        num_samples: Draws per epoch over all ranks (default: the number of images).
        seed: Seed shared by all ranks; the order depends on (seed, epoch) only.
        rank: This process's rank.
        world_size: Number of ranks.
    """
    return _SAMPLERS[sampler_type](labels=labels, num_samples=num_samples, seed=seed, rank=rank, world_size=world_size)
