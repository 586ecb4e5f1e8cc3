"""Dataset construction rules: presets, inclusion, photos per observation, photographer-isolated splits.

The rules are those of docs/formats.md §3: iNat2017 keeps subspecies as classes; from 2018 infraspecific
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
import inspect
import logging
import typing
from collections.abc import Callable, Iterator

import numpy as np

__all__ = [
    "Preset",
    "PhotoChoice",
    "Split",
    "BuildRules",
    "rules_for",
    "RuleOverride",
    "rule_overrides",
    "assign_observers",
    "lexsort_by_group",
    "rank_within_groups",
    "first_within_groups",
    "stable_argsort",
    "sort_with_order",
    "random_keys",
]

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
        test_fraction: Target test size as a share of the train size (when ``test_per_class`` is ``None``).
        test_per_class: At most this many test images per class, filled like val's quota (a test that weighs
            every class alike, as iNat2018's val does), or ``None`` for a test that is a share of train
            taken by whole observers (and so follows train's long tail).
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
    test_per_class: int | None = None
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
        if self.test_per_class is not None and self.test_per_class < 1:
            raise ValueError(f"test_per_class must be ≥ 1, got {self.test_per_class}")
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


#: Numeric rules that stay the preset's: the year names the release's files and goes with its formats.
_PRESET_ONLY = frozenset({"year"})


@dataclasses.dataclass(frozen=True)
class RuleOverride:
    """A rule of :class:`BuildRules` that the command line may override (``--min-train`` for ``min_train``).

    Attributes:
        name: The field of :class:`BuildRules`.
        type: The type of its values, ``int`` or ``float`` (also for a rule whose preset value may be ``None``).
        help: The rule's description, from the attributes of :class:`BuildRules`'s docstring.
    """

    name: str
    type: type
    help: str


def rule_overrides() -> tuple[RuleOverride, ...]:
    """The rules the command line may override, in :class:`BuildRules`'s field order: its numeric fields.

    A numeric field (``int`` or ``float``, or either or ``None``) is one, but for the year, which stays the
    preset's. The other rules have flags of their own (``photo_choice``, ``research_only``) or are the preset's.
    """
    hints = typing.get_type_hints(BuildRules)
    docs = _attribute_docs(BuildRules)
    found = []
    for field in dataclasses.fields(BuildRules):
        kind = _numeric_type(hints[field.name])
        if kind is not None and field.name not in _PRESET_ONLY:
            found.append(RuleOverride(name=field.name, type=kind, help=docs.get(field.name, "")))
    return tuple(found)


def _numeric_type(hint: object) -> type | None:
    """``int`` or ``float`` for a hint that is one of them, alone or with ``None``; else None (bool is not)."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


def _attribute_docs(cls: type) -> dict[str, str]:
    """The descriptions of a Google-style ``Attributes:`` section of a class's docstring, by name, one line each."""
    docs: dict[str, list[str]] = {}
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    inside, name = False, None
    for line in lines:
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line.startswith("        ") and name:  # a description's next line
            docs[name].append(line.strip())
        elif inside and line.startswith("    ") and ":" in line:
            name, _, text = line.strip().partition(":")
            docs[name] = [text.strip()]
        elif inside and line.strip():
            break  # the next section
    return {k: " ".join(v) for k, v in docs.items()}


def stable_argsort(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")``, faster for non-negative integers (:func:`sort_with_order`)."""
    return sort_with_order(values)[1]


def sort_with_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values[order], order)`` with ``order = np.argsort(values, kind="stable")``, faster for non-negative
    integers.

    NumPy sorts plain integers with a vectorised sort (AVX-512 where the CPU has it), an order of magnitude
    faster than any of its argsorts: each value is shifted left and its row written into the low bits, so
    sorting these numbers sorts the rows, ties by row. Values too wide for that are sorted in two passes
    (the low bits, then stably the high bits).
    """
    n = len(values)
    if n == 0 or values.dtype.kind not in "iu" or int(values.min()) < 0:
        order = np.argsort(values, kind="stable")
        return values[order], order
    row_bits = max((n - 1).bit_length(), 1)
    room = 64 - row_bits
    if int(values.max()).bit_length() <= room:
        packed = values.astype(np.uint64) << np.uint64(row_bits)
        packed |= np.arange(n, dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64((1 << row_bits) - 1)).view(np.int64)
        packed >>= np.uint64(row_bits)
        return packed.astype(values.dtype, copy=False), order
    order = np.argsort(values)  # NumPy's vectorised argsort: the stable order when no two values are equal
    ordered = values[order]
    if not (ordered[1:] == ordered[:-1]).any():
        return ordered, order
    wide = values.astype(np.uint64)
    order = stable_argsort(wide & np.uint64((1 << room) - 1))
    order = order[stable_argsort(wide[order] >> np.uint64(room))]
    return values[order], order


def lexsort_by_group(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.lexsort((keys, groups))``: by group, then key, then position; faster for integer groups and keys."""
    return _sorted_groups(groups, keys)[1]


def _sorted_groups(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(groups[order], order)`` for ``order = np.lexsort((keys, groups))``.

    Non-negative integer groups and keys are sorted as one number (group, key) when it fits, else in two
    stable passes (:func:`sort_with_order`); other keys by NumPy's vectorised quicksort, which equals the
    stable order when no two keys are equal, then the groups by a stable pass.
    """
    if len(keys) == 0:
        return groups[:0], np.zeros(0, dtype=np.int64)
    if keys.dtype.kind in "iu" and groups.dtype.kind in "iu" and int(keys.min()) >= 0 and int(groups.min()) >= 0:
        span = int(keys.max()) + 1
        if (int(groups.max()) * span + span).bit_length() < 63:
            combined, order = sort_with_order(groups.astype(np.int64) * span + keys.astype(np.int64))
            return combined // span, order
        order = stable_argsort(keys)
    else:
        order = np.argsort(keys)
        ordered = keys[order]
        if len(keys) > 1 and ((ordered[1:] == ordered[:-1]).any() or np.isnan(ordered[-1])):
            order = np.argsort(keys, kind="stable")
    ordered_groups, second = sort_with_order(groups[order])
    return ordered_groups, order[second]


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random sort keys: 32-bit integers, which :func:`lexsort_by_group` sorts far faster than floats
    (two keys tie about once in four billion pairs; a tie falls to position)."""
    return rng.integers(0, 1 << 32, n, dtype=np.uint32)


def rank_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (0, 1, …) of each item within its group, in the order of ``keys`` (ties: by position)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same = _same_if_in_order(groups, keys)
    if same is not None:
        return _rank_in_runs(same)
    sorted_groups, order = _sorted_groups(groups, keys)
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = _rank_in_runs(sorted_groups[1:] == sorted_groups[:-1])
    return ranks


def first_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each item ranks first in its group: ``rank_within_groups(groups, keys) == 0``, with less work."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    same = _same_if_in_order(groups, keys)
    if same is not None:
        return np.r_[True, ~same]
    sorted_groups, order = _sorted_groups(groups, keys)
    first = np.empty(n, dtype=bool)
    first[order] = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    return first


def _same_if_in_order(groups: np.ndarray, keys: np.ndarray) -> np.ndarray | None:
    """Whether each item is in the group of the one before, when the items are already sorted by group and
    key (an export often lists an observation's photos together, by position); None when they are not."""
    same = groups[1:] == groups[:-1]
    if (groups[1:] >= groups[:-1]).all() and (keys[1:][same] >= keys[:-1][same]).all():
        return same
    return None


def _rank_in_runs(same: np.ndarray) -> np.ndarray:
    """Position of each item within its run, the runs given by ``same`` (item i+1 continues item i's run)."""
    heads = np.flatnonzero(np.r_[True, ~same])
    lengths = np.diff(np.r_[heads, len(same) + 1])
    return np.arange(len(same) + 1, dtype=np.int64) - np.repeat(heads, lengths)


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


class _Pairs:
    """The (observer, class) pairs of the candidate images with their image counts, grouped by observer."""

    def __init__(self, observer: np.ndarray, category: np.ndarray, n_observers: int, n_classes: int) -> None:
        width = max(n_classes, 1)
        key = np.sort(observer.astype(np.int64) * width + category)
        head = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        unique = key[head]
        self.count = np.diff(np.r_[head, len(key)]).astype(np.int64)
        self.observer = unique // width
        self.cls = unique % width
        self.starts = np.searchsorted(self.observer, np.arange(n_observers + 1))

    def of(self, observers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The pairs of ``observers`` in their order: owner (position in ``observers``), class, count."""
        first = self.starts[observers]
        lengths = self.starts[observers + 1] - first
        owner = np.repeat(np.arange(len(observers)), lengths)
        rows = np.arange(int(lengths.sum())) + np.repeat(first - (np.cumsum(lengths) - lengths), lengths)
        return owner, self.cls[rows], self.count[rows]


class _Before:
    """Sums over the pairs of the same class that come before each pair (pairs in the observers' order)."""

    def __init__(self, cls: np.ndarray) -> None:
        self.order = stable_argsort(cls)
        ordered = cls[self.order]
        self.head = np.r_[True, ordered[1:] != ordered[:-1]] if len(cls) else np.zeros(0, bool)
        self.group = np.cumsum(self.head) - 1

    def __call__(self, values: np.ndarray) -> np.ndarray:
        running = np.cumsum(values[self.order])
        running -= values[self.order]
        running -= running[self.head][self.group]
        before = np.empty_like(running)
        before[self.order] = running
        return before


def _any_per_observer(owner: np.ndarray, pair_flag: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(owner[pair_flag], minlength=n) > 0


def _blocks(order: np.ndarray) -> Iterator[np.ndarray]:
    """``order`` in blocks of doubling size (1024, 2048, …)."""
    first, block = 0, 1024
    while first < len(order):
        yield order[first : first + block]
        first += block
        block *= 2


@dataclasses.dataclass
class _State:
    """What the greedy passes change: each observer's split, and each class's train images and val need."""

    split: np.ndarray
    train_left: np.ndarray
    need: np.ndarray
    alive: np.ndarray

    def take(self, observers: np.ndarray, cls: np.ndarray, count: np.ndarray, to: Split) -> None:
        self.split[observers] = to
        moved = np.bincount(cls, weights=count, minlength=len(self.need)).astype(np.int64)
        self.train_left -= moved
        np.maximum(self.need - moved, 0, out=self.need)


#: Whether each observer may go, given its pairs and the images taken before each pair in its class.
_Criterion = Callable[[_State, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]


def _val_criterion(*, min_train: int, strict: bool) -> _Criterion:
    """Brings some class images it still needs, leaves ``min_train`` train images, wastes ≤ 2× what it brings."""

    def fits(state: _State, owner: np.ndarray, cls: np.ndarray, count: np.ndarray, before: np.ndarray, n: int):
        alive = state.alive[cls]
        brings = np.where(alive, np.clip(state.need[cls] - before, 0, count), 0)
        gain = np.bincount(owner, weights=brings, minlength=n)
        unsafe = _any_per_observer(owner, alive & (state.train_left[cls] - before - count < min_train), n)
        ok = (gain > 0) & ~unsafe
        if strict:
            ok &= np.bincount(owner, weights=count, minlength=n) - gain <= 2 * gain
        return ok

    return fits


def _floor_criterion(floor: np.ndarray) -> _Criterion:
    """Leaves every kept class it touches at least ``floor`` train images."""

    def fits(state: _State, owner: np.ndarray, cls: np.ndarray, count: np.ndarray, before: np.ndarray, n: int):
        return ~_any_per_observer(owner, state.alive[cls] & (state.train_left[cls] - before - count < floor[cls]), n)

    return fits


def _greedy(
    pairs: _Pairs,
    order: np.ndarray,
    state: _State,
    to: Split,
    fits: _Criterion,
    *,
    target: float | None = None,
    count_dropped: bool = False,
    needy_only: bool = False,
    ruled_out: np.ndarray | None = None,
    loose: _Criterion | None = None,
) -> None:
    """Move train observers to ``to`` one by one in ``order`` when ``fits`` says so, vectorised, in place.

    With a ``target``, stops once ``to`` holds that many images (of kept classes, or all when
    ``count_dropped``). The outcome is exactly that of the loop ``for o in order: if fits(o): move(o)``;
    it is reached in rounds. ``fits`` only gets harder as images are taken from a class, so within a round
    each candidate can be judged twice: as if every candidate before it were taken (if it fits even so,
    it is taken), and as if only those taken so far were (if it does not fit even so, it never will).
    Those left undecided, and those taken after one undecided in the same class (their taking would change
    the state the undecided one is judged on), go to the next round, where the first candidate is
    always decided. Taking is only ever done in order within a class, so the state each candidate is judged
    on is exactly the loop's up to the candidates before it in its classes.

    With ``needy_only``, only observers with images of a class that still needs some are looked at (no other
    can fit the val criterion). ``ruled_out`` marks observers that a later pass over the same state need not
    look at: those that do not fit the ``loose`` criterion even with nothing more taken (``fits`` implies it).
    """
    held = 0.0
    for block in _blocks(order):
        open_ = state.split[block] == Split.TRAIN
        candidates = block[open_ if ruled_out is None else open_ & ~ruled_out[block]]
        gathered = None
        if needy_only:  # only an observer with images some class still needs can fit
            if not state.need.any():
                return
            owner, cls, count = pairs.of(candidates)
            helps = _any_per_observer(owner, state.need[cls] > 0, len(candidates))
            keep = helps[owner]
            gathered = ((np.cumsum(helps) - 1)[owner[keep]], cls[keep], count[keep])
            candidates = candidates[helps]
        taken_size = np.zeros(len(candidates))  # images counted towards the target, by position in the block
        position = np.arange(len(candidates))
        stopped = False
        while len(position):
            observers = candidates[position]
            n = len(position)
            owner, cls, count = pairs.of(observers) if gathered is None else gathered
            gathered = None
            # Does not fit even with nothing more taken: never will.
            zero = np.zeros(len(cls), np.int64)
            possible = fits(state, owner, cls, count, zero, n)
            if ruled_out is not None and not possible.all():
                ruled_out[observers[~possible & ~loose(state, owner, cls, count, zero, n)]] = True
            if not possible.all():
                position, observers = position[possible], observers[possible]
                keep = possible[owner]
                owner, cls, count = (np.cumsum(possible) - 1)[owner[keep]], cls[keep], count[keep]
                n = len(position)
                if n == 0:
                    break
            before = _Before(cls)
            sure = fits(state, owner, cls, count, before(count), n)
            if target is not None:
                size = np.bincount(owner, weights=count if count_dropped else count * state.alive[cls], minlength=n)
                taken_before = (np.cumsum(taken_size) - taken_size)[position]
                upper = held + taken_before + np.cumsum(size) - size
                sure &= upper < target
                lower = held + taken_before + np.cumsum(np.where(sure, size, 0)) - np.where(sure, size, 0)
                reached = lower < target
                if not reached.all():
                    stopped = True
            else:
                reached = np.ones(n, bool)
            undecided = ~sure & reached
            if undecided.any():
                undecided &= fits(state, owner, cls, count, before(count * sure[owner]), n)
            deferred = np.zeros(n, bool)
            while undecided.any():
                blocking = (undecided | deferred)[owner]
                after_blocking = _any_per_observer(owner, before(blocking.astype(np.int64)) > 0, n)
                now = sure & after_blocking
                if (now == deferred).all():
                    break
                deferred = now
            go = sure & ~deferred
            moved = go[owner]
            state.take(observers[go], cls[moved], count[moved], to)
            if target is not None:
                taken_size[position[go]] = size[go]
            position = position[(undecided | deferred) & reached]
        held += float(taken_size.sum())
        if stopped or (target is not None and held >= target):
            return


def _fill_quota(
    pairs: _Pairs, by_size: np.ndarray, state: _State, to: Split, *, min_train: int, waste_ok: bool
) -> None:
    """Move observers to ``to`` until each class's ``state.need`` is met, as far as isolation allows.

    First only observers wasting at most twice what they bring; then, with ``waste_ok``, whatever fills
    the quota (the first pass rules out for the second those that bring nothing or would leave some class
    too few train images).
    """
    strict, loose = (_val_criterion(min_train=min_train, strict=s) for s in (True, False))
    ruled_out = np.zeros(len(state.split), dtype=bool)
    _greedy(pairs, by_size, state, to, strict, needy_only=True, ruled_out=ruled_out, loose=loose)
    if waste_ok:
        _greedy(pairs, by_size, state, to, loose, needy_only=True, ruled_out=ruled_out, loose=loose)


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

    Greedy and deterministic for a given generator, vectorised over rounds of observers. Small observers
    are considered first for val, each taken only if it still helps some class's val quota and leaves
    every class it touches with ``min_train`` images (first only those wasting at most twice what they
    bring, then any); then observers in random order go to test until it reaches its target share of
    train, never taking more than half of a class's remaining train images; everyone else is train.
    With ``test_per_class``, test is filled like val instead: small observers first, each taken only if
    it brings test images some class still needs, wastes at most twice what it brings and leaves every
    class it touches ``min_train`` images (a class that cannot fill its test quota keeps what it got and
    is not dropped).

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
    pairs = _Pairs(observer, category, n_observers, n_classes)
    observer_size = np.bincount(observer, minlength=n_observers)
    total = np.bincount(category, minlength=n_classes).astype(np.int64)

    quota = rules.val_per_class or 0
    alive = total >= rules.min_train + max(quota, 1)
    state = _State(
        split=np.zeros(n_observers, dtype=np.int8),
        train_left=total.copy(),
        need=np.where(alive, quota, 0).astype(np.int64),
        alive=alive,
    )
    tie = rng.random(n_observers)
    # np.argsort(tie, kind="stable") and np.argsort(-tie, kind="stable"): the same order both ways without ties.
    ascending = np.argsort(tie)
    if (tie[ascending][1:] == tie[ascending][:-1]).any():
        ascending, descending = np.argsort(tie, kind="stable"), np.argsort(-tie, kind="stable")
    else:
        descending = ascending[::-1]

    by_size = None  # smallest first, ties at random: the order in which the per-class quotas are filled
    if rules.val_per_class is not None or rules.test_per_class is not None:
        by_size = lexsort_by_group(observer_size, tie)
    if rules.val_per_class is not None:
        _fill_quota(pairs, by_size, state, Split.VAL, min_train=rules.min_train, waste_ok=True)
    else:
        _greedy(
            pairs, ascending, state, Split.VAL,
            _floor_criterion(np.full(n_classes, rules.min_train, dtype=np.int64)),
            target=rules.val_fraction * float(total[alive].sum()), count_dropped=True,
        )  # fmt: skip

    if rules.test_per_class is not None:
        # Classes that missed their val quota are dropped later: they need no test images. A class is never
        # dropped for test, so no observer wasting more than twice what it brings is taken (its surplus
        # would be lost to train).
        state.need = np.where(alive & (state.need == 0), rules.test_per_class, 0).astype(np.int64)
        _fill_quota(pairs, by_size, state, Split.TEST, min_train=rules.min_train, waste_ok=False)
    else:
        train_left = state.train_left
        capped = np.minimum(train_left, rules.max_train) if rules.max_train else train_left
        # Test images leave train, so test = f × final train means f / (1 + f) of what train holds now.
        test_target = rules.test_fraction / (1 + rules.test_fraction) * float(capped[alive].sum())
        floor = np.maximum(rules.min_train, (train_left + 1) // 2)
        _greedy(pairs, descending, state, Split.TEST, _floor_criterion(floor), target=test_target)

    observer_split = state.split
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
