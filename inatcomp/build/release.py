"""The build's orchestration: :func:`build_dataset` runs the phases in order and writes the release files."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from inatcomp.build.audit import _Audit, _json_mismatches, _write_audit
from inatcomp.build.categories import _category_frame, _category_records
from inatcomp.build.engine import ExportEngine
from inatcomp.build.export import TABLE_COLUMNS, read_export
from inatcomp.build.images import _write_images
from inatcomp.build.inclusion import _classify
from inatcomp.build.json_text import _release_texts, _write_json_files
from inatcomp.build.layout import _prepare_out, release_names
from inatcomp.build.organizer import _write_provenance, _write_sample_submission, _write_solution
from inatcomp.build.rules import BuildRules, Split
from inatcomp.build.sampling import _apply_quotas, _photos_per_observation, _split_observers, _split_sizes
from inatcomp.build.selection import _name_files, _select, _Selection
from inatcomp.build.stats import _stats_and_plot, _write_stats

_logger = logging.getLogger(__name__)

#: Threads writing the release files.
_WRITE_THREADS = 2
#: The columns the builder reads from each export table (the photos' observer_id is the observation's).
BUILD_COLUMNS: dict[str, list[str]] = {
    table: [c for c in columns if (table, c) != ("photos", "observer_id")] for table, columns in TABLE_COLUMNS.items()
}


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
    memory_limit: str | None = None,
    temp_dir: str | os.PathLike | None = None,
    in_memory: bool = False,
) -> BuildResult:
    """Build a challenge dataset from an observation export.

    The export is read out of core by DuckDB (:mod:`inatcomp.build.engine`, which says why DuckDB rather than
    Polars' streaming engine or Arrow's Acero: it reads gzip and Parquet with projection, spills its joins and
    aggregates to disk, and keeps the export's row order, which the seed contract needs).

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
        memory_limit: DuckDB's memory limit for reading the export (e.g. ``'8GB'``; default
            :func:`~inatcomp.build.engine.default_memory_limit`).
        temp_dir: Where DuckDB's database and spills go (default the system's temporary folder).
        in_memory: Read the tables whole into memory with pyarrow instead (the builder before the out-of-core
            engine, kept to prove both write the same files).

    Returns:
        Classes, images per split and the audit.

    Raises:
        ValueError: A malformed export (naming file, line and column) or contradictory rules.
    """
    rules.check()
    start = time.perf_counter()
    export_dir, out = Path(export_dir), Path(out_dir)
    names = release_names(rules)
    _prepare_out(out, names, overwrite=overwrite)
    sample_seed = seed if resample_seed is None else resample_seed
    split_rng = np.random.default_rng([seed, 11])
    sample_rng = np.random.default_rng([sample_seed, 13])
    audit = _Audit()
    laps = _Laps()
    tables, classified, photo_obs, candidates, splits, chosen = _choose(
        export_dir,
        rules,
        audit=audit,
        laps=laps,
        rngs=(split_rng, sample_rng),
        memory_limit=memory_limit,
        temp_dir=temp_dir,
        in_memory=in_memory,
    )
    cat_frame, category_of_compact = _category_frame(
        classified.taxa, splits.class_rows, splits.supercategories, splits.kept
    )
    out.mkdir(parents=True, exist_ok=True)
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
    del classified, candidates, splits, chosen, photo_obs  # arrays as long as the export's photos: let them go
    selection = _name_files(selection, rules, names, images=images)
    laps.lap("categories, order and file names")
    if images:
        selection = _write_images(
            selection, export_dir=export_dir, out=out, rules=rules, names=names, workers=workers, audit=audit
        )
    laps.lap("images")
    result = _write_release(
        out=out,
        rules=rules,
        names=names,
        selection=selection,
        observers=tables.observers,
        seed=sample_seed,
        audit=audit,
        laps=laps,
    )
    laps.log()
    _logger.info("built %s in %.1fs: %d classes, %s", out, time.perf_counter() - start, result.classes, result.images)
    return result


def _choose(
    export_dir: Path,
    rules: BuildRules,
    *,
    audit: _Audit,
    laps: _Laps,
    rngs: tuple[np.random.Generator, np.random.Generator],
    memory_limit: str | None,
    temp_dir: str | os.PathLike | None,
    in_memory: bool,
) -> tuple:
    """Read the export and choose the release's photos: classes, photos per observation, splits, quotas.

    Out of core (:class:`~inatcomp.build.engine.ExportEngine`) unless ``in_memory``; either way the same
    phases decide, in the same order of random draws.

    Returns:
        The tables holding what :func:`_select` reads, the classes, each photo's observation row, the
        candidates, their splits and whether each is chosen.
    """
    split_rng, sample_rng = rngs
    with contextlib.ExitStack() as stack:
        engine = None
        if in_memory:
            tables = read_export(export_dir, columns=BUILD_COLUMNS)
            laps.lap("read")
            classified, rows = _classify(tables, rules, audit, laps.lap), None
        else:
            engine = stack.enter_context(ExportEngine(export_dir, memory_limit=memory_limit, temp_dir=temp_dir))
            engine.load(BUILD_COLUMNS)
            laps.lap("read")
            with engine.memory_errors():
                tables, classified, rows = engine.classify(rules, audit)
            laps.lap("classes in the engine")
        candidates = _photos_per_observation(tables, classified, rules, sample_rng, audit)
        laps.lap("photos per observation")
        splits = _split_observers(classified, candidates, rules, split_rng, audit)
        laps.lap("splits")
        chosen = _apply_quotas(splits, candidates, rules, sample_rng, audit)
        laps.lap("quotas")
        photo_obs = classified.photo_obs
        if engine is not None:  # only the chosen photos' columns are read back
            with engine.memory_errors():
                tables, photo_obs, candidates = engine.selected_tables(tables, classified, candidates, chosen, rows)
            laps.lap("chosen photos from the engine")
    return tables, classified, photo_obs, candidates, splits, chosen


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
    )
    _write_stats(out, stats)
    laps.lap("stats and audit")
    if any(leakage.values()):
        raise RuntimeError(f"leakage found in the written files: {leakage}")  # a bug, never an input problem
    return BuildResult(classes=len(categories), images=sizes, audit=audit_dict, out=out)
