"""Sampling: the photos kept per observation, every observer in one split, each class sampled to its quotas.

Also the ``train_mini`` subset of train. The draws come from the build's sample generator (its
``resample_seed``) in a fixed order, so a seed gives the same sample.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from inatcomp.build.arrays import (
    _take_numbers,
    _unique_inverse,
    first_within_groups,
    random_keys,
    rank_within_groups,
)
from inatcomp.build.audit import _Audit
from inatcomp.build.export import ExportTables
from inatcomp.build.inclusion import _Classified
from inatcomp.build.layout import _PARTS
from inatcomp.build.rules import BuildRules, PhotoChoice, Split
from inatcomp.build.splits import _Pairs, assign_observer_pairs
from inatcomp.formats.taxonomy import TaxonIndex


@dataclasses.dataclass
class _Candidates:
    """The photos that may enter the release, after photos per observation.

    Attributes:
        rows: Row of each candidate photo in the photos table.
        obs: Row of its observation.
        rank_in_obs: Its rank among its observation's photos kept; None when one photo per observation is kept.
    """

    rows: np.ndarray
    obs: np.ndarray
    rank_in_obs: np.ndarray | None


@dataclasses.dataclass
class _Splits:
    """Classes and observers of the candidates in compact indices, each candidate's split and the classes kept.

    Attributes:
        class_rows: Row of each (compact) class in the taxa table.
        cand_class: Compact class of each candidate photo.
        supercategories: Supercategory of each class, '' for none.
        kept: Whether each class is kept: it has a supercategory and its split quotas could be met.
        image_split: Split of each candidate photo (its observer's).
    """

    class_rows: np.ndarray
    cand_class: np.ndarray
    supercategories: np.ndarray
    kept: np.ndarray
    image_split: np.ndarray


def _photos_per_observation(
    tables: ExportTables, classified: _Classified, rules: BuildRules, rng: np.random.Generator, audit: _Audit
) -> _Candidates:
    """Photos per observation: the first (or a random one), or up to N spread over observations.

    Only photos of observations with a class are candidates. The photos' ``position`` is dropped from
    ``tables`` once read.
    """
    photo_obs = classified.photo_obs
    keep_photo = (photo_obs >= 0) & (classified.obs_class[np.maximum(photo_obs, 0)] >= 0)
    cand = np.flatnonzero(keep_photo)
    del keep_photo
    if rules.photo_choice is PhotoChoice.RANDOM:
        order_key = random_keys(rng, len(cand))
    else:  # by position, ties in the table's order
        order_key = _take_numbers(tables.photos["position"], cand, 0)
    if rules.photos_per_observation == 1:
        extra, rank_in_obs = ~first_within_groups(photo_obs[cand], order_key), None
    else:
        rank_in_obs = rank_within_groups(photo_obs[cand], order_key)
        extra = rank_in_obs >= rules.photos_per_observation
        rank_in_obs = rank_in_obs[~extra]
    audit.add("photos per observation", photos=int(extra.sum()))
    cand = cand[~extra]
    tables.photos = tables.photos.drop_columns(["position"])
    return _Candidates(rows=cand, obs=photo_obs[cand], rank_in_obs=rank_in_obs)


def _split_observers(
    classified: _Classified, candidates: _Candidates, rules: BuildRules, rng: np.random.Generator, audit: _Audit
) -> _Splits:
    """Put every observer in one split (:func:`~inatcomp.build.splits.assign_observers`); audit the classes dropped.

    Classes and observers get compact indices first; a class without a supercategory is dropped.
    """
    class_rows, cand_class = _unique_inverse(classified.obs_class[candidates.obs])
    observer_ids, cand_observer = _unique_inverse(classified.obs_observer[candidates.obs])
    pairs = _Pairs.of_images(cand_observer, cand_class, len(observer_ids), len(class_rows))
    supercats, kept, observer_split = _split_pairs(
        classified.taxa, pairs, class_rows, len(observer_ids), rules, rng, audit
    )
    return _Splits(
        class_rows=class_rows,
        cand_class=cand_class,
        supercategories=supercats,
        kept=kept,
        image_split=observer_split[cand_observer],
    )


def _split_pairs(
    taxa: TaxonIndex,
    pairs: _Pairs,
    class_rows: np.ndarray,
    n_observers: int,
    rules: BuildRules,
    rng: np.random.Generator,
    audit: _Audit,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The observer split of the candidates given as (observer, class) pairs; the classes dropped audited.

    Returns:
        Each class's supercategory, whether each class is kept, and each observer's split.
    """
    supercats = taxa.supercategories(class_rows)
    no_super = supercats == ""
    photos = pairs.per_class(len(class_rows))
    if no_super.any():
        audit.add("no supercategory", classes=int(no_super.sum()), photos=int(photos[no_super].sum()))
    assignment = assign_observer_pairs(pairs, n_observers=n_observers, n_classes=len(class_rows), rules=rules, rng=rng)
    kept = assignment.class_kept & ~no_super
    for why in sorted(set(assignment.drop_reason[assignment.drop_reason != ""])):
        lost = assignment.drop_reason == why
        audit.add(why, classes=int((lost & ~no_super).sum()), photos=int(photos[lost & ~no_super].sum()))
    return supercats, kept, assignment.observer_split


def _apply_quotas(
    splits: _Splits, candidates: _Candidates, rules: BuildRules, rng: np.random.Generator, audit: _Audit
) -> np.ndarray:
    """Quotas: val exactly val_per_class, train capped (spread over observations), test whole or capped.

    Returns:
        Whether each candidate photo is chosen for the release.
    """
    cand_class, image_split, n_classes = splits.cand_class, splits.image_split, len(splits.class_rows)
    in_kept = splits.kept[cand_class]
    key = random_keys(rng, len(cand_class)).astype(np.int64)
    is_val = in_kept & (image_split == Split.VAL)
    is_train = in_kept & (image_split == Split.TRAIN)
    is_test = in_kept & (image_split == Split.TEST)
    if rules.test_per_class is not None:
        chosen = _within_quota(cand_class, is_test, key, rules.test_per_class, n_classes)
        audit.add("test images beyond the per-class quota", photos=int(is_test.sum() - chosen.sum()))
    else:
        chosen = is_test
    if rules.val_per_class is not None:
        val_pick = _within_quota(cand_class, is_val, key, rules.val_per_class, n_classes)
        chosen |= val_pick
        audit.add("val images beyond the per-class quota", photos=int(is_val.sum() - val_pick.sum()))
    else:
        chosen |= is_val
    if rules.max_train is not None:
        # Spread over observations: an observation's second photo only after every observation's first.
        rank_in_obs = candidates.rank_in_obs
        spread = key if rank_in_obs is None else (rank_in_obs << 32) | key
        train_pick = _within_quota(cand_class, is_train, spread, rules.max_train, n_classes)
        chosen |= train_pick
        audit.add("train images above max_train", photos=int(is_train.sum() - train_pick.sum()))
    else:
        chosen |= is_train
    return chosen


def _within_quota(groups: np.ndarray, mask: np.ndarray, keys: np.ndarray, quota: int, n_groups: int) -> np.ndarray:
    """The items of ``mask`` ranked below ``quota`` in their group by ``keys`` (ties by position).

    Only groups holding more than ``quota`` items are ranked: in the others every item is within it. Of a
    group's items only those whose key is below a limit are ranked, the limit set so that about twice the
    quota fall below it when the keys are uniform 32-bit integers (:func:`random_keys`): the quota's smallest
    are among them whenever at least ``quota`` are. A group with fewer below its limit is ranked whole, so the
    result is exact whatever the keys.
    """
    count = np.bincount(groups[mask], minlength=n_groups)
    over = count > quota
    pick = mask.copy()
    ranked = np.flatnonzero(mask & over[groups])
    if len(ranked) > 8 * quota * int(over.sum()):
        ranked_groups = groups[ranked]
        limit = np.minimum((2 * quota + 64) / np.maximum(count, 1), 1.0) * float(1 << 32)
        near = keys[ranked] < limit[ranked_groups]
        short = over & (np.bincount(ranked_groups[near], minlength=n_groups) < quota)
        if short.any():
            near |= short[ranked_groups]
        pick[ranked[~near]] = False
        ranked = ranked[near]
    pick[ranked] = rank_within_groups(groups[ranked], keys[ranked]) < quota
    return pick


def _split_sizes(
    split: np.ndarray, category: np.ndarray, rules: BuildRules, seed: int
) -> tuple[dict[str, int], np.ndarray | None]:
    """Images per split, and the images of ``train_mini`` (``train_mini_per_class`` of train per class) if any.

    Returns:
        The sizes (``train_mini`` after ``train`` when there is one) and the positions of train_mini's images.
    """
    sizes, mini = {}, None
    for part, code in _PARTS.items():
        sizes[part] = int((split == code).sum())
        if part == "train" and rules.train_mini_per_class:
            idx = np.flatnonzero(split == code)
            rng = np.random.default_rng([seed, 17])
            mini = idx[rank_within_groups(category[idx], random_keys(rng, len(idx))) < rules.train_mini_per_class]
            sizes["train_mini"] = len(mini)
    return sizes, mini
