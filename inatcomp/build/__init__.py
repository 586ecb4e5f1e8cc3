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
import concurrent.futures
import dataclasses
import functools
import io
import logging
import mmap
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp import formats
from inatcomp.export import TABLE_COLUMNS, ancestry_parents, read_export
from inatcomp.splits import (
    BuildRules,
    PhotoChoice,
    Preset,
    Split,
    assign_observers,
    first_within_groups,
    lexsort_by_group,
    random_keys,
    rank_within_groups,
    sort_with_order,
    stable_argsort,
)
from inatcomp.taxonomy import TaxonIndex

__all__ = ["BUILD_COLUMNS", "BuildResult", "build_dataset", "release_names"]

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
#: Threads writing the release files.
_WRITE_THREADS = 2
#: The columns the builder reads from each export table (the photos' observer_id is the observation's).
BUILD_COLUMNS: dict[str, list[str]] = {
    table: [c for c in columns if (table, c) != ("photos", "observer_id")] for table, columns in TABLE_COLUMNS.items()
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


class _Laps:
    """Wall and CPU seconds (all threads) spent in each stage of a build, logged at debug level."""

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.last_cpu = time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.cpu[stage] = self.cpu.get(stage, 0.0) + cpu - self.last_cpu
        self.last, self.last_cpu = now, cpu
        if _logger.isEnabledFor(logging.DEBUG):
            import resource

            self.peak_mb[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def log(self) -> None:
        _logger.debug(
            "build stages (wall seconds, CPU seconds, peak MB so far):\n%s",
            "\n".join(
                f"{k:32s} {v:6.3f} {self.cpu[k]:6.3f} {self.peak_mb.get(k, 0):6.0f}" for k, v in self.seconds.items()
            ),
        )


_UUID_HASH = np.uint64(0x9E3779B97F4A7C15)


def _uuid_layout(array: pa.Array) -> tuple[int, int, pa.Buffer] | None:
    """(rows, first byte, data buffer) of a string array whose values all have 36 bytes (a uuid), else None."""
    if array.type != pa.string() or array.null_count or len(array) == 0:
        return None
    n = len(array)
    _, offset_buffer, data = array.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int32, count=n + 1, offset=array.offset * 4)
    first = int(offsets[0])
    if int(offsets[-1]) - first != 36 * n or not (np.diff(offsets) == 36).all():
        return None
    return n, first, data


def _uuid_words(values: pa.ChunkedArray | pa.Array) -> list[np.ndarray] | None:
    """Zero-copy views of the bytes of 36-character strings as 4 uint64 and 1 uint32 columns (None if not all 36)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    layout = _uuid_layout(array)
    if layout is None:
        return None
    n, first, data = layout

    def column(at: int, dtype: str) -> np.ndarray:
        return np.ndarray(shape=(n,), dtype=dtype, buffer=data, offset=first + at, strides=(36,))

    return [column(0, "<u8"), column(8, "<u8"), column(16, "<u8"), column(24, "<u8"), column(32, "<u4")]


def _uuid_bytes(array: pa.Array) -> np.ndarray:
    """Zero-copy view of the values of a 36-byte string array (see :func:`_uuid_layout`), one 36-byte item a row."""
    n, first, data = _uuid_layout(array)
    return np.ndarray(shape=(n,), dtype="V36", buffer=data, offset=first)


def _chunks(values: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    return [c for c in (values.chunks if isinstance(values, pa.ChunkedArray) else [values]) if len(c)]


def _uuid_key(words: list[np.ndarray]) -> np.ndarray:
    """A 64-bit hash of each uuid from its words (:func:`_uuid_words`)."""
    return words[0] ^ (words[3] * _UUID_HASH) ^ (words[1] + words[2])


def _index_in(values: pa.ChunkedArray, value_set: pa.ChunkedArray) -> np.ndarray:
    """Row of each value in ``value_set`` (its first occurrence), -1 where absent: ``pc.index_in``, faster for uuids.

    When every string has 36 bytes (a uuid), rows repeating the value before them (an observation's photos
    are usually adjacent) are looked up once; when the values list the value set's uuids in its order, that
    is confirmed byte for byte and nothing is looked up; else the rows are found through a 64-bit hash of
    the bytes in a hash table of integers and then confirmed byte for byte. Other strings, or a hash shared
    by two entries of ``value_set``, take Arrow's string hash table. Both are read chunk by chunk, in place.
    """
    set_chunks, chunks = _chunks(value_set), _chunks(values)
    set_words, chunk_words = [_uuid_words(c) for c in set_chunks], [_uuid_words(c) for c in chunks]
    if not set_chunks or not chunks or any(w is None for w in [*set_words, *chunk_words]):
        return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy()
    set_key = np.concatenate([_uuid_key(w) for w in set_words])
    sorted_key = np.sort(set_key)
    if (sorted_key[1:] == sorted_key[:-1]).any():  # possibly a value twice: Arrow finds the first
        return pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy()
    del sorted_key
    set_rows = [_uuid_bytes(c) for c in set_chunks]
    set_starts = np.cumsum([0] + [len(r) for r in set_rows])

    def same_as_set(mine: np.ndarray, first: int) -> bool:
        """Whether uuids ``mine`` are the value set's from row ``first`` on, byte for byte."""
        done = 0
        while done < len(mine):
            k = int(np.searchsorted(set_starts, first + done, side="right")) - 1
            at = first + done - int(set_starts[k])
            n = min(len(mine) - done, len(set_rows[k]) - at)
            if not (mine[done : done + n].view(np.uint32) == set_rows[k][at : at + n].view(np.uint32)).all():
                return False
            done += n
        return True

    heads, previous, in_order, offset = [], None, 0, 0
    for chunk, words in zip(chunks, chunk_words):
        repeat = np.ones(len(words[0]), dtype=bool)
        for k, w in enumerate(words):
            repeat[1:] &= w[1:] == w[:-1]
            repeat[0] &= previous is not None and w[0] == previous[k]
        chunk_heads = np.flatnonzero(~repeat)
        previous = [w[-1] for w in words]
        if in_order >= 0:  # so far the heads are the value set's rows in order: compare their bytes
            end = in_order + len(chunk_heads)
            fits = end <= len(set_key) and same_as_set(_uuid_bytes(chunk)[chunk_heads], in_order)
            in_order = end if fits else -1
        heads.append(chunk_heads + offset)
        offset += len(words[0])
    run_of_row = np.zeros(offset, dtype=np.int64)
    run_of_row[np.concatenate(heads)] = 1
    np.cumsum(run_of_row, out=run_of_row)
    run_of_row -= 1
    if in_order == len(set_key):
        return run_of_row  # the photos list the observations' uuids in the observations' order
    table = pd.Index(set_key)
    set_columns = [np.concatenate([w[k] for w in set_words]) for k in range(5)]
    head_rows = []
    for words, chunk_heads, start in zip(chunk_words, heads, np.cumsum([0] + [len(w[0]) for w in chunk_words])):
        words = [w[chunk_heads - start] for w in words]
        rows = table.get_indexer(_uuid_key(words))
        safe = np.maximum(rows, 0)
        same = rows >= 0
        for a, b in zip(words, set_columns):
            same &= a == b[safe]
        head_rows.append(np.where(same, rows, -1))
    return np.concatenate(head_rows)[run_of_row]


def _observation_classes(
    taxa: TaxonIndex,
    obs_taxon: np.ndarray,
    obs_valid_taxon: np.ndarray,
    rules: BuildRules,
) -> tuple[np.ndarray, np.ndarray]:
    """Class row (into the taxa table) and skip reason code of each observation, before inclusion rules.

    Everything but the first two reasons depends on the taxon alone: it is worked out once per taxon.
    """
    taxon_class, taxon_reason = _taxon_classes(taxa, rules)
    known = taxa.taxon_ids
    if len(known) and known.min() >= 0 and _dense(int(known.max()), len(obs_taxon)):
        # One lookup per observation in tables indexed by taxon id; the last entry answers for unknown ids.
        top = int(known.max()) + 1
        class_of_id = np.full(top + 1, -1, dtype=np.int64)
        class_of_id[known] = taxon_class
        reason_of_id = np.full(top + 1, _REASONS.index("unknown taxon"), dtype=np.int8)
        reason_of_id[known] = taxon_reason
        at = np.where((obs_taxon >= 0) & (obs_taxon < top), obs_taxon, top)
        cls, reason = class_of_id[at], reason_of_id[at]
        del at
    else:
        rows = np.where(obs_valid_taxon, taxa.rows_of(np.where(obs_valid_taxon, obs_taxon, -1)), -1)
        safe_rows = np.maximum(rows, 0)
        reason = taxon_reason[safe_rows] if len(taxon_reason) else np.zeros(len(rows), np.int8)
        reason[rows < 0] = _REASONS.index("unknown taxon")
        cls = np.where(reason == 0, taxon_class[safe_rows] if len(taxon_class) else -1, -1)
    no_taxon = ~obs_valid_taxon
    reason[no_taxon] = _REASONS.index("no taxon")
    cls[no_taxon] = -1
    return cls, reason


def _taxon_classes(taxa: TaxonIndex, rules: BuildRules) -> tuple[np.ndarray, np.ndarray]:
    """Class row and skip reason code of an observation of each taxon (row of the taxa table)."""
    rows = np.arange(len(taxa.taxon_ids))
    reason = np.zeros(len(rows), dtype=np.int8)
    reason[taxa.is_hybrid[rows]] = _REASONS.index("hybrid")
    level = taxa.rank_levels[rows]
    species = taxa.ancestor["species"][rows]
    if rules.rollup_infraspecific:
        cls = np.where(level <= 10, species, -1)
    else:
        cls = np.where((level <= 10) & (species >= 0), rows, -1)
    genus = taxa.ancestor["genus"][rows]
    above = (reason == 0) & (cls < 0)
    if rules.leaf_genera:
        at_genus = above & (taxa.ranks[rows] == "genus")
        cls[at_genus] = genus[at_genus]
        above &= ~at_genus
    reason[above] = _REASONS.index("identified above species")
    inactive = (reason == 0) & ~(taxa.active[rows] & taxa.active[np.where(cls >= 0, cls, 0)])
    reason[inactive] = _REASONS.index("inactive taxon")
    supercategory_missing = (reason == 0) & (taxa.ancestor["kingdom"][np.where(cls >= 0, cls, 0)] < 0)
    reason[supercategory_missing] = _REASONS.index("no kingdom in ancestry")
    cls[reason != 0] = -1
    return cls, reason


#: Ids below this are always looked up in a dense table rather than by binary search or sorting (see :func:`_dense`).
_DENSE_IDS = 1 << 24


def _dense(top: int, n: int) -> bool:
    """Whether a table indexed by ids up to ``top`` is small for ``n`` lookups: under :data:`_DENSE_IDS`
    entries, or under four per lookup."""
    return top < max(_DENSE_IDS, 4 * n)


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for integers: by counting when they are small and
    non-negative, else by :func:`~inatcomp.splits.sort_with_order` (several times faster than NumPy's)."""
    if len(values) == 0 or values.dtype.kind not in "iu" or values.min() < 0:
        return np.unique(values, return_inverse=True)
    if _dense(int(values.max()), len(values)):
        present = np.flatnonzero(np.bincount(values))
        code = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        code[present] = np.arange(len(present))
        return present.astype(values.dtype), code[values]
    ordered, order = sort_with_order(values)
    head = np.r_[True, ordered[1:] != ordered[:-1]]
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(head) - 1
    return ordered[head], inverse


def _is_in(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``np.isin`` for integer ids, through a dense table when the known ids are non-negative and :func:`_dense`."""
    if len(known) == 0 or known.min() < 0 or not _dense(int(known.max()), len(values)):
        return np.isin(values, known)
    table = np.zeros(int(known.max()) + 1, dtype=bool)
    table[known] = True
    inside = (values >= 0) & (values < len(table))
    return inside & table[np.where(inside, values, 0)]


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

    if os.path.exists(target):  # an interrupted build resumes: keep a finished image of the right size
        try:
            with Image.open(target) as done:
                if done.size == (width, height):
                    return ""
        except (OSError, UnidentifiedImageError):
            pass
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
    overwrite: bool = False,
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
        overwrite: Replace a finished release in ``out_dir`` (its files and image folders are removed first);
            without it such a folder is refused. An interrupted build (no release JSON yet) resumes either way.

    Returns:
        Classes, images per split and the audit.

    Raises:
        ValueError: A malformed export (naming file, line and column) or contradictory rules.
    """
    rules.check()
    start = time.perf_counter()
    export_dir, out = Path(export_dir), Path(out_dir)
    _prepare_out(out, release_names(rules), overwrite=overwrite)
    sample_seed = seed if resample_seed is None else resample_seed
    split_rng = np.random.default_rng([seed, 11])
    sample_rng = np.random.default_rng([sample_seed, 13])
    audit = _Audit()
    laps = _Laps()
    tables = read_export(export_dir, columns=BUILD_COLUMNS)
    laps.lap("read")

    # The photos' join to their observations (by uuid) runs in a second thread beside the observations' classes.
    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        joined = helper.submit(_index_in, tables.photos["observation_uuid"], tables.observations["observation_uuid"])
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
        unknown_observer = ~_is_in(obs_observer, known_observers)
        obs_reason[(obs_reason == 0) & unknown_observer] = _REASONS.index("unknown observer")
        obs_class[obs_reason != 0] = -1
        research = pc.equal(o["quality_grade"], "research").fill_null(False).to_numpy(zero_copy_only=False)
        # Columns done with are let go as soon as they are (lower peak memory, fewer fresh pages to touch).
        tables.observations = o = o.drop_columns(["taxon_id", "quality_grade"])
        del obs_taxon
        laps.lap("observations")
        photo_obs = joined.result()
    p = tables.photos
    laps.lap("join by uuid")
    tables.photos = p = p.drop_columns(["observation_uuid"])  # not needed again: free it
    pa.default_memory_pool().release_unused()
    orphan = photo_obs < 0
    audit.add("photo without observation", photos=int(orphan.sum()))
    photos_per_obs = np.bincount(photo_obs[~orphan], minlength=len(obs_class)).astype(np.float64)

    _apply_inclusion(taxa, obs_class, obs_reason, research, photos_per_obs, rules)
    if rules.research_only:
        obs_reason[(obs_reason == 0) & ~research] = _REASONS.index("not research grade")
        obs_class[obs_reason != 0] = -1
    reason_observations = np.bincount(obs_reason, minlength=len(_REASONS))
    reason_photos = np.bincount(obs_reason, weights=photos_per_obs, minlength=len(_REASONS))
    del photos_per_obs, research, unknown_observer
    for code in np.flatnonzero(reason_observations[1:]) + 1:
        audit.add(_REASONS[code], observations=int(reason_observations[code]), photos=int(reason_photos[code]))

    laps.lap("join")
    # Photos per observation: the first (or a random one), or up to N spread over observations.
    keep_photo = ~orphan & (obs_class[np.maximum(photo_obs, 0)] >= 0)
    cand = np.flatnonzero(keep_photo)
    del keep_photo, orphan
    if rules.photo_choice is PhotoChoice.RANDOM:
        order_key = random_keys(sample_rng, len(cand))
    else:  # by position, ties in the table's order
        order_key = _take_numbers(p["position"], cand, 0)
    if rules.photos_per_observation == 1:
        extra, rank_in_obs = ~first_within_groups(photo_obs[cand], order_key), None
    else:
        rank_in_obs = rank_within_groups(photo_obs[cand], order_key)
        extra = rank_in_obs >= rules.photos_per_observation
        rank_in_obs = rank_in_obs[~extra]
    audit.add("photos per observation", photos=int(extra.sum()))
    cand = cand[~extra]
    cand_obs = photo_obs[cand]
    cand_class_row = obs_class[cand_obs]
    tables.photos = p = p.drop_columns(["position"])
    del order_key

    laps.lap("photos per observation")
    # Compact indices for classes and observers.
    class_rows, cand_class = _unique_inverse(cand_class_row)
    observer_ids, cand_observer = _unique_inverse(obs_observer[cand_obs])
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
    laps.lap("splits")
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

    # Quotas: val exactly val_per_class, train capped (spread over observations), test whole or capped.
    key = random_keys(sample_rng, len(cand)).astype(np.int64)
    is_val = in_kept & (image_split == Split.VAL)
    is_train = in_kept & (image_split == Split.TRAIN)
    is_test = in_kept & (image_split == Split.TEST)
    if rules.test_per_class is not None:
        chosen = _within_quota(cand_class, is_test, key, rules.test_per_class, len(class_rows))
        audit.add("test images beyond the per-class quota", photos=int(is_test.sum() - chosen.sum()))
    else:
        chosen = is_test
    if rules.val_per_class is not None:
        val_pick = _within_quota(cand_class, is_val, key, rules.val_per_class, len(class_rows))
        chosen |= val_pick
        audit.add("val images beyond the per-class quota", photos=int(is_val.sum() - val_pick.sum()))
    else:
        chosen |= is_val
    if rules.max_train is not None:
        # Spread over observations: an observation's second photo only after every observation's first.
        spread = key if rank_in_obs is None else (rank_in_obs << 32) | key
        train_pick = _within_quota(cand_class, is_train, spread, rules.max_train, len(class_rows))
        chosen |= train_pick
        audit.add("train images above max_train", photos=int(is_train.sum() - train_pick.sum()))
    else:
        chosen |= is_train
    del key, is_val, is_train, is_test, in_kept

    laps.lap("quotas")
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
    # Taken in row order (several times faster than in a random order), then put in the release order.
    photo_id = _take_numbers(p["photo_id"], photo_rows)
    width, height = _fit(
        _take_numbers(p["width"], photo_rows, 0), _take_numbers(p["height"], photo_rows, 0), rules.max_image_side
    )
    extensions = p["extension"].take(pa.array(photo_rows)) if images else None
    names = release_names(rules)
    out.mkdir(parents=True, exist_ok=True)
    # What the release files need from the export is taken in a second thread, beside the image order.
    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        gathered = helper.submit(_ImageColumns.gather, p, o, photo_rows, photo_obs[photo_rows])
        # Image ids: train by category, then val by category, then test in a random order (ids leak no label).
        test_shuffle = random_keys(sample_rng, len(sel))
        order = _release_order(sel_split, sel_category, test_shuffle, photo_id)
        del sel, test_shuffle
        sel_split, sel_category, photo_id, width, height = (
            a[order] for a in (sel_split, sel_category, photo_id, width, height)
        )
        columns = gathered.result()
    # Everything the release needs from the export's photos and observations is taken: let their memory go.
    tables.photos, tables.observations = p.slice(0, 0), o.slice(0, 0)
    del p, o, t, photo_obs
    pa.default_memory_pool().release_unused()
    columns = columns[order]
    name_args = (rules, names, cat_frame, sel_split, sel_category, photo_id)
    # Without images the names are only needed as JSON text: made so at once when nothing needs escaping.
    name_text = None if images else _file_names(*name_args, quoted=True)
    file_names = _file_names(*name_args) if name_text is None else None
    laps.lap("categories, order and file names")

    if images:
        extension = np.asarray(pc.utf8_lower(extensions.take(pa.array(order))).to_numpy(zero_copy_only=False))
        file_names = file_names.to_pylist()
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
            sel_split, photo_id, width, height = (a[ok] for a in (sel_split, photo_id, width, height))
            columns = columns[ok]
            sel_category = remap[sel_category[ok]]
            if broken.any():  # file names carry category ids in some layouts: move the files
                new_names = _file_names(rules, names, cat_frame, sel_split, sel_category, photo_id).to_pylist()
                for old, new in zip(np.asarray(file_names)[ok], new_names):
                    if old != new:
                        os.makedirs(os.path.dirname(out / new), exist_ok=True)
                        os.replace(out / old, out / new)
                file_names = new_names
            else:
                file_names = list(np.asarray(file_names, dtype=object)[ok])
        file_names = pa.array(file_names, pa.string())

    laps.lap("images")
    result = _write_release(
        out=out,
        rules=rules,
        names=names,
        cat_frame=cat_frame,
        observers=tables.observers,
        columns=columns,
        photo_id=photo_id,
        split=sel_split,
        category=sel_category,
        width=width,
        height=height,
        file_names=file_names,
        file_name_text=name_text,
        seed=sample_seed,
        audit=audit,
        laps=laps,
    )
    laps.log()
    _logger.info("built %s in %.1fs: %d classes, %s", out, time.perf_counter() - start, result.classes, result.images)
    return result


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


def _take_numbers(column: pa.ChunkedArray, rows: np.ndarray, fill: float | None = None) -> np.ndarray:
    """``column[rows]`` as NumPy, nulls replaced by ``fill`` (without one, as ``to_numpy`` gives them: NaN)."""
    taken = column.take(pa.array(rows))
    return (taken if fill is None else taken.fill_null(fill)).to_numpy()


class _Gather:
    """Values of export columns at given rows, in the rows' order, read in ascending row order.

    Arrow's take and NumPy's indexing are several times faster on ascending rows (the column is read front
    to back) than on rows in a random order: so the rows are sorted, taken, and the small result put back
    in their order.
    """

    def __init__(self, rows: np.ndarray) -> None:
        if len(rows) < 2 or (rows[1:] >= rows[:-1]).all():
            self.rows, self.back = rows, None
        else:
            self.rows, ascending = sort_with_order(rows)
            self.back = np.empty_like(ascending)
            self.back[ascending] = np.arange(len(rows))

    def numbers(self, column: pa.ChunkedArray, fill: float | None = None) -> np.ndarray:
        values = _take_numbers(column, self.rows, fill)
        return values if self.back is None else values[self.back]

    def strings(self, column: pa.ChunkedArray) -> pa.Array:
        values = column.take(pa.array(self.rows)).combine_chunks()
        return values if self.back is None else _take_strings(values, self.back)

    def encoded(self, column: pa.ChunkedArray, fill: str | None = None) -> tuple[pa.Array, np.ndarray]:
        """The distinct values and each row's index into them (a null: one past the last, unless ``fill``)."""
        values = column.take(pa.array(self.rows)).combine_chunks()
        encoded = pc.dictionary_encode(values if fill is None else values.fill_null(fill))
        indices = encoded.indices.fill_null(len(encoded.dictionary)).to_numpy().astype(np.int64)
        return encoded.dictionary, indices if self.back is None else indices[self.back]


def _take_strings(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values.take(rows)``; for uuids (36 bytes each) as NumPy copies of fixed-width items, several times faster."""
    layout = _uuid_layout(values)
    if layout is None:
        return values.take(pa.array(rows))
    n, first, buffer = layout
    data = np.take(np.ndarray(shape=(n, 9), dtype=np.uint32, buffer=buffer, offset=first), rows, axis=0)
    offsets = np.arange(0, 36 * len(rows) + 1, 36, dtype=np.int32)
    return pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(data))


@dataclasses.dataclass
class _ImageColumns:
    """What the release files need from the export about each selected image; indexing selects and reorders.

    Text with few distinct values (licenses, dates) is held as the distinct values and an index into them
    (one past the last for a null).
    """

    license_values: pa.Array
    license: np.ndarray
    observer_id: np.ndarray
    date_values: pa.Array
    date: np.ndarray
    observation_uuid: pa.Array
    latitude: np.ndarray
    longitude: np.ndarray
    accuracy: np.ndarray

    @classmethod
    def gather(
        cls, photos: pa.Table, observations: pa.Table, photo_rows: np.ndarray, obs_rows: np.ndarray
    ) -> _ImageColumns:
        by_photo, by_obs = _Gather(photo_rows), _Gather(obs_rows)
        license_values, license_index = by_photo.encoded(photos["license"], fill="")
        date_values, date_index = by_obs.encoded(observations["observed_on"])
        return cls(
            license_values=license_values,
            license=license_index,
            observer_id=by_obs.numbers(observations["observer_id"]),
            date_values=date_values,
            date=date_index,
            observation_uuid=by_obs.strings(observations["observation_uuid"]),
            latitude=by_obs.numbers(observations["latitude"]),
            longitude=by_obs.numbers(observations["longitude"]),
            accuracy=by_obs.numbers(observations["positional_accuracy"]),
        )

    def __getitem__(self, rows: np.ndarray) -> _ImageColumns:
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        return dataclasses.replace(
            self,
            license=self.license[rows],
            observer_id=self.observer_id[rows],
            date=self.date[rows],
            observation_uuid=_take_strings(self.observation_uuid, rows),
            latitude=self.latitude[rows],
            longitude=self.longitude[rows],
            accuracy=self.accuracy[rows],
        )


def _release_order(split: np.ndarray, category: np.ndarray, shuffle: np.ndarray, photo_id: np.ndarray) -> np.ndarray:
    """Train and val by (split, category) then photo id, then test by its shuffle key (ties, rare with
    :func:`random_keys`, by position): :func:`lexsort_by_group` and :func:`stable_argsort`."""
    test = split == Split.TEST
    rest, tested = np.flatnonzero(~test), np.flatnonzero(test)
    span = int(np.max(category, initial=0)) + 1
    order_rest = lexsort_by_group(split[rest].astype(np.int64) * span + category[rest], photo_id[rest])
    order_test = stable_argsort(shuffle[tested])
    return np.concatenate([rest[order_rest], tested[order_test]])


def _file_names(
    rules: BuildRules,
    names: dict[str, str],
    cat_frame: pd.DataFrame,
    split: np.ndarray,
    category: np.ndarray,
    photo_id: np.ndarray,
    *,
    quoted: bool = False,
) -> pa.Array | None:
    """Release-layout file names of the selected images (image files are named by photo id).

    With ``quoted``, the names as JSON string literals, or None when some part of them would need escaping.
    """
    if rules.preset is Preset.INAT2021:
        class_dir = _dir_names(cat_frame)
    elif rules.preset is Preset.INAT2017:
        class_dir = (cat_frame["supercategory"] + "/" + cat_frame["name"].str.replace(" ", "_")).tolist()
    else:
        class_dir = (cat_frame["supercategory"] + "/" + pd.Series(np.arange(len(cat_frame))).astype(str)).tolist()
    folders = [names["train_dir"], names["val_dir"], names["test_dir"]]
    class_text = pa.array(class_dir, pa.string())
    if quoted and (_needs_escape(pa.array(folders)) or _needs_escape(class_text)):
        return None
    quote = '"' if quoted else ""
    stem = pc.cast(pa.array(photo_id, pa.int64()), pa.string())
    # Joined run by run of one split (one run each in the release order): the folder is the same along a run.
    starts = np.flatnonzero(np.r_[True, split[1:] != split[:-1]]) if len(split) else np.zeros(0, np.int64)
    parts = []
    for start, end in zip(starts, [*starts[1:], len(split)]):
        folder = folders[int(split[start])]
        if split[start] == Split.TEST:
            parts.append(pc.binary_join_element_wise(f"{quote}{folder}/", stem[start:end], f".jpg{quote}", ""))
        else:
            prefix = pc.binary_join_element_wise(f"{quote}{folder}/", class_text, "/", "")
            parts.append(
                pc.binary_join_element_wise(
                    prefix.take(pa.array(category[start:end])), stem[start:end], f".jpg{quote}", ""
                )
            )
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def _dir_names(cat_frame: pd.DataFrame) -> list[str]:
    """2021 image_dir_name: ``07468_Plantae_Tracheophyta_…_Genus_epithet``."""
    epithet = [n.split(" ", 1)[1].replace(" ", "_") if " " in n else "" for n in cat_frame["name"]]
    return [
        "_".join([f"{i:05d}", *(str(row[r]).replace(" ", "_") for r in _RANKS), e]).rstrip("_")
        for i, (row, e) in enumerate(zip(cat_frame.to_dict("records"), epithet))
    ]


def _category_records(rules: BuildRules, cat_frame: pd.DataFrame) -> list[dict]:
    columns = {c: cat_frame[c].tolist() for c in ("name", "supercategory", *_RANKS)}
    dir_names = _dir_names(cat_frame) if rules.preset is Preset.INAT2021 else None
    records = []
    for i in range(len(cat_frame)):
        name = columns["name"][i]
        record: dict = {"id": i, "name": name}
        if rules.preset is Preset.INAT2021:
            record["common_name"] = name
        record["supercategory"] = columns["supercategory"][i]
        if rules.preset is not Preset.INAT2017:
            record.update({rank: columns[rank][i] for rank in _RANKS})
        if dir_names is not None:
            record["specific_epithet"] = name.split(" ", 1)[1] if " " in name else ""
            record["image_dir_name"] = dir_names[i]
        records.append(record)
    return records


def _compact_json(obj: object) -> bytes:
    """Compact JSON text of a small object, as :func:`inatcomp.formats.write_json` writes it."""
    import orjson

    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_numbers(values: np.ndarray | pa.Array | pa.ChunkedArray, before: str = "") -> pa.Array:
    """Numbers as JSON text (shortest round-trip form for floats), each after ``before``; null, NaN, ±inf: ``null``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and len(values) > 1 << 12:
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high < 1 << 16:  # few distinct values: each written once, then looked up
            table = pc.cast(pa.array(np.arange(high + 1)), pa.string())
            return (pc.binary_join_element_wise(before, table, "") if before else table).take(pa.array(values))
    array = pa.array(values) if isinstance(values, np.ndarray) else values
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_floating(array.type):
        array = pc.if_else(pc.is_finite(array), array, pa.scalar(None, array.type))
    text = pc.cast(array, pa.string()).fill_null("null")
    return pc.binary_join_element_wise(before, text, "") if before else text


def _json_pairs(first: np.ndarray, second: np.ndarray, template: tuple[str, str, str]) -> pa.Array:
    """``template[0] + first + template[1] + second + template[2]`` per row, small non-negative integers."""
    span = int(second.max(initial=0)) + 1
    code = first.astype(np.int64) * span + second
    if len(code) and (first.min() < 0 or second.min() < 0 or code.max() >= _DENSE_IDS):
        return pc.binary_join_element_wise(
            template[0], _json_numbers(first), template[1], _json_numbers(second), template[2], ""
        )
    distinct, inverse = _unique_inverse(code)
    table = pc.binary_join_element_wise(
        template[0], _json_numbers(distinct // span), template[1], _json_numbers(distinct % span), template[2], ""
    )
    return table.take(pa.array(inverse))


def _needs_escape(array: pa.Array) -> bool:
    """Whether some value of a string array holds a character JSON escapes (``"``, ``\\``, control characters)."""
    if len(array) == 0:
        return False
    _, offset_buffer, data = array.buffers()
    if data is None:
        return False
    offsets = np.frombuffer(offset_buffer, dtype=np.int32, count=len(array) + 1, offset=array.offset * 4)
    text = np.frombuffer(data, dtype=np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0]))
    return bool(((text < 0x20) | (text == 0x22) | (text == 0x5C) | (text == 0x7F)).any())


def _json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strings as JSON string literals (quoted and escaped as orjson does); null as ``null``."""
    import orjson

    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if _needs_escape(array):
        encoded = pc.dictionary_encode(array)
        dictionary = [orjson.dumps(v).decode("utf-8") for v in encoded.dictionary.to_pylist()]
        quoted = pa.array(dictionary, pa.string()).take(encoded.indices)
    else:
        quoted = pc.binary_join_element_wise('"', array, '"', "")
    return quoted.fill_null("null")


def _json_records(pieces: list[str | pa.Array], rows: np.ndarray, *, block: int = 1 << 16) -> Iterator[bytes]:
    """The given rows' records, comma-separated: each the concatenation of ``pieces`` (text, or per-row text).

    Yielded a block of rows at a time, so that a file can be written without holding all its text; rows in
    one run (a split, in the release order) are sliced from the texts rather than copied.
    """
    run = len(rows) > 0 and int(rows[-1]) - int(rows[0]) == len(rows) - 1
    for first in range(0, len(rows), block):
        take = None if run else pa.array(rows[first : first + block])
        count = min(block, len(rows) - first)
        columns = [
            piece if isinstance(piece, str) else (piece.slice(int(rows[0]) + first, count) if run else piece.take(take))
            for piece in pieces
        ]
        records = pc.binary_join_element_wise(*columns, ",", "")
        offsets = np.frombuffer(records.buffers()[1], dtype=np.int32, count=len(records) + 1, offset=records.offset * 4)
        last = first + block >= len(rows)  # no comma after the last record
        yield memoryview(records.buffers()[2])[offsets[0] : offsets[-1] - last]


def _rights_holders(observers: pa.Table, keys: np.ndarray) -> pa.Array:
    """Each observer's name, or its login when the name is empty; '' when unknown, the last row for a repeated id."""
    ids = observers["observer_id"].to_numpy()
    name = observers["name"].fill_null("")
    holder = pc.if_else(pc.equal(name, ""), observers["login"], name).combine_chunks()
    known, last_reversed = np.unique(ids[::-1], return_index=True)
    at = np.searchsorted(known, keys).clip(0, max(len(known) - 1, 0))
    found = known[at] == keys if len(known) else np.zeros(len(keys), bool)
    rows = np.where(found, len(ids) - 1 - last_reversed[at] if len(known) else 0, 0)
    return pc.if_else(pa.array(found), holder.take(pa.array(rows)) if len(ids) else "", "")


def _write_release(
    *,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    cat_frame: pd.DataFrame,
    observers: pa.Table,
    columns: _ImageColumns,
    photo_id: np.ndarray,
    split: np.ndarray,
    category: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    file_names: pa.Array | None,
    file_name_text: pa.Array | None,
    seed: int,
    audit: _Audit,
    laps: _Laps,
) -> BuildResult:
    """Write every release file, the organizer's files, the audit and the statistics.

    The files are written by two threads (Arrow's kernels, NumPy and file writes release the GIL for long
    stretches), which also re-read what they wrote for the leakage check: first the organizer's files and
    the statistics, while this thread makes the JSON texts, then the JSON files.
    """
    n = len(photo_id)
    image_ids = np.arange(n, dtype=np.int64)
    license_names = sorted(columns.license_values.to_pylist())
    license_id = {name: i + 1 for i, name in enumerate(license_names)}
    licenses = [{"id": license_id[nm], "name": nm, "url": _LICENSE_URLS.get(nm, "")} for nm in license_names]
    license_of_image = np.array([license_id[nm] for nm in columns.license_values.to_pylist()] or [0])[columns.license]
    observer_ids = columns.observer_id
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

    parts = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}
    # Organizer's files: the hidden solution, a sample submission, the provenance of every image.
    test_idx = np.flatnonzero(split == Split.TEST)
    rng = np.random.default_rng([seed, 19])
    private = rng.random(len(test_idx)) < rules.private_fraction
    labels = _LABELS.get(rules.year, 5)
    header = ["Id", "Predicted"] if is_2021 else ["id", "predicted"]
    sample_labels = " ".join(str(k) for k in range(min(labels, max(len(categories), 1))))
    csv_files = {
        "solution.csv": {
            "id": image_ids[test_idx],
            "expected": category[test_idx],
            "usage": pa.array(["Public", "Private"]).take(pa.array(private.astype(np.int8))),
        },
        "sample_submission.csv": {
            header[0]: image_ids[test_idx],
            header[1]: pa.array([sample_labels]).take(pa.array(np.zeros(len(test_idx), np.int8))),
        },
    }
    provenance = {
        "image_id": image_ids,
        "split": pa.array(["train", "val", "test"]).take(pa.array(split)),
        "photo_id": photo_id,
        "observation_uuid": columns.observation_uuid,
        "observer_id": observer_ids,
        "taxon_id": cat_frame["taxon_id"].to_numpy()[category],
    }

    def write_provenance() -> tuple[dict[str, int], np.ndarray]:
        formats.write_csv_columns(out / "provenance.csv", provenance)
        return _provenance_leakage(out / "provenance.csv")

    def stats_and_plot() -> tuple[dict, dict]:
        per_split = {s: len(_sorted_unique(observer_ids[split == c])) for s, c in parts.items()}
        stats = _stats(cat_frame, category, split, sizes)
        _long_tail_plot(out / "long_tail.png", category, split, len(categories))
        return stats, per_split

    sizes, mini = {}, None
    for part, code in parts.items():
        sizes[part] = int((split == code).sum())
        if part == "train" and rules.train_mini_per_class:
            idx = np.flatnonzero(split == code)
            rng = np.random.default_rng([seed, 17])
            mini = idx[rank_within_groups(category[idx], random_keys(rng, len(idx))) < rules.train_mini_per_class]
            sizes["train_mini"] = len(mini)
    pool = concurrent.futures.ThreadPoolExecutor(_WRITE_THREADS)
    try:
        # The organizer's files need no JSON text: written (the provenance re-read) while the texts are made.
        provenance_done = pool.submit(write_provenance)
        csv_done = [pool.submit(formats.write_csv_columns, out / name, cols) for name, cols in csv_files.items()]
        stats_done = pool.submit(stats_and_plot)
        result = _write_json_files(
            pool=pool, out=out, rules=rules, names=names, columns=columns, observers=observers, info=info,
            licenses=licenses, license_of_image=license_of_image, categories=categories, image_ids=image_ids,
            split=split, category=category, width=width, height=height, mini=mini,
            file_name_text=_json_strings(file_names) if file_name_text is None else file_name_text,
            laps=laps,
        )  # fmt: skip
        leakage, split_of = provenance_done.result()
        for future in csv_done:
            future.result()
        stats, observers_per_split = stats_done.result()
    finally:
        pool.shutdown(cancel_futures=True)
    leakage["json_images_not_in_provenance_split"] = _json_mismatches(result, split_of)
    laps.lap("release files and leakage check")
    audit_dict = {
        "rules": {k: (v.value if hasattr(v, "value") else v) for k, v in dataclasses.asdict(rules).items()},
        "removed": audit.as_dict(),
        "classes": len(categories),
        "images": sizes,
        "observers": observers_per_split,
        "leakage": leakage,
    }
    formats.write_json(out / "audit.json", audit_dict, indent=2)
    formats.write_atomic(out / "audit.md", _audit_markdown(audit_dict))
    formats.write_json(out / "stats.json", stats, indent=2)
    formats.write_atomic(out / "stats.md", _stats_markdown(stats))
    laps.lap("stats and audit")
    if any(leakage.values()):
        raise RuntimeError(f"leakage found in the written files: {leakage}")  # a bug, never an input problem
    return BuildResult(classes=len(categories), images=sizes, audit=audit_dict, out=out)


def _write_json_files(
    *,
    pool: concurrent.futures.Executor,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    columns: _ImageColumns,
    observers: pa.Table,
    info: dict,
    licenses: list[dict],
    license_of_image: np.ndarray,
    categories: list[dict],
    image_ids: np.ndarray,
    split: np.ndarray,
    category: np.ndarray,
    width: np.ndarray,
    height: np.ndarray,
    file_name_text: pa.Array,
    mini: np.ndarray | None,
    laps: _Laps,
) -> dict[str, np.ndarray]:
    """Write the dataset JSON files (and locations, categories) through ``pool``; re-read the split files' image ids.

    Every field is made JSON text once; the records of a file are joined from them with Arrow, in blocks.

    Returns:
        The image ids read back from the train, val and test files.
    """
    is_2021 = rules.preset is Preset.INAT2021
    observer_ids = columns.observer_id
    # Each piece of a record carries the key before its value (keys are joined to a few distinct values once).
    observer_keys, observer_of_image = _unique_inverse(observer_ids)
    holder_text = _json_strings(_rights_holders(observers, observer_keys))
    by_observer = pa.array(observer_of_image)
    id_text = _json_numbers(image_ids)
    image_pieces = [
        '{"id":',
        id_text,
        _json_pairs(width, height, (',"width":', ',"height":', ',"file_name":')),
        file_name_text,
        _json_numbers(license_of_image, ',"license":'),
        pc.binary_join_element_wise(',"rights_holder":', holder_text, "").take(by_observer),
    ]
    need_locations = is_2021 or "train_locations" in names
    if need_locations:
        lat_text = _json_numbers(columns.latitude)
        lon_text = _json_numbers(columns.longitude)
        dates = columns.date_values
        date_text = _json_strings(pc.if_else(pc.equal(dates, ""), pa.scalar(None, pa.string()), dates))
        date_text = pa.concat_arrays([date_text, pa.array(["null"])])
        date_index = pa.array(columns.date)
    if is_2021:
        acc = pa.array(columns.accuracy)
        finite = pc.is_finite(acc)
        acc_int = pc.if_else(finite, pc.trunc(pc.if_else(finite, acc, 0.0)), pa.scalar(None, pa.float64()))
        image_pieces += [
            pc.binary_join_element_wise(',"date":', date_text, "").take(date_index),
            ',"latitude":',
            lat_text,
            ',"longitude":',
            lon_text,
            _json_numbers(acc_int.cast(pa.int64(), safe=False), ',"location_uncertainty":'),
        ]
    image_pieces.append("}")
    annotation_pieces = ['{"id":', id_text, ',"image_id":', id_text, _json_numbers(category, ',"category_id":'), "}"]
    if "train_locations" in names:
        location_pieces = [
            '{"id":',
            id_text,
            ',"lat":',
            lat_text,
            ',"lon":',
            lon_text,
            _json_numbers(observer_keys, ',"user_id":').take(by_observer),
            pc.binary_join_element_wise(',"date":', date_text, "}", "").take(date_index),
        ]
    info_text, licenses_text_json, categories_text = (_compact_json(x) for x in (info, licenses, categories))

    def locations_json(idx: np.ndarray) -> Iterator[bytes]:
        yield b"["
        yield from _json_records(location_pieces, idx)
        yield b"]"

    def dataset_json(idx: np.ndarray, test: bool) -> Iterator[bytes]:
        yield from (b'{"info":', info_text, b',"images":[')
        yield from _json_records(image_pieces, idx)
        yield from (b'],"licenses":', licenses_text_json, b',"categories":', categories_text)
        if not test:
            yield b',"annotations":['
            yield from _json_records(annotation_pieces, idx)
            yield b"]"
        yield b"}"

    # What the threads write: each a path and its content; the split files are re-read for their image ids.
    writes: list[tuple[Path, Callable[[], Iterable[bytes] | bytes], bool]] = []
    parts = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}
    for part, code in parts.items():
        idx = np.flatnonzero(split == code)
        writes.append((out / names[part], functools.partial(dataset_json, idx, code == Split.TEST), True))
        if f"{part}_locations" in names:
            writes.append((out / names[f"{part}_locations"], functools.partial(locations_json, idx), False))
        if part == "train" and mini is not None:
            writes.append((out / names["train_mini"], functools.partial(dataset_json, mini, False), False))
    writes.append((out / "categories.json", lambda: categories_text, False))

    def write(path: Path, make: Callable[[], Iterable[bytes] | bytes], reread: bool) -> np.ndarray | None:
        formats.write_atomic(path, make())
        return _json_image_ids(path) if reread else None

    laps.lap("release texts")
    done = {path.name: pool.submit(write, path, make, reread) for path, make, reread in writes}  # the biggest first
    read_back = {name: future.result() for name, future in done.items()}
    return {part: read_back[names[part]] for part in parts}


def check_leakage(out: str | os.PathLike, names: dict[str, str] | None = None) -> dict[str, int]:
    """Re-read the written provenance and JSON files and count observers, observations, photos in two splits.

    Also checks that every image id of the JSON files is in the provenance with the same split. The JSON
    files are scanned for their image ids directly in the text when they have the builder's compact layout
    (every image record starting with its ``id``), else parsed whole.
    """
    out = Path(out)
    result, split_of = _provenance_leakage(out / "provenance.csv")
    json_ids = {part: _json_image_ids(out / names[part]) for part in ("train", "val", "test")} if names else {}
    result["json_images_not_in_provenance_split"] = _json_mismatches(json_ids, split_of)
    return result


def _provenance_leakage(path: Path) -> tuple[dict[str, int], np.ndarray]:
    """Observers, observations and photos in two splits, read from a written ``provenance.csv``.

    Returns:
        The three counts, and the split code (0 train, 1 val, 2 test, 3 other) of every image id, -1 for
        ids that are not there.
    """
    import pyarrow.csv as pacsv

    types = {"image_id": pa.int64(), "photo_id": pa.int64(), "observer_id": pa.int64()}
    prov = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={**types, "observation_uuid": pa.string(), "split": pa.dictionary(pa.int32(), pa.string())},
            include_columns=[*types, "split", "observation_uuid"],
            strings_can_be_null=False,
        ),
    )
    codes = []
    for chunk in prov["split"].chunks:
        lookup = {"train": 0, "val": 1, "test": 2}
        table = np.array([lookup.get(v, 3) for v in chunk.dictionary.to_pylist()] or [3], dtype=np.int64)
        codes.append(table[chunk.indices.to_numpy(zero_copy_only=False)])
    split_code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    result = {}
    for what, column in (("observers", "observer_id"), ("observations", "observation_uuid"), ("photos", "photo_id")):
        result[f"{what}_in_two_splits"] = _in_two_splits(prov[column], split_code)
    image_ids = prov["image_id"].to_numpy()
    split_of = np.full(int(image_ids.max(initial=-1)) + 1, -1)
    split_of[image_ids] = split_code
    return result, split_of


def _json_mismatches(json_ids: dict[str, np.ndarray], split_of: np.ndarray) -> int:
    """Image ids of the train, val and test files that the provenance does not give the file's split."""
    mismatched = 0
    for code, part in enumerate(("train", "val", "test")):
        if part not in json_ids:
            continue
        ids = json_ids[part]
        known = (ids >= 0) & (ids < len(split_of))
        mismatched += int((~known).sum()) + int((split_of[ids[known]] != code).sum())
    return mismatched


def _in_two_splits(values: pa.ChunkedArray, split_code: np.ndarray) -> int:
    """How many distinct values occur with more than one split code."""
    array = values.combine_chunks()
    codes = _value_codes(array)
    pairs = _sorted_unique(codes * 4 + split_code)
    value_of_pair = pairs // 4
    return len(_sorted_unique(value_of_pair[1:][value_of_pair[1:] == value_of_pair[:-1]]))


def _value_codes(array: pa.Array) -> np.ndarray:
    """Integers equal exactly where the values are equal: the values themselves for integers, else codes."""
    if pa.types.is_integer(array.type) and not array.null_count:
        values = array.to_numpy().astype(np.int64)
        if len(values) == 0 or (values.min() >= -(1 << 60) and values.max() < 1 << 60):
            return values
        return _unique_inverse(values)[1]
    words = _uuid_words(array)
    if words is not None:  # uuids: grouped by a 64-bit hash, rows sharing a hash confirmed byte for byte
        ordered, order = sort_with_order(_uuid_key(words))
        same = ordered[1:] == ordered[:-1]
        first, second = order[:-1][same], order[1:][same]
        if all((w[first] == w[second]).all() for w in words):
            codes = np.empty(len(array), dtype=np.int64)
            codes[order] = np.cumsum(np.r_[True, ~same]) - 1
            return codes
    return pc.dictionary_encode(array).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (NumPy's hash-based unique is several times slower on big integer arrays)."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


_ID_KEY = np.frombuffer(b'"id":', dtype=np.uint8)
#: Bytes after an image record's ``{``: ``"id":``, a sign, at most 19 digits and the ``,`` after them.
_ID_WINDOW = 5 + 1 + 19 + 1


def _json_image_ids(path: Path) -> np.ndarray:
    """The ``id`` of every record of a dataset JSON's ``images``, read from the file's text.

    A JSON string cannot hold an unescaped ``"``, so in the compact layout the builder writes, the images
    array ends at the only ``],"licenses":`` and every ``{`` in it opens an image record whose first key is
    its integer ``id``: the ids are read there with NumPy. A file in any other layout (or with a ``{`` in
    some text) is parsed whole.
    """
    ids = None
    if path.stat().st_size:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as text:
            start = text.find(b'"images":[{"id":')
            end = text.rfind(b'],"licenses":')
            if 0 <= start < end:
                ids = _record_ids(text, start + len(b'"images":['), end)
    if ids is None:
        ids = np.fromiter((image["id"] for image in formats.read_json(path)["images"]), np.int64)
    return ids


def _record_ids(text: bytes | mmap.mmap, start: int, end: int) -> np.ndarray | None:
    """The ids ``{"id":N,`` of the records in ``text[start:end]``; None unless every ``{`` there opens one.

    Nothing returned refers to ``text`` (a memory map is closed after).
    """
    region = np.frombuffer(text, dtype=np.uint8, count=end - start, offset=start)
    opens = np.flatnonzero(region == ord("{"))
    if len(opens) == 0 or opens[-1] + 1 + _ID_WINDOW > len(region):
        return None
    window = np.lib.stride_tricks.as_strided(region, shape=(len(region) - _ID_WINDOW, _ID_WINDOW), strides=(1, 1))
    window = window[opens + 1]
    if not (window[:, :5] == _ID_KEY).all():
        return None
    number = window[:, 5:]
    negative = number[:, 0] == ord("-")
    is_digit = (number >= ord("0")) & (number <= ord("9"))
    is_digit[:, 0] |= negative
    length = np.argmin(is_digit, axis=1)  # the first byte after the digits (0 when all are digits)
    fits = (length > negative) & (length - negative <= 18)  # at least one digit, and no int64 overflow
    if not (fits & (number[np.arange(len(opens)), length] == ord(","))).all():
        return None
    value = np.zeros(len(opens), dtype=np.int64)
    for k in range(int(length.max())):
        digit = number[:, k].astype(np.int64) - ord("0")
        value = np.where((k < length) & (digit >= 0), value * 10 + digit, value)
    return np.where(negative, -value, value)


def _stats(cat_frame: pd.DataFrame, category: np.ndarray, split: np.ndarray, sizes: dict[str, int]) -> dict:
    supercat = cat_frame["supercategory"].to_numpy()
    names, of_class = (
        np.unique(supercat.astype(str), return_inverse=True)
        if len(supercat)
        else (np.zeros(0, str), np.zeros(0, np.int64))
    )
    classes = np.bincount(of_class, minlength=len(names))
    of_image = of_class[category] if len(category) else np.zeros(0, np.int64)
    per_split = {
        part: np.bincount(of_image[split == code], minlength=len(names))
        for part, code in (("train", 0), ("val", 1), ("test", 2))
    }
    rows = [
        {
            "supercategory": str(names[i]),
            "classes": int(classes[i]),
            **{part: int(counts[i]) for part, counts in per_split.items()},
        }
        for i in sorted(range(len(names)), key=lambda i: (-int(classes[i]), str(names[i])))
    ]
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
    """Train images per class, classes sorted by count, on a log scale: a PNG drawn with Pillow (fast to import)."""
    from PIL import Image, ImageDraw, ImageFont

    counts = np.sort(np.bincount(category[split == Split.TRAIN], minlength=n_classes))[::-1]
    width, height, left, right, top, bottom = 600, 350, 70, 20, 36, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=14)
    x0, x1, y0, y1 = left, width - right, height - bottom, top  # plot box: y0 is the bottom edge
    top_decade = max(1, int(np.ceil(np.log10(max(int(counts.max(initial=1)), 1) * 1.05))))
    n = max(len(counts), 1)

    def x_of(rank: np.ndarray | float) -> np.ndarray | float:
        return x0 + (np.asarray(rank, dtype=np.float64) - 1) / max(n - 1, 1) * (x1 - x0)

    def y_of(value: np.ndarray | float) -> np.ndarray | float:
        logs = np.log10(np.maximum(np.asarray(value, dtype=np.float64), 1))
        return y0 - logs / top_decade * (y0 - y1)

    for decade in range(top_decade + 1):
        y = float(y_of(10.0**decade))
        draw.line([(x0, y), (x1, y)], fill="#e6e6e6")
        draw.line([(x0 - 4, y), (x0, y)], fill="black")
        draw.text((x0 - 7, y), f"{10**decade:,}", fill="black", font=font, anchor="rm")
    step = max(1, 10 ** int(np.floor(np.log10(n))))
    step *= 5 if n / step > 8 else (2 if n / step > 4 else 1)
    for tick in range(0, n + 1, step):
        x = float(x_of(max(tick, 1)))
        draw.line([(x, y0), (x, y0 + 4)], fill="black")
        draw.text((x, y0 + 6), f"{tick:,}", fill="black", font=font, anchor="mt")
    if len(counts):
        # One point per pixel column (the largest count in it) keeps the curve's shape at any class count.
        columns = np.round(x_of(np.arange(1, len(counts) + 1))).astype(np.int64)
        starts = np.r_[0, np.flatnonzero(np.diff(columns)) + 1]
        xs = columns[starts].astype(np.float64)
        ys = y_of(counts[starts])
        if len(xs) == 1:
            draw.point((float(xs[0]), float(ys[0])), fill="#2a6f3f")
        else:
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill="#2a6f3f", width=2)
    draw.rectangle([x0, y1, x1, y0], outline="black")
    draw.text(((x0 + x1) / 2, 10), "Long tail of the train split", fill="black", font=title_font, anchor="mt")
    draw.text(((x0 + x1) / 2, height - 6), "class (sorted by train images)", fill="black", font=font, anchor="md")
    label = Image.new("RGB", (160, 16), "white")
    ImageDraw.Draw(label).text((80, 8), "train images", fill="black", font=font, anchor="mm")
    image.paste(label.rotate(90, expand=True), (4, int((y0 + y1) / 2) - 80))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    formats.write_atomic(path, buffer.getvalue())


def _prepare_out(out: Path, names: dict[str, str], *, overwrite: bool) -> None:
    """Refuse or clear a folder that already holds a finished release, so no stale file survives a rebuild."""
    finished = [out / names[key] for key in ("train", "val", "test") if (out / names[key]).exists()]
    if not finished:
        return
    if not overwrite:
        raise ValueError(f"{out}: already holds a release ({finished[0].name}); pass --overwrite to rebuild it")
    for key in ("train_dir", "val_dir", "test_dir"):
        shutil.rmtree(out / names[key], ignore_errors=True)
    for path in out.iterdir():
        if path.is_file():
            path.unlink()


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
