"""Turning an observation export into a challenge dataset: ``inatcomp build``.

The way through: read the four export tables (:mod:`inatcomp.export`) → give every observation a
class or a reason why not (roll-up, hybrids, inactive or unknown taxa, quality grade; leaf genera and
inclusion thresholds for ``production``) → keep the photos per observation the rules allow → put
every observer in one split (:func:`inatcomp.splits.assign_observers`) → sample each class to its
quotas → resize the images into the release layout → write the release files, the organizer's
private files (solution, provenance) and an audit that re-checks leakage from the written files.

Outputs, named as the releases (2018 shown; 2017 and 2021 use their own names):
``train2018.json``, ``val2018.json``, ``test2018.json`` (no annotations),
``{train,val,test}2018_locations.json``, ``categories.json``, ``solution.csv``,
``sample_submission.csv``, ``provenance.csv``, ``audit.json`` + ``audit.md``, ``stats.json`` +
``stats.md`` + ``long_tail.png``, and the images under ``train_val2018/`` and ``test2018/``.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp import formats
from inatcomp.export import ancestry_parents, read_export
from inatcomp.splits import BuildRules, PhotoChoice, Preset, Split, assign_observers, rank_within_groups
from inatcomp.taxonomy import TaxonIndex

__all__ = ["BuildResult", "build_dataset", "release_names"]

_logger = logging.getLogger(__name__)

_LICENSE_URLS = {
    "CC0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-SA": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC-BY-ND": "https://creativecommons.org/licenses/by-nd/4.0/",
    "CC-BY-NC-SA": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "CC-BY-NC-ND": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
}
_SOURCE_SIZES = ("original", "large", "medium", "small")
_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")
#: Labels per submission row, by release year (formats.md §4).
_LABELS = {2017: 5, 2018: 3, 2019: 1, 2021: 5}


def release_names(rules: BuildRules) -> dict[str, str]:
    """File and folder names of a release: keys train, val, test, train_mini, *_locations, folders."""
    if rules.preset is Preset.INAT2021:
        return {
            "train": "train.json", "val": "val.json", "test": "public_test.json", "train_mini": "train_mini.json",
            "train_dir": "train", "val_dir": "val", "test_dir": "public_test",
        }  # fmt: skip
    y = rules.year
    folder = "train_val_images" if rules.preset is Preset.INAT2017 else f"train_val{y}"
    return {
        "train": f"train{y}.json", "val": f"val{y}.json", "test": f"test{y}.json",
        "train_locations": f"train{y}_locations.json", "val_locations": f"val{y}_locations.json",
        "test_locations": f"test{y}_locations.json", "train_dir": folder, "val_dir": folder, "test_dir": f"test{y}",
    }  # fmt: skip


@dataclasses.dataclass
class BuildResult:
    """Summary of a build: split sizes, classes and the audit."""

    classes: int
    images: dict[str, int]
    audit: dict
    out: Path


class _Audit:
    """Counts what each rule removed: observations, photos, classes, observers."""

    def __init__(self) -> None:
        self.rules: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def add(self, rule: str, **counts: int) -> None:
        for key, value in counts.items():
            if value:
                self.rules[rule][key] += int(value)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {rule: dict(sorted(c.items())) for rule, c in self.rules.items() if c}


def _observation_classes(
    taxa: TaxonIndex,
    obs_taxon: np.ndarray,
    obs_valid_taxon: np.ndarray,
    rules: BuildRules,
) -> tuple[np.ndarray, np.ndarray]:
    """Class row (into the taxa table) and skip reason code of each observation, before inclusion rules."""
    rows = np.where(obs_valid_taxon, taxa.rows_of(np.where(obs_valid_taxon, obs_taxon, -1)), -1)
    reason = np.zeros(len(rows), dtype=np.int8)
    reason[~obs_valid_taxon] = _REASONS.index("no taxon")
    reason[(reason == 0) & (rows < 0)] = _REASONS.index("unknown taxon")
    known = rows >= 0
    safe_rows = np.where(known, rows, 0)
    reason[(reason == 0) & known & taxa.is_hybrid[safe_rows]] = _REASONS.index("hybrid")
    level = taxa.rank_levels[safe_rows]
    species = taxa.ancestor["species"][safe_rows]
    if rules.rollup_infraspecific:
        cls = np.where(level <= 10, species, -1)
    else:
        cls = np.where((level <= 10) & (species >= 0), safe_rows, -1)
    genus = taxa.ancestor["genus"][safe_rows]
    above = (reason == 0) & (cls < 0)
    if rules.leaf_genera:
        at_genus = above & (taxa.ranks[safe_rows] == "genus")
        cls[at_genus] = genus[at_genus]
        above &= ~at_genus
    reason[above] = _REASONS.index("identified above species")
    inactive = (reason == 0) & ~(taxa.active[safe_rows] & taxa.active[np.where(cls >= 0, cls, 0)])
    reason[inactive] = _REASONS.index("inactive taxon")
    supercategory_missing = (reason == 0) & (taxa.ancestor["kingdom"][np.where(cls >= 0, cls, 0)] < 0)
    reason[supercategory_missing] = _REASONS.index("no kingdom in ancestry")
    cls[reason != 0] = -1
    return cls, reason


_REASONS = (
    "",
    "no taxon",
    "unknown taxon",
    "hybrid",
    "identified above species",
    "inactive taxon",
    "no kingdom in ancestry",
    "unknown observer",
    "not research grade",
    "below inclusion thresholds",
    "no supercategory",
)


def _apply_inclusion(
    taxa: TaxonIndex,
    cls: np.ndarray,
    reason: np.ndarray,
    research: np.ndarray,
    photos_per_obs: np.ndarray,
    rules: BuildRules,
) -> None:
    """Inclusion thresholds and leaf genera (production), in place on ``cls`` and ``reason``."""
    if not (rules.min_observations or rules.min_research_observations or rules.min_photos):
        return
    ok = reason == 0
    n = len(taxa.taxon_ids)

    def qualifies(keys: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n_obs = np.bincount(keys[mask], minlength=n)
        n_research = np.bincount(keys[mask & research], minlength=n)
        n_photos = np.bincount(keys[mask], weights=photos_per_obs[mask], minlength=n)
        by_obs = (n_obs >= rules.min_observations) & (n_research >= rules.min_research_observations)
        by_photos = (n_photos >= rules.min_photos) if rules.min_photos else np.zeros(n, bool)
        return by_obs | by_photos

    safe_cls = np.where(ok, cls, 0)
    is_species_class = ok & (taxa.ranks[safe_cls] != "genus")
    species_ok = qualifies(safe_cls, is_species_class)
    keep = ok & is_species_class & species_ok[safe_cls]
    if rules.leaf_genera:
        # A genus whose species all fail becomes a class with its own and its species' observations.
        genus_of = taxa.ancestor["genus"][safe_cls]
        has_species_class = np.zeros(n, bool)
        has_species_class[genus_of[keep & (genus_of >= 0)]] = True
        candidate = ok & ~keep & (genus_of >= 0) & ~has_species_class[np.maximum(genus_of, 0)]
        genus_ok = qualifies(np.maximum(genus_of, 0), candidate)
        leaf = candidate & genus_ok[np.maximum(genus_of, 0)]
        cls[leaf] = genus_of[leaf]
        keep |= leaf
    dropped = ok & ~keep
    reason[dropped] = _REASONS.index("below inclusion thresholds")
    cls[dropped] = -1


def _resize_one(args: tuple[str, str, int, int]) -> str:
    """Resize one source photo to (width, height) into a staging path; '' on success, else the error."""
    source, target, width, height = args
    from PIL import Image, UnidentifiedImageError

    if os.path.exists(target):
        return ""
    try:
        with Image.open(source) as image:
            image.draft("RGB", (width, height))  # JPEG DCT scaling: decode at reduced size when possible
            image = image.convert("RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BICUBIC)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        return f"{type(error).__name__}: {error}"
    tmp = target + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
    os.replace(tmp, target)
    return ""


def _source_path(export: Path, photo_id: int, extension: str) -> str:
    for size in _SOURCE_SIZES:
        path = export / "photos" / str(photo_id) / f"{size}.{extension}"
        if path.exists():
            return str(path)
    return str(export / "photos" / str(photo_id) / f"medium.{extension}")


def _resize_all(jobs: list[tuple[str, str, int, int]], workers: int | None) -> list[str]:
    start = time.perf_counter()
    results: list[str] = []
    workers = workers or os.cpu_count() or 1
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 64 else None
    iterator = pool.imap(_resize_one, jobs, chunksize=64) if pool else map(_resize_one, jobs)
    last = start
    try:
        for i, result in enumerate(iterator, 1):
            results.append(result)
            now = time.perf_counter()
            if now - last > 5 or i == len(jobs):
                last = now
                _logger.info("images %d/%d (%.0f/s)", i, len(jobs), i / max(now - start, 1e-9))
    finally:
        if pool:
            pool.close()
            pool.join()
    return results


def _fit(width: np.ndarray, height: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Sizes after shrinking so the long side is at most ``side`` (never enlarged)."""
    long = np.maximum(np.maximum(width, height), 1)
    scale = np.minimum(1.0, side / long)
    return np.maximum(1, np.round(width * scale)).astype(np.int64), np.maximum(1, np.round(height * scale)).astype(
        np.int64
    )


def build_dataset(
    export_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    rules: BuildRules,
    seed: int = 0,
    resample_seed: int | None = None,
    images: bool = True,
    workers: int | None = None,
) -> BuildResult:
    """Build a challenge dataset from an observation export.

    Args:
        export_dir: Folder with the four export tables (and ``photos/`` when ``images``).
        out_dir: Release folder (created).
        rules: The preset's rules with any overrides.
        seed: Seed of the observers' splits; with the same export, rules and seed the files are identical.
        resample_seed: Seed of the photo sample within the same category set (default: ``seed``).
        images: Resize the images into the release layout.
        workers: Processes for the images (default one per CPU).

    Returns:
        Classes, images per split and the audit.

    Raises:
        ValueError: A malformed export (naming file, line and column) or contradictory rules.
    """
    rules.check()
    start = time.perf_counter()
    export_dir, out = Path(export_dir), Path(out_dir)
    sample_seed = seed if resample_seed is None else resample_seed
    split_rng = np.random.default_rng([seed, 11])
    sample_rng = np.random.default_rng([sample_seed, 13])
    audit = _Audit()
    tables = read_export(export_dir)

    t = tables.taxa
    taxa = TaxonIndex(
        taxon_ids=t["taxon_id"].to_numpy(),
        parent_ids=ancestry_parents(t["ancestry"]),
        ranks=np.asarray(pc.utf8_lower(t["rank"]).to_numpy(zero_copy_only=False), dtype=object),
        rank_levels=t["rank_level"].fill_null(0).to_numpy(),
        names=t["name"].to_numpy(zero_copy_only=False),
        active=t["active"].fill_null(True).to_numpy(zero_copy_only=False),
    )

    # Observations: a class or a reason each.
    o = tables.observations
    obs_taxon = o["taxon_id"].fill_null(-1).to_numpy()
    obs_class, obs_reason = _observation_classes(taxa, obs_taxon, o["taxon_id"].is_valid().to_numpy(False), rules)
    known_observers = tables.observers["observer_id"].to_numpy()
    obs_observer = o["observer_id"].fill_null(-1).to_numpy()
    unknown_observer = ~np.isin(obs_observer, known_observers)
    obs_reason[(obs_reason == 0) & unknown_observer] = _REASONS.index("unknown observer")
    obs_class[obs_reason != 0] = -1
    research = pc.equal(o["quality_grade"], "research").fill_null(False).to_numpy(zero_copy_only=False)

    # Photos: join to their observation by uuid.
    p = tables.photos
    photo_obs = pc.index_in(p["observation_uuid"], value_set=o["observation_uuid"]).fill_null(-1).to_numpy()
    orphan = photo_obs < 0
    audit.add("photo without observation", photos=int(orphan.sum()))
    photos_per_obs = np.bincount(photo_obs[~orphan], minlength=len(obs_class)).astype(np.float64)

    _apply_inclusion(taxa, obs_class, obs_reason, research, photos_per_obs, rules)
    if rules.research_only:
        obs_reason[(obs_reason == 0) & ~research] = _REASONS.index("not research grade")
        obs_class[obs_reason != 0] = -1
    for code in np.unique(obs_reason[obs_reason > 0]):
        hit = obs_reason == code
        audit.add(_REASONS[code], observations=int(hit.sum()), photos=int(photos_per_obs[hit].sum()))

    # Photos per observation: the first (or a random one), or up to N spread over observations.
    keep_photo = ~orphan & (obs_class[np.maximum(photo_obs, 0)] >= 0)
    cand = np.flatnonzero(keep_photo)
    position = p["position"].fill_null(0).to_numpy()[cand]
    if rules.photo_choice is PhotoChoice.RANDOM:
        order_key = sample_rng.random(len(cand))
    else:
        order_key = position.astype(np.float64) + np.arange(len(cand)) * 1e-12
    rank_in_obs = rank_within_groups(photo_obs[cand], order_key)
    extra = rank_in_obs >= rules.photos_per_observation
    audit.add("photos per observation", photos=int(extra.sum()))
    cand, rank_in_obs = cand[~extra], rank_in_obs[~extra]
    cand_obs = photo_obs[cand]
    cand_class_row = obs_class[cand_obs]

    # Compact indices for classes and observers.
    class_rows, cand_class = np.unique(cand_class_row, return_inverse=True)
    observer_ids, cand_observer = np.unique(obs_observer[cand_obs], return_inverse=True)
    supercats = taxa.supercategories(class_rows)
    no_super = supercats == ""
    if no_super.any():
        drop = no_super[cand_class]
        audit.add("no supercategory", classes=int(no_super.sum()), photos=int(drop.sum()))
    assignment = assign_observers(
        cand_observer,
        cand_class,
        n_observers=len(observer_ids),
        n_classes=len(class_rows),
        rules=rules,
        rng=split_rng,
    )
    kept = assignment.class_kept & ~no_super
    for why in sorted(set(assignment.drop_reason[assignment.drop_reason != ""])):
        lost = assignment.drop_reason == why
        audit.add(
            why,
            classes=int((lost & ~no_super).sum()),
            photos=int(lost[cand_class].sum() - (lost & no_super)[cand_class].sum()),
        )
    image_split = assignment.observer_split[cand_observer]
    in_kept = kept[cand_class]

    # Quotas: val exactly val_per_class, train capped (spread over observations), test whole.
    key = sample_rng.random(len(cand))
    chosen = np.zeros(len(cand), dtype=bool)
    is_val = in_kept & (image_split == Split.VAL)
    is_train = in_kept & (image_split == Split.TRAIN)
    is_test = in_kept & (image_split == Split.TEST)
    if rules.val_per_class is not None:
        val_rank = np.full(len(cand), 1 << 40)
        val_rank[is_val] = rank_within_groups(cand_class[is_val], key[is_val])
        chosen |= is_val & (val_rank < rules.val_per_class)
        audit.add("val images beyond the per-class quota", photos=int((is_val & ~chosen).sum()))
    else:
        chosen |= is_val
    train_rank = np.full(len(cand), 1 << 40)
    train_rank[is_train] = rank_within_groups(cand_class[is_train], rank_in_obs[is_train] + key[is_train])
    if rules.max_train is not None:
        chosen |= is_train & (train_rank < rules.max_train)
        audit.add("train images above max_train", photos=int((is_train & (train_rank >= rules.max_train)).sum()))
    else:
        chosen |= is_train
    chosen |= is_test

    # Category ids in taxonomic order, so that they do not depend on the export's row order.
    kept_rows = class_rows[kept]
    lineage = {rank: taxa.named(rank, kept_rows) for rank in _RANKS}
    cat_frame = pd.DataFrame({rank: lineage[rank] for rank in _RANKS})
    cat_frame["name"] = taxa.names[kept_rows]
    cat_frame["taxon_id"] = taxa.taxon_ids[kept_rows]
    cat_frame["supercategory"] = supercats[kept]
    cat_frame["compact"] = np.flatnonzero(kept)
    cat_frame = cat_frame.sort_values([*_RANKS, "name", "taxon_id"], kind="stable").reset_index(drop=True)
    category_of_compact = np.full(len(class_rows), -1, dtype=np.int64)
    category_of_compact[cat_frame["compact"].to_numpy()] = np.arange(len(cat_frame))

    sel = np.flatnonzero(chosen)
    photo_rows = cand[sel]
    sel_split = image_split[sel].astype(np.int64)
    sel_category = category_of_compact[cand_class[sel]]
    photo_id = p["photo_id"].to_numpy()[photo_rows]
    src_w = p["width"].fill_null(0).to_numpy()[photo_rows]
    src_h = p["height"].fill_null(0).to_numpy()[photo_rows]
    width, height = _fit(src_w, src_h, rules.max_image_side)
    photo_uuid_col = "photo_uuid" if "photo_uuid" in p.column_names else None
    extension = np.asarray(pc.utf8_lower(p["extension"]).take(pa.array(photo_rows)).to_numpy(zero_copy_only=False))

    names = release_names(rules)
    out.mkdir(parents=True, exist_ok=True)
    # Image ids: train by category, then val by category, then test in a random order (ids leak no label).
    test_shuffle = sample_rng.random(len(sel))
    order = np.lexsort((photo_id, np.where(sel_split == Split.TEST, test_shuffle, sel_category), sel_split))
    sel, photo_rows, sel_split, sel_category, photo_id, width, height, extension = (
        a[order] for a in (sel, photo_rows, sel_split, sel_category, photo_id, width, height, extension)
    )
    file_names = _file_names(rules, names, cat_frame, sel_split, sel_category, photo_id)

    if images:
        jobs = [
            (_source_path(export_dir, int(pid), ext), str(out / fname), int(w), int(h))
            for pid, ext, fname, w, h in zip(photo_id, extension, file_names, width, height)
        ]
        for folder in sorted({os.path.dirname(j[1]) for j in jobs}):
            os.makedirs(folder, exist_ok=True)
        failures = np.array([bool(r) for r in _resize_all(jobs, workers)], dtype=bool)
        if failures.any():
            audit.add("missing or corrupt source image", photos=int(failures.sum()))
            for job, result in zip(jobs, failures):
                if result:
                    _logger.warning("skipped %s (missing or corrupt)", job[0])
            ok = ~failures
            # A class whose val or train quota a failure broke is dropped with its images.
            val_count = np.bincount(sel_category[ok & (sel_split == Split.VAL)], minlength=len(cat_frame))
            train_count = np.bincount(sel_category[ok & (sel_split == Split.TRAIN)], minlength=len(cat_frame))
            broken = (train_count < rules.min_train) | (
                (val_count < rules.val_per_class) if rules.val_per_class else np.zeros(len(cat_frame), bool)
            )
            if broken.any():
                audit.add("quota broken by corrupt images", classes=int(broken.sum()))
            ok &= ~broken[sel_category]
            for job, good in zip(jobs, ok):
                if not good and os.path.exists(job[1]):
                    os.remove(job[1])
            remap = np.cumsum(~broken) - 1
            cat_frame = cat_frame[~broken].reset_index(drop=True)
            sel, photo_rows, sel_split, photo_id, width, height = (
                a[ok] for a in (sel, photo_rows, sel_split, photo_id, width, height)
            )
            sel_category = remap[sel_category[ok]]
            if broken.any():  # file names carry category ids in some layouts: move the files
                new_names = _file_names(rules, names, cat_frame, sel_split, sel_category, photo_id)
                for old, new in zip(np.asarray(file_names)[ok], new_names):
                    if old != new:
                        os.makedirs(os.path.dirname(out / new), exist_ok=True)
                        os.replace(out / old, out / new)
                file_names = new_names
            else:
                file_names = list(np.asarray(file_names)[ok])

    result = _write_release(
        out=out,
        rules=rules,
        names=names,
        taxa=taxa,
        cat_frame=cat_frame,
        tables=tables,
        photo_rows=photo_rows,
        obs_rows=photo_obs[photo_rows],
        split=sel_split,
        category=sel_category,
        width=width,
        height=height,
        file_names=file_names,
        seed=sample_seed,
        audit=audit,
        photo_uuid_col=photo_uuid_col,
    )
    _logger.info("built %s in %.1fs: %d classes, %s", out, time.perf_counter() - start, result.classes, result.images)
    return result


def _file_names(
    rules: BuildRules,
    names: dict[str, str],
    cat_frame: pd.DataFrame,
    split: np.ndarray,
    category: np.ndarray,
    photo_id: np.ndarray,
) -> list[str]:
    """Release-layout file names of the selected images (image files are named by photo id)."""
    if rules.preset is Preset.INAT2021:
        class_dir = np.asarray(_dir_names(cat_frame), dtype=object)
    elif rules.preset is Preset.INAT2017:
        class_dir = (cat_frame["supercategory"] + "/" + cat_frame["name"].str.replace(" ", "_")).to_numpy(object)
    else:
        class_dir = (cat_frame["supercategory"] + "/" + pd.Series(np.arange(len(cat_frame))).astype(str)).to_numpy(
            object
        )
    folders = {int(Split.TRAIN): names["train_dir"], int(Split.VAL): names["val_dir"]}
    out = []
    for s, c, pid in zip(split.tolist(), category.tolist(), photo_id.tolist()):
        if s == Split.TEST:
            out.append(f"{names['test_dir']}/{pid}.jpg")
        else:
            out.append(f"{folders[s]}/{class_dir[c]}/{pid}.jpg")
    return out


def _dir_names(cat_frame: pd.DataFrame) -> list[str]:
    """2021 image_dir_name: ``07468_Plantae_Tracheophyta_…_Genus_epithet``."""
    epithet = [n.split(" ", 1)[1].replace(" ", "_") if " " in n else "" for n in cat_frame["name"]]
    return [
        "_".join([f"{i:05d}", *(str(row[r]).replace(" ", "_") for r in _RANKS), e]).rstrip("_")
        for i, (row, e) in enumerate(zip(cat_frame.to_dict("records"), epithet))
    ]


def _category_records(rules: BuildRules, cat_frame: pd.DataFrame) -> list[dict]:
    records = []
    dir_names = _dir_names(cat_frame) if rules.preset is Preset.INAT2021 else None
    for i, row in enumerate(cat_frame.to_dict("records")):
        record: dict = {"id": i, "name": row["name"]}
        if rules.preset is Preset.INAT2021:
            record["common_name"] = row["name"]
        record["supercategory"] = row["supercategory"]
        if rules.preset is not Preset.INAT2017:
            record.update({rank: row[rank] for rank in _RANKS})
        if dir_names is not None:
            record["specific_epithet"] = row["name"].split(" ", 1)[1] if " " in row["name"] else ""
            record["image_dir_name"] = dir_names[i]
        records.append(record)
    return records


def _nullable(values: np.ndarray, *, integer: bool = False) -> list:
    """A float array as a list with ``None`` for NaN (JSON null), optionally as integers."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    out = (np.where(missing, 0, values).astype(np.int64) if integer else values).astype(object)
    out[missing] = None
    return out.tolist()


def _write_release(
    *,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    taxa: TaxonIndex,
    cat_frame: pd.DataFrame,
    tables,
    photo_rows: np.ndarray,
    obs_rows: np.ndarray,
    split: np.ndarray,
    category: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    file_names: list[str],
    seed: int,
    audit: _Audit,
    photo_uuid_col: str | None,
) -> BuildResult:
    """Write every release file, the organizer's files, the audit and the statistics."""
    p, o = tables.photos, tables.observations
    n = len(photo_rows)
    image_ids = np.arange(n, dtype=np.int64)
    licenses_text = np.asarray(p["license"].take(pa.array(photo_rows)).fill_null("").to_numpy(zero_copy_only=False))
    license_names = sorted(set(licenses_text.tolist()))
    license_id = {name: i + 1 for i, name in enumerate(license_names)}
    licenses = [{"id": license_id[nm], "name": nm, "url": _LICENSE_URLS.get(nm, "")} for nm in license_names]
    observer_ids = o["observer_id"].to_numpy()[obs_rows]
    obs_table = tables.observers
    login = dict(
        zip(
            obs_table["observer_id"].to_pylist(),
            [nm or lg for nm, lg in zip(obs_table["name"].fill_null("").to_pylist(), obs_table["login"].to_pylist())],
        )
    )
    lat = o["latitude"].to_numpy(zero_copy_only=False)[obs_rows]
    lon = o["longitude"].to_numpy(zero_copy_only=False)[obs_rows]
    acc = o["positional_accuracy"].to_numpy(zero_copy_only=False)[obs_rows]
    dates = np.asarray(o["observed_on"].take(pa.array(obs_rows)).fill_null("").to_numpy(zero_copy_only=False))
    obs_uuid = np.asarray(o["observation_uuid"].take(pa.array(obs_rows)).to_numpy(zero_copy_only=False))
    photo_id = p["photo_id"].to_numpy()[photo_rows]
    info = {
        "year": rules.year,
        "version": "1.0",
        "description": f"inatcomp {rules.preset.value} challenge dataset",
        "contributor": "inatcomp",
        "url": "",
        "date_created": "",
    }
    categories = _category_records(rules, cat_frame)
    is_2021 = rules.preset is Preset.INAT2021

    # Columns as Python lists once; records are built from them in one pass per split.
    ids = image_ids.tolist()
    license_col = (np.searchsorted(np.asarray(license_names, dtype=object), licenses_text) + 1).tolist()
    holder = pd.Series(observer_ids).map(pd.Series(login)).fillna("").tolist()
    lat_col, lon_col = _nullable(lat), _nullable(lon)
    acc_col = _nullable(acc, integer=True)
    date_col = [d or None for d in dates.tolist()]
    width_col, height_col, category_col = width.tolist(), height.tolist(), category.tolist()

    def image_records(idx: np.ndarray) -> list[dict]:
        rows = idx.tolist()
        if not is_2021:
            return [
                {"id": ids[i], "width": width_col[i], "height": height_col[i], "file_name": file_names[i],
                 "license": license_col[i], "rights_holder": holder[i]}
                for i in rows
            ]  # fmt: skip
        return [
            {"id": ids[i], "width": width_col[i], "height": height_col[i], "file_name": file_names[i],
             "license": license_col[i], "rights_holder": holder[i], "date": date_col[i], "latitude": lat_col[i],
             "longitude": lon_col[i], "location_uncertainty": acc_col[i]}
            for i in rows
        ]  # fmt: skip

    def annotations(idx: np.ndarray) -> list[dict]:
        return [{"id": ids[i], "image_id": ids[i], "category_id": category_col[i]} for i in idx.tolist()]

    sizes = {}
    parts = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}
    for part, code in parts.items():
        idx = np.flatnonzero(split == code)
        sizes[part] = len(idx)
        data = {"info": info, "images": image_records(idx), "licenses": licenses, "categories": categories}
        if code != Split.TEST:
            data["annotations"] = annotations(idx)
        formats.write_json(out / names[part], data)
        if f"{part}_locations" in names:
            locations = [
                {
                    "id": ids[i],
                    "lat": lat_col[i],
                    "lon": lon_col[i],
                    "user_id": int(observer_ids[i]),
                    "date": date_col[i],
                }
                for i in idx.tolist()
            ]
            formats.write_json(out / names[f"{part}_locations"], locations)
        if part == "train" and rules.train_mini_per_class:
            rng = np.random.default_rng([seed, 17])
            mini_rank = rank_within_groups(category[idx], rng.random(len(idx)))
            mini = idx[mini_rank < rules.train_mini_per_class]
            sizes["train_mini"] = len(mini)
            mini_data = {**data, "images": image_records(mini), "annotations": annotations(mini)}
            formats.write_json(out / names["train_mini"], mini_data)
    formats.write_json(out / "categories.json", categories)

    # Organizer's files: the hidden solution, a sample submission, the provenance of every image.
    test_idx = np.flatnonzero(split == Split.TEST)
    rng = np.random.default_rng([seed, 19])
    private = rng.random(len(test_idx)) < rules.private_fraction
    formats.write_csv_columns(
        out / "solution.csv",
        {"id": image_ids[test_idx], "expected": category[test_idx], "usage": np.where(private, "Private", "Public")},
    )
    labels = _LABELS.get(rules.year, 5)
    header = ["Id", "Predicted"] if is_2021 else ["id", "predicted"]
    sample_labels = " ".join(str(k) for k in range(min(labels, max(len(categories), 1))))
    formats.write_csv_columns(
        out / "sample_submission.csv", {header[0]: image_ids[test_idx], header[1]: [sample_labels] * len(test_idx)}
    )
    formats.write_csv_columns(
        out / "provenance.csv",
        {
            "image_id": image_ids,
            "split": np.array(["train", "val", "test"], dtype=object)[split],
            "photo_id": photo_id,
            "observation_uuid": obs_uuid,
            "observer_id": observer_ids,
            "taxon_id": cat_frame["taxon_id"].to_numpy()[category],
        },
    )
    del photo_uuid_col

    leakage = check_leakage(out, names)
    stats = _stats(cat_frame, category, split, sizes)
    audit_dict = {
        "rules": {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(rules).items()},
        "removed": audit.as_dict(),
        "classes": len(categories),
        "images": sizes,
        "observers": {s: int(len(np.unique(observer_ids[split == c]))) for s, c in parts.items()},
        "leakage": leakage,
    }
    formats.write_json(out / "audit.json", audit_dict, indent=2)
    formats.write_atomic(out / "audit.md", _audit_markdown(audit_dict))
    formats.write_json(out / "stats.json", stats, indent=2)
    formats.write_atomic(out / "stats.md", _stats_markdown(stats))
    _long_tail_plot(out / "long_tail.png", category, split, len(categories))
    if leakage["observers_in_two_splits"] or leakage["observations_in_two_splits"] or leakage["photos_in_two_splits"]:
        raise RuntimeError(f"leakage found in the written files: {leakage}")  # a bug, never an input problem
    return BuildResult(classes=len(categories), images=sizes, audit=audit_dict, out=out)


def check_leakage(out: str | os.PathLike, names: dict[str, str] | None = None) -> dict[str, int]:
    """Re-read the written provenance and JSON files and count observers, observations, photos in two splits.

    Also checks that every image id of the JSON files is in the provenance with the same split.
    """
    import pyarrow.csv as pacsv

    out = Path(out)
    prov = pacsv.read_csv(out / "provenance.csv", convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    split_code = pc.index_in(prov["split"], value_set=pa.array(["train", "val", "test"])).to_numpy(False)
    result = {}
    for what, column in (("observers", "observer_id"), ("observations", "observation_uuid"), ("photos", "photo_id")):
        distinct = prov.group_by(column).aggregate([("split", "count_distinct")])["split_count_distinct"]
        result[f"{what}_in_two_splits"] = int(pc.sum(pc.greater(distinct, 1)).as_py() or 0)
    mismatched = 0
    if names:
        split_of = np.full(int(prov["image_id"].to_numpy().max(initial=-1)) + 1, -1)
        split_of[prov["image_id"].to_numpy()] = split_code
        for code, part in enumerate(("train", "val", "test")):
            ids = np.fromiter((image["id"] for image in formats.read_json(out / names[part])["images"]), np.int64)
            known = (ids >= 0) & (ids < len(split_of))
            mismatched += int((~known).sum()) + int((split_of[ids[known]] != code).sum())
    result["json_images_not_in_provenance_split"] = mismatched
    return result


def _stats(cat_frame: pd.DataFrame, category: np.ndarray, split: np.ndarray, sizes: dict[str, int]) -> dict:
    supercat = cat_frame["supercategory"].to_numpy()
    rows = []
    for name in sorted(set(supercat.tolist()), key=lambda s: (-int((supercat == s).sum()), s)):
        in_sc = supercat[category] == name
        rows.append(
            {
                "supercategory": name,
                "classes": int((supercat == name).sum()),
                **{
                    part: int((in_sc & (split == code)).sum()) for part, code in (("train", 0), ("val", 1), ("test", 2))
                },
            }
        )
    train_counts = np.bincount(category[split == Split.TRAIN], minlength=len(cat_frame))
    return {
        "classes": len(cat_frame),
        "images": sizes,
        "per_supercategory": rows,
        "train_images_per_class": {
            "min": int(train_counts.min()) if len(train_counts) else 0,
            "median": float(np.median(train_counts)) if len(train_counts) else 0.0,
            "max": int(train_counts.max()) if len(train_counts) else 0,
        },
    }


def _stats_markdown(stats: dict) -> str:
    lines = [
        "# Dataset statistics",
        "",
        "| supercategory | classes | train | val | test |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in stats["per_supercategory"]:
        lines.append(
            f"| {row['supercategory']} | {row['classes']:,} | {row['train']:,} | {row['val']:,} | {row['test']:,} |"
        )
    totals = {k: sum(r[k] for r in stats["per_supercategory"]) for k in ("classes", "train", "val", "test")}
    lines.append(
        f"| **total** | {totals['classes']:,} | {totals['train']:,} | {totals['val']:,} | {totals['test']:,} |"
    )
    t = stats["train_images_per_class"]
    lines += ["", f"Train images per class: min {t['min']}, median {t['median']:g}, max {t['max']}.", ""]
    lines.append("![long tail](long_tail.png)")
    return "\n".join(lines) + "\n"


def _audit_markdown(audit: dict) -> str:
    lines = ["# Build audit", "", f"Preset `{audit['rules']['preset']}`; {audit['classes']:,} classes kept.", ""]
    lines += ["| rule | classes | observations | photos |", "| --- | ---: | ---: | ---: |"]
    for rule, counts in audit["removed"].items():
        cells = " | ".join(f"{counts.get(key, 0):,}" for key in ("classes", "observations", "photos"))
        lines.append(f"| {rule} | {cells} |")
    lines += ["", "| split | images | observers |", "| --- | ---: | ---: |"]
    for part in ("train", "val", "test"):
        lines.append(f"| {part} | {audit['images'].get(part, 0):,} | {audit['observers'].get(part, 0):,} |")
    if "train_mini" in audit["images"]:
        lines.append(f"| train_mini | {audit['images']['train_mini']:,} | |")
    lines += ["", "Leakage re-checked from the written files:", ""]
    lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in audit["leakage"].items()]
    return "\n".join(lines) + "\n"


def _long_tail_plot(path: Path, category: np.ndarray, split: np.ndarray, n_classes: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.sort(np.bincount(category[split == Split.TRAIN], minlength=n_classes))[::-1]
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(np.arange(1, len(counts) + 1), counts, color="#2a6f3f")
    axis.set_yscale("log")
    axis.set_xlabel("class (sorted by train images)")
    axis.set_ylabel("train images")
    axis.set_title("Long tail of the train split")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    formats.write_atomic(path, buffer.getvalue())


def remove_release(out: str | os.PathLike) -> None:
    """Delete a release folder (used by tests and the demo before a rebuild)."""
    shutil.rmtree(out, ignore_errors=True)


def split_val(
    val_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    minival_frac: float = 0.1,
    seed: int = 0,
    per_class: int = 3,
) -> dict[str, int]:
    """Split a val JSON into the remaining val and a minival, by observer, for competitors' model selection.

    Observers come from the location file beside the JSON (``val2018_locations.json``: ``user_id``) when
    there is one, else from the images' ``rights_holder``. Observers are drawn at random until minival
    holds ``minival_frac`` of the images; minival keeps at most ``per_class`` images per class, and the
    surplus of its observers is left out of both files so no observer is in both.

    Args:
        val_json: A val dataset JSON (any year's flavour).
        out_dir: Folder for ``val.json`` and ``minival.json``.
        minival_frac: Target share of the val images in minival.
        seed: Seed of the observer draw.
        per_class: Cap of minival images per class.

    Returns:
        Image counts of val, minival and the left-out surplus.

    Raises:
        ValueError: An unreadable val JSON, or one without annotations.
    """
    import json

    if not 0 < minival_frac < 1:
        raise ValueError(f"--minival-frac must be in (0, 1), got {minival_frac}")
    path = Path(val_json)
    problems = formats.validate_file(path)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems[:5]))
    data = json.loads(path.read_text(encoding="utf-8"))
    if "annotations" not in data:
        raise ValueError(f"{path}: no annotations: expected a val file, not a test file")
    images = data["images"]
    ids = np.array([image["id"] for image in images], dtype=np.int64)
    label = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    category = np.array([label.get(int(i), -1) for i in ids], dtype=np.int64)
    locations = path.with_name(path.stem + "_locations.json")
    if locations.is_file():
        users = {r["id"]: r.get("user_id") for r in json.loads(locations.read_text(encoding="utf-8"))}
        who = [str(users.get(int(i))) for i in ids]
    else:
        who = [str(image.get("rights_holder", "")) for image in images]
    observers, observer = np.unique(np.asarray(who, dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(len(observers))
    sizes = np.bincount(observer, minlength=len(observers))
    chosen = np.zeros(len(observers), dtype=bool)
    target = minival_frac * len(ids)
    taken = 0
    for o in order.tolist():
        if taken >= target:
            break
        chosen[o] = True
        taken += int(sizes[o])
    in_minival = chosen[observer]
    rank = np.full(len(ids), 1 << 40)
    rank[in_minival] = rank_within_groups(category[in_minival], rng.random(int(in_minival.sum())))
    minival = in_minival & (rank < per_class)
    surplus = in_minival & ~minival
    out = Path(out_dir)
    for name, mask in (("val.json", ~in_minival), ("minival.json", minival)):
        keep = set(ids[mask].tolist())
        part = {
            **data,
            "images": [image for image in images if image["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
        formats.write_json(out / name, part)
    return {"val": int((~in_minival).sum()), "minival": int(minival.sum()), "left_out": int(surplus.sum())}
