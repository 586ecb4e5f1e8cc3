"""Photographer-isolated splits: every observer in exactly one split (docs/formats.md §3).

:func:`assign_observers` is the isolation step: every observer goes to exactly one split, chosen so
that as many classes as possible keep their val and train quotas and the test split is near its target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from inatcomp.build.arrays import lexsort_by_group, stable_argsort
from inatcomp.build.rules import BuildRules, Split

__all__ = ["Assignment", "assign_observer_pairs", "assign_observers"]


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
    """The (observer, class) pairs of the candidate images with their image counts, grouped by observer.

    Args:
        observer: Observer of each pair, ascending.
        cls: Class of each pair, ascending within an observer.
        count: Images of each pair.
        n_observers: Number of observers.
    """

    def __init__(self, observer: np.ndarray, cls: np.ndarray, count: np.ndarray, n_observers: int) -> None:
        self.observer = observer.astype(np.int64, copy=False)
        self.cls = cls.astype(np.int64, copy=False)
        self.count = count.astype(np.int64, copy=False)
        self.starts = np.searchsorted(self.observer, np.arange(n_observers + 1))

    @classmethod
    def of_images(cls, observer: np.ndarray, category: np.ndarray, n_observers: int, n_classes: int) -> _Pairs:
        """The pairs of images given by their observers and classes."""
        width = max(n_classes, 1)
        key = np.sort(observer.astype(np.int64) * width + category)
        head = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
        unique = key[head]
        return cls(unique // width, unique % width, np.diff(np.r_[head, len(key)]), n_observers)

    def per_class(self, n_classes: int, pair_mask: np.ndarray | None = None) -> np.ndarray:
        """Images of each class (of the pairs in ``pair_mask``, when given)."""
        cls, count = (self.cls, self.count) if pair_mask is None else (self.cls[pair_mask], self.count[pair_mask])
        return np.bincount(cls, weights=count, minlength=n_classes).astype(np.int64)

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
    return assign_observer_pairs(
        _Pairs.of_images(observer, category, n_observers, n_classes),
        n_observers=n_observers,
        n_classes=n_classes,
        rules=rules,
        rng=rng,
    )


def assign_observer_pairs(
    pairs: _Pairs, *, n_observers: int, n_classes: int, rules: BuildRules, rng: np.random.Generator
) -> Assignment:
    """:func:`assign_observers` given the images as (observer, class) pairs with their counts (the same outcome).

    The out-of-core builder counts the pairs in its engine, so that only they, not the images, are in memory.
    """
    observer_size = np.bincount(pairs.observer, weights=pairs.count, minlength=n_observers).astype(np.int64)
    total = pairs.per_class(n_classes)

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
    pair_split = observer_split[pairs.observer]
    val_have = pairs.per_class(n_classes, pair_split == Split.VAL)
    train_have = pairs.per_class(n_classes, pair_split == Split.TRAIN)
    reason = np.full(n_classes, "", dtype=object)
    too_few = total < rules.min_train + max(quota, 1)
    reason[too_few] = "too few images"
    if rules.val_per_class is not None:
        reason[(reason == "") & (val_have < rules.val_per_class)] = "too few val images under isolation"
    reason[(reason == "") & (train_have < rules.min_train)] = "too few train images under isolation"
    return Assignment(observer_split=observer_split, class_kept=reason == "", drop_reason=reason)
