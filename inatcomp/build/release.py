"""The build's orchestration: :func:`build_dataset` runs the phases in order and writes the release files."""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from inatcomp.build.audit import _Audit, _json_mismatches, _write_audit
from inatcomp.build.categories import _category_frame, _category_records
from inatcomp.build.fetch import FetchReport, FetchSettings
from inatcomp.build.fetched import _choose_and_fetch, _warn_if_enlarged
from inatcomp.build.images import _write_images
from inatcomp.build.json_text import _release_texts, _write_json_files
from inatcomp.build.layout import _prepare_out, release_names
from inatcomp.build.organizer import _write_provenance, _write_sample_submission, _write_solution
from inatcomp.build.rules import BuildRules, Split
from inatcomp.build.sampling import _split_sizes
from inatcomp.build.selection import _name_files, _select, _Selection
from inatcomp.build.source import ExportSource
from inatcomp.build.stats import _stats_and_plot, _write_stats

_logger = logging.getLogger(__name__)

#: Threads writing the release files.
_WRITE_THREADS = 2


@dataclasses.dataclass
class BuildResult:
    """Summary of a build: split sizes, classes and the audit."""

    classes: int
    images: dict[str, int]
    audit: dict
    out: Path


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
            import resource  # lazy: a Unix-only module, read only for --verbose's stage timings

            self.peak_mb[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def log(self) -> None:
        _logger.debug(
            "build stages (wall seconds, CPU seconds, peak MB so far):\n%s",
            "\n".join(
                f"{k:32s} {v:6.3f} {self.cpu[k]:6.3f} {self.peak_mb.get(k, 0):6.0f}" for k, v in self.seconds.items()
            ),
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
    fetch: FetchSettings | None = None,
    licenses: Sequence[str] | None = None,
    memory_limit: str | None = None,
    temp_dir: str | os.PathLike | None = None,
    in_memory: bool = False,
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
        fetch: Fetch the selected photos over HTTP into ``fetch.cache`` and read them there (else they are read
            from ``export_dir/photos``): see :mod:`inatcomp.build.fetched`.
        licenses: Keep only the photos under these licences (names as in the photos table, any case).
        memory_limit: What the build may use in all (e.g. ``'8GB'``; DuckDB's pool gets a share of it; default
            :func:`~inatcomp.build.engine.default_memory_limit`).
        temp_dir: Where DuckDB's database and spills go (default the system's temporary folder).
        in_memory: Read the tables whole into memory with pyarrow instead (the builder before the out-of-core
            engine, kept to prove both write the same files).

    Returns:
        Classes, images per split and the audit.

    Raises:
        ValueError: A malformed export (naming file, line and column), contradictory rules or fetch settings.
    """
    rules.check()
    start = time.perf_counter()
    export_dir, out = Path(export_dir), Path(out_dir)
    names = release_names(rules)
    if fetch is not None:
        fetch.check()
        _warn_if_enlarged(fetch.size, rules.max_image_side)
    _prepare_out(out, names, overwrite=overwrite)
    sample_seed = seed if resample_seed is None else resample_seed
    laps = _Laps()
    with ExportSource(
        export_dir, in_memory=in_memory, memory_limit=memory_limit, temp_dir=temp_dir, lap=laps.lap
    ) as source:
        licence_audit = _Audit()
        if licenses:
            source.keep_licenses(licenses, licence_audit)
        out.mkdir(parents=True, exist_ok=True)

        def choose(gone: set[int]) -> tuple[_Selection, _Audit]:
            audit = copy.deepcopy(licence_audit)
            selection = _choose(source, gone, rules, seed, sample_seed, audit, laps, images=images, names=names)
            return selection, audit

        fetch_report = None
        if fetch is not None and images:
            selection, audit, fetch_report = _choose_and_fetch(source, choose, fetch)
            photo_dir, size = Path(fetch.cache), fetch.size
        else:
            if fetch is not None:
                _logger.info("--no-images: no photo is fetched")
            selection, audit = choose(set())
            photo_dir, size = export_dir / "photos", None
        observers = source.observers
    if images:
        selection = _write_images(
            selection, photo_dir=photo_dir, size=size, out=out, rules=rules, names=names, workers=workers, audit=audit
        )
    laps.lap("images")
    result = _write_release(
        out=out,
        rules=rules,
        names=names,
        selection=selection,
        observers=observers,
        seed=sample_seed,
        audit=audit,
        laps=laps,
        fetch_report=fetch_report,
    )
    laps.log()
    _logger.info("built %s in %.1fs: %d classes, %s", out, time.perf_counter() - start, result.classes, result.images)
    return result


def _choose(
    source: ExportSource,
    gone: set[int],
    rules: BuildRules,
    seed: int,
    sample_seed: int,
    audit: _Audit,
    laps: _Laps,
    *,
    images: bool,
    names: dict[str, str],
) -> _Selection:
    """The phases from inclusion to the images' file names, on the export without ``gone``, with fresh generators.

    Fresh generators make a rerun (with fewer photos, after a fetch failed) the build of an export without those
    photos, whatever ran before.
    """
    rngs = (np.random.default_rng([seed, 11]), np.random.default_rng([sample_seed, 13]))
    tables, classified, photo_obs, candidates, splits, chosen = source.choose(rules, audit, rngs, gone)
    sample_rng = rngs[1]
    cat_frame, category_of_compact = _category_frame(
        classified.taxa, splits.class_rows, splits.supercategories, splits.kept
    )
    selection = _select(
        tables,
        photo_obs,
        candidates,
        splits,
        chosen,
        cat_frame=cat_frame,
        category_of_compact=category_of_compact,
        rules=rules,
        images=images,
        rng=sample_rng,
    )
    del classified, candidates, splits, chosen, photo_obs  # arrays as long as the candidates: let them go
    selection = _name_files(selection, rules, names, images=images)
    laps.lap("categories, order and file names")
    return selection


def _write_release(
    *,
    out: Path,
    rules: BuildRules,
    names: dict[str, str],
    selection: _Selection,
    observers: pa.Table,
    seed: int,
    audit: _Audit,
    laps: _Laps,
    fetch_report: FetchReport | None = None,
) -> BuildResult:
    """Write every release file, the organizer's files, the audit and the statistics.

    The files are written by two threads (Arrow's kernels, NumPy and file writes release the GIL for long
    stretches), which also re-read what they wrote for the leakage check: first the organizer's files and
    the statistics, while this thread makes the JSON texts, then the JSON files.
    """
    s = selection
    categories = _category_records(rules, s.cat_frame)
    test_ids = np.flatnonzero(s.split == Split.TEST)  # image ids are positions in the release order
    sizes, mini = _split_sizes(s.split, s.category, rules, seed)
    pool = concurrent.futures.ThreadPoolExecutor(_WRITE_THREADS)
    try:
        # The organizer's files need no JSON text: written (the provenance re-read) while the texts are made.
        provenance_done = pool.submit(_write_provenance, out / "provenance.csv", s)
        csv_done = [
            pool.submit(
                _write_solution,
                out / "solution.csv",
                rules=rules,
                seed=seed,
                test_ids=test_ids,
                expected=s.category[test_ids],
            ),
            pool.submit(
                _write_sample_submission,
                out / "sample_submission.csv",
                rules=rules,
                test_ids=test_ids,
                n_classes=len(categories),
            ),
        ]
        stats_done = pool.submit(_stats_and_plot, out, s.cat_frame, s.category, s.split, s.columns.observer_id, sizes)
        texts = _release_texts(rules=rules, names=names, selection=s, observers=observers, categories=categories)
        laps.lap("release texts")
        json_ids = _write_json_files(pool, out=out, names=names, texts=texts, split=s.split, mini=mini)
        leakage, split_of = provenance_done.result()
        for future in csv_done:
            future.result()
        stats, observers_per_split = stats_done.result()
    finally:
        pool.shutdown(cancel_futures=True)
    leakage["json_images_not_in_provenance_split"] = _json_mismatches(json_ids, split_of)
    laps.lap("release files and leakage check")
    audit_dict = _write_audit(
        out,
        rules=rules,
        audit=audit,
        classes=len(categories),
        sizes=sizes,
        observers=observers_per_split,
        leakage=leakage,
        fetch=fetch_report.as_dict() if fetch_report is not None else None,
    )
    _write_stats(out, stats)
    laps.lap("stats and audit")
    if any(leakage.values()):
        raise RuntimeError(f"leakage found in the written files: {leakage}")  # a bug, never an input problem
    return BuildResult(classes=len(categories), images=sizes, audit=audit_dict, out=out)
