"""Dataset construction rules: presets, inclusion, photos per observation, photographer-isolated splits.

The rules are those of formats.md §3: iNat2017 keeps subspecies as classes; from 2018 infraspecific
taxa are rolled up to their species, hybrids excluded, photographers isolated to a single split, one
photo per observation, 2 to 1000 train images per class and exactly 3 val images per class (10 in
2021, with a 50-per-class ``train_mini``). The ``production`` preset follows iNaturalist's own model
training: a taxon is included with ≥ 100 observations of which ≥ 50 research grade, or ≥ 100 photos;
up to 5 photos per observation spread over as many observations as possible; a genus becomes a leaf
class when none of its species qualifies but it has enough photos itself.

:func:`assign_observers` is the isolation step: every observer goes to exactly one split, chosen so
that as many classes as possible keep their val and train quotas and the test split is near its target.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterator

import numpy as np

__all__ = ["Preset", "PhotoChoice", "Split", "BuildRules", "rules_for", "assign_observers", "rank_within_groups"]

_logger = logging.getLogger(__name__)


class Preset(enum.Enum):
    """Which release's rules a build follows."""

    INAT2017 = "inat2017"
    INAT2018 = "inat2018"
    INAT2021 = "inat2021"
    PRODUCTION = "production"


class PhotoChoice(enum.Enum):
    """Which photo of an observation to keep when only one is kept."""

    FIRST = "first"
    RANDOM = "random"


class Split(enum.IntEnum):
    """The split an observer (and so each of their photos) belongs to."""

    TRAIN = 0
    VAL = 1
    TEST = 2


@dataclasses.dataclass(frozen=True)
class BuildRules:
    """Every rule of a build; presets fill them, the command line may override any.

    Attributes:
        preset: The release these rules follow.
        rollup_infraspecific: Roll subspecies/varieties/forms up to their species (2018 and later).
        research_only: Keep research-grade observations only.
        leaf_genera: Make a genus a class when none of its species qualifies (production).
        min_observations: Inclusion: at least this many observations …
        min_research_observations: … of which at least this many research grade …
        min_photos: … or at least this many photos. All three 0 means no inclusion threshold.
        photos_per_observation: Photos kept per observation.
        photo_choice: Which photo when one is kept.
        val_per_class: Exact val images per class, or ``None`` to use ``val_fraction``.
        val_fraction: Share of images for val when ``val_per_class`` is ``None``.
        min_train: Fewest train images a class may have.
        max_train: Most train images per class (sampled down above it), or ``None``.
        train_mini_per_class: Images per class of a ``train_mini`` subset of train, or ``None``.
        test_fraction: Target test size as a share of the train size.
        private_fraction: Share of test images scored on the private leaderboard.
        max_image_side: Long side of release images in pixels.
        year: Year used in file names (``train2018.json``).
    """

    preset: Preset
    rollup_infraspecific: bool = True
    research_only: bool = True
    leaf_genera: bool = False
    min_observations: int = 0
    min_research_observations: int = 0
    min_photos: int = 0
    photos_per_observation: int = 1
    photo_choice: PhotoChoice = PhotoChoice.FIRST
    val_per_class: int | None = 3
    val_fraction: float = 0.0
    min_train: int = 2
    max_train: int | None = 1000
    train_mini_per_class: int | None = None
    test_fraction: float = 1 / 3
    private_fraction: float = 0.5
    max_image_side: int = 800
    year: int = 2018

    def check(self) -> None:
        """Reject contradictory rules.

        Raises:
            ValueError: With the rule and what was expected.
        """
        if self.photos_per_observation < 1:
            raise ValueError(f"photos_per_observation must be ≥ 1, got {self.photos_per_observation}")
        if self.min_train < 1:
            raise ValueError(f"min_train must be ≥ 1, got {self.min_train}")
        if self.max_train is not None and self.max_train < self.min_train:
            raise ValueError(f"max_train ({self.max_train}) must be ≥ min_train ({self.min_train})")
        if self.val_per_class is not None and self.val_per_class < 1:
            raise ValueError(f"val_per_class must be ≥ 1, got {self.val_per_class}")
        if self.val_per_class is None and not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1) when val_per_class is unset, got {self.val_fraction}")
        if not 0 <= self.test_fraction <= 5:
            raise ValueError(f"test_fraction must be in [0, 5], got {self.test_fraction}")
        if not 0 <= self.private_fraction <= 1:
            raise ValueError(f"private_fraction must be in [0, 1], got {self.private_fraction}")
        if self.train_mini_per_class is not None and self.train_mini_per_class > self.min_train:
            raise ValueError(
                f"train_mini_per_class ({self.train_mini_per_class}) must be ≤ min_train ({self.min_train}) "
                "so that every class can fill it"
            )


_PRESETS = {
    Preset.INAT2017: BuildRules(
        preset=Preset.INAT2017, rollup_infraspecific=False, val_per_class=None, val_fraction=0.15,
        min_train=5, max_train=None, test_fraction=0.3, year=2017,
    ),
    Preset.INAT2018: BuildRules(preset=Preset.INAT2018),
    Preset.INAT2021: BuildRules(
        preset=Preset.INAT2021, val_per_class=10, min_train=50, max_train=300, train_mini_per_class=50,
        test_fraction=0.19, max_image_side=500, year=2021,
    ),
    Preset.PRODUCTION: BuildRules(
        preset=Preset.PRODUCTION, research_only=False, leaf_genera=True, min_observations=100,
        min_research_observations=50, min_photos=100, photos_per_observation=5, val_per_class=5,
        max_train=1000, test_fraction=0.1, max_image_side=500, year=2024,
    ),
}  # fmt: skip


def rules_for(preset: Preset, **overrides: object) -> BuildRules:
    """The rules of a preset with some replaced; ``None`` values leave the preset's rule.

    Raises:
        ValueError: An unknown rule name or contradictory rules.
    """
    known = {f.name for f in dataclasses.fields(BuildRules)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown build rule(s): {', '.join(sorted(unknown))}")
    rules = dataclasses.replace(_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
    rules.check()
    return rules


def rank_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (0, 1, …) of each item within its group, in the order of ``keys``."""
    order = np.lexsort((keys, groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    ranks = np.empty(len(groups), dtype=np.int64)
    ranks[order] = np.arange(len(groups)) - run_start
    return ranks


@dataclasses.dataclass
class Assignment:
    """The outcome of :func:`assign_observers`.

    Attributes:
        observer_split: The split of each observer (indexed by compact observer index).
        class_kept: Whether each class keeps its quotas under isolation.
        drop_reason: Why each dropped class was dropped ('' when kept).
    """

    observer_split: np.ndarray
    class_kept: np.ndarray
    drop_reason: np.ndarray


def _still_needing(
    order: list[int], need_val: list[int], pair_class: np.ndarray, pair_observer: np.ndarray, n_observers: int
) -> Iterator[int]:
    """The observers of ``order``, in order, less some that touch no class still needing val images.

    Needs only fall, so an observer left out when a block starts could not have helped any class later in
    the block: the greedy loop over what this yields takes exactly the observers it would take over ``order``.
    The check is vectorised and redone for blocks of doubling size.
    """
    first, block = 0, 1024
    while first < len(order):
        needy = np.asarray(need_val)[pair_class] > 0
        helps = np.bincount(pair_observer[needy], minlength=n_observers) > 0
        if not helps.any():
            return
        chunk = np.asarray(order[first : first + block])
        yield from chunk[helps[chunk]].tolist()
        first += block
        block *= 2


def assign_observers(
    observer: np.ndarray,
    category: np.ndarray,
    *,
    n_observers: int,
    n_classes: int,
    rules: BuildRules,
    rng: np.random.Generator,
) -> Assignment:
    """Put every observer in one split so that classes keep their val and train quotas.

    Greedy and deterministic for a given generator. Small observers are considered first for val,
    each taken only if it still helps some class's val quota and leaves every class it touches with
    ``min_train`` images; then observers in random order go to test until it reaches its target share
    of train, never taking more than half of a class's remaining train images; everyone else is train.

    Args:
        observer: Compact observer index (0 … n_observers-1) of each candidate image.
        category: Compact class index (0 … n_classes-1) of each candidate image.
        n_observers: Number of observers.
        n_classes: Number of classes.
        rules: The build rules (val quota or share, min/max train, test share).
        rng: Random generator for the tie-breaks and the test order.

    Returns:
        The observers' splits and which classes keep their quotas.
    """
    pair_key, pair_count = np.unique(observer.astype(np.int64) * n_classes + category, return_counts=True)
    pair_observer = pair_key // n_classes
    pair_class = pair_key % n_classes
    starts = np.searchsorted(pair_observer, np.arange(n_observers + 1))
    observer_size = np.bincount(observer, minlength=n_observers)
    total = np.bincount(category, minlength=n_classes).astype(np.int64)
    classes_list = pair_class.tolist()
    counts_list = pair_count.tolist()
    starts_list = starts.tolist()

    quota = rules.val_per_class or 0
    alive = (total >= rules.min_train + max(quota, 1)).tolist()
    train_left = total.tolist()
    need_val = [quota if a else 0 for a in alive]
    split = [int(Split.TRAIN)] * n_observers
    tie = rng.random(n_observers)

    def safe(o: int, floor: list[int] | None = None) -> bool:
        for j in range(starts_list[o], starts_list[o + 1]):
            c = classes_list[j]
            if alive[c] and train_left[c] - counts_list[j] < (floor[c] if floor else rules.min_train):
                return False
        return True

    def move(o: int, to: Split) -> None:
        split[o] = int(to)
        for j in range(starts_list[o], starts_list[o + 1]):
            c = classes_list[j]
            train_left[c] -= counts_list[j]
            need_val[c] = max(0, need_val[c] - counts_list[j])

    by_size = np.lexsort((tie, observer_size)).tolist()
    if rules.val_per_class is not None:
        needing = sum(1 for n in need_val if n > 0)
        for strict in (True, False):  # first without wasting many images, then whatever fills the quota
            for o in _still_needing(by_size, need_val, pair_class, pair_observer, n_observers):
                if needing == 0:
                    break
                if split[o] != Split.TRAIN:
                    continue
                gain = waste = 0
                for j in range(starts_list[o], starts_list[o + 1]):
                    c, n = classes_list[j], counts_list[j]
                    useful = min(n, need_val[c]) if alive[c] else 0
                    gain += useful
                    waste += n - useful
                if gain == 0 or (strict and waste > 2 * gain) or not safe(o):
                    continue
                before = sum(1 for j in range(starts_list[o], starts_list[o + 1]) if need_val[classes_list[j]] > 0)
                move(o, Split.VAL)
                after = sum(1 for j in range(starts_list[o], starts_list[o + 1]) if need_val[classes_list[j]] > 0)
                needing -= before - after
    else:
        target = rules.val_fraction * float(total[np.asarray(alive)].sum())
        taken = 0
        for o in np.argsort(tie, kind="stable").tolist():
            if taken >= target:
                break
            if safe(o):
                taken += sum(counts_list[starts_list[o] : starts_list[o + 1]])
                move(o, Split.VAL)

    capped = [min(t, rules.max_train) if rules.max_train else t for t in train_left]
    # Test images leave train, so test = f × final train means f / (1 + f) of what train holds now.
    test_target = rules.test_fraction / (1 + rules.test_fraction) * sum(c for c, a in zip(capped, alive) if a)
    floor = [max(rules.min_train, (t + 1) // 2) for t in train_left]
    test_size = 0
    for o in np.argsort(-tie, kind="stable").tolist():
        if test_size >= test_target:
            break
        if split[o] != Split.TRAIN or not safe(o, floor):
            continue
        test_size += sum(
            n
            for j, n in enumerate(counts_list[starts_list[o] : starts_list[o + 1]])
            if alive[classes_list[starts_list[o] + j]]
        )
        move(o, Split.TEST)

    observer_split = np.asarray(split, dtype=np.int8)
    image_split = observer_split[observer]
    val_have = np.bincount(category[image_split == Split.VAL], minlength=n_classes)
    train_have = np.bincount(category[image_split == Split.TRAIN], minlength=n_classes)
    reason = np.full(n_classes, "", dtype=object)
    too_few = total < rules.min_train + max(quota, 1)
    reason[too_few] = "too few images"
    if rules.val_per_class is not None:
        reason[(reason == "") & (val_have < rules.val_per_class)] = "too few val images under isolation"
    reason[(reason == "") & (train_have < rules.min_train)] = "too few train images under isolation"
    return Assignment(observer_split=observer_split, class_kept=reason == "", drop_reason=reason)
