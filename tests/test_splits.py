"""Tests of inatcomp.build.rules and inatcomp.build.splits: presets and their overrides, rule checks,
photographer-isolated assignment.

The sorting and ranking helpers are tested against NumPy in tests/test_build.py; the isolation of whole
releases (no observer, observation or photo in two splits) in tests/test_build.py as well.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inatcomp.build.rules import BuildRules, PhotoChoice, Preset, Split, rules_for
from inatcomp.build.splits import assign_observers


def _assign(observer, category, rules, seed=0):
    observer, category = np.asarray(observer), np.asarray(category)
    return assign_observers(
        observer,
        category,
        n_observers=int(observer.max()) + 1,
        n_classes=int(category.max()) + 1,
        rules=rules,
        rng=np.random.default_rng(seed),
    )


def _random_images(seed: int, n: int = 4000, observers: int = 250, classes: int = 30):
    """Long-tailed observers (a few with hundreds of images) over long-tailed classes."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.2, observers) + 0.1
    observer = rng.choice(observers, size=n, p=activity / activity.sum())
    frequency = 1.0 / np.arange(1, classes + 1)
    category = rng.choice(classes, size=n, p=frequency / frequency.sum())
    return observer, category


def _per_split(result, observer, category, n_classes):
    split = result.observer_split[observer]
    return {s: np.bincount(category[split == s], minlength=n_classes) for s in Split}


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (Preset.INAT2017, dict(rollup_infraspecific=False, val_per_class=None, val_fraction=0.15, min_train=5,
                               max_train=None, test_fraction=0.3, year=2017)),
        (Preset.INAT2018, dict(rollup_infraspecific=True, research_only=True, photos_per_observation=1,
                               val_per_class=3, min_train=2, max_train=1000, test_fraction=1 / 3, year=2018)),
        (Preset.INAT2021, dict(val_per_class=10, min_train=50, max_train=300, train_mini_per_class=50,
                               test_fraction=0.19, year=2021)),
        (Preset.PRODUCTION, dict(research_only=False, leaf_genera=True, min_observations=100,
                                 min_research_observations=50, min_photos=100, photos_per_observation=5,
                                 val_per_class=5, max_train=1000, test_fraction=0.1)),
    ],
)  # fmt: skip
def test_presets_hold_the_rules_of_their_release(preset, expected):
    rules = rules_for(preset)
    assert rules.preset is preset
    assert {name: getattr(rules, name) for name in expected} == expected
    assert rules.test_per_class is None and rules.photo_choice is PhotoChoice.FIRST


def test_overrides_replace_a_rule_and_none_leaves_the_presets():
    rules = rules_for(Preset.INAT2018, max_train=50, min_train=None, photo_choice=PhotoChoice.RANDOM)
    assert (rules.max_train, rules.min_train, rules.photo_choice) == (50, 2, PhotoChoice.RANDOM)
    assert rules_for(Preset.INAT2018).max_train == 1000  # the preset itself is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.max_train = 3


def test_unknown_rules_are_named():
    with pytest.raises(ValueError, match="unknown build rule.*: max_val, min_trian"):
        rules_for(Preset.INAT2018, min_trian=3, max_val=2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"photos_per_observation": 0}, "photos_per_observation must be ≥ 1"),
        ({"min_train": 0}, "min_train must be ≥ 1"),
        ({"max_train": 1}, r"max_train \(1\) must be ≥ min_train \(2\)"),
        ({"val_per_class": 0}, "val_per_class must be ≥ 1"),
        ({"test_fraction": 6}, r"test_fraction must be in \[0, 5\]"),
        ({"test_per_class": 0}, "test_per_class must be ≥ 1"),
        ({"private_fraction": 1.5}, r"private_fraction must be in \[0, 1\]"),
        ({"train_mini_per_class": 3}, r"train_mini_per_class \(3\) must be ≤ min_train \(2\)"),
    ],
)
def test_contradictory_rules_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        rules_for(Preset.INAT2018, **overrides)


def test_a_val_share_needs_a_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        BuildRules(preset=Preset.INAT2017, val_per_class=None, val_fraction=0.0).check()
    rules_for(Preset.INAT2017).check()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kept_classes_meet_their_val_quota_and_keep_min_train(seed):
    # 80 classes over 120 observers: the rarest classes are dropped, some for isolation.
    observer, category = _random_images(seed, n=2500, observers=120, classes=80)
    rules = rules_for(Preset.INAT2018)
    result = _assign(observer, category, rules, seed)
    counts = _per_split(result, observer, category, 80)
    kept = result.class_kept
    assert 40 <= kept.sum() < 80
    assert (counts[Split.VAL][kept] >= rules.val_per_class).all()
    assert (counts[Split.TRAIN][kept] >= rules.min_train).all()
    assert set(np.unique(result.observer_split).tolist()) == {Split.TRAIN, Split.VAL, Split.TEST}
    # Each dropped class says why, and the reason holds.
    total = np.bincount(category, minlength=80)
    assert "too few val images under isolation" in set(result.drop_reason)
    for c in np.flatnonzero(~kept):
        reason = result.drop_reason[c]
        if reason == "too few images":
            assert total[c] < rules.min_train + rules.val_per_class
        elif reason == "too few val images under isolation":
            assert counts[Split.VAL][c] < rules.val_per_class
        else:
            assert reason == "too few train images under isolation" and counts[Split.TRAIN][c] < rules.min_train
    assert (result.drop_reason[kept] == "").all()


def test_the_same_seed_gives_the_same_splits_and_another_seed_others():
    observer, category = _random_images(5)
    rules = rules_for(Preset.INAT2018)
    first, again, other = (_assign(observer, category, rules, seed) for seed in (3, 3, 4))
    assert np.array_equal(first.observer_split, again.observer_split)
    assert np.array_equal(first.drop_reason, again.drop_reason)
    assert not np.array_equal(first.observer_split, other.observer_split)


def test_val_takes_small_observers_before_a_big_one():
    # Class 0: observer 0 holds 40 images, observers 1–10 one each; class 1 the same with observers 11–21.
    observer = [0] * 40 + list(range(1, 11)) + [11] * 40 + list(range(12, 22))
    category = [0] * 50 + [1] * 50
    result = _assign(observer, category, rules_for(Preset.INAT2018, test_fraction=0.0))
    val = np.flatnonzero(result.observer_split == Split.VAL)
    assert len(val) == 6 and 0 not in val and 11 not in val  # exactly the quota, from the small observers
    assert result.observer_split[0] == result.observer_split[11] == Split.TRAIN
    assert result.class_kept.all()


def test_a_class_with_too_few_images_is_dropped_as_such():
    observer = list(range(10)) + [10, 11, 12, 13]
    category = [0] * 10 + [1] * 4  # class 1: 4 images < min_train 2 + val 3
    result = _assign(observer, category, rules_for(Preset.INAT2018))
    assert result.class_kept.tolist() == [True, False]
    assert result.drop_reason[1] == "too few images"


def test_no_test_observers_with_a_zero_test_share():
    observer, category = _random_images(1)
    result = _assign(observer, category, rules_for(Preset.INAT2018, test_fraction=0.0))
    assert not (result.observer_split == Split.TEST).any()


def test_the_test_target_follows_the_capped_train_split():
    observer, category = _random_images(2, n=6000, observers=400)
    sizes = {}
    for cap in (None, 20):
        rules = rules_for(Preset.INAT2018, max_train=cap) if cap else rules_for(Preset.INAT2018, max_train=None)
        counts = _per_split(_assign(observer, category, rules), observer, category, 30)
        sizes[cap] = counts[Split.TEST].sum()
        train = counts[Split.TRAIN] if cap is None else np.minimum(counts[Split.TRAIN], cap)
        assert 0.2 <= sizes[cap] / train.sum() <= 0.5
    assert sizes[20] < 0.5 * sizes[None]


def test_a_val_share_leaves_min_train_and_is_near_its_fraction():
    observer, category = _random_images(3)
    rules = rules_for(Preset.INAT2017)
    result = _assign(observer, category, rules)
    counts = _per_split(result, observer, category, 30)
    kept = result.class_kept
    assert (counts[Split.TRAIN][kept] >= rules.min_train).all()
    assert 0.10 <= counts[Split.VAL].sum() / len(category) <= 0.2


def test_a_test_quota_per_class_drops_no_class_and_leaves_min_train():
    observer, category = _random_images(4, n=6000, observers=500)
    plain = _assign(observer, category, rules_for(Preset.INAT2018))
    result = _assign(observer, category, rules_for(Preset.INAT2018, test_per_class=5))
    counts = _per_split(result, observer, category, 30)
    kept = result.class_kept
    assert np.array_equal(kept, plain.class_kept)  # a class that misses its test quota keeps what it got
    assert (counts[Split.TRAIN][kept] >= 2).all()
    assert (counts[Split.TEST][kept] >= 5).mean() > 0.5
    # Small observers first, wasting at most twice what they bring: far fewer test images than a share of train.
    assert counts[Split.TEST].sum() < 0.5 * _per_split(plain, observer, category, 30)[Split.TEST].sum()
