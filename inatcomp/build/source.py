"""Where the selection rounds read the export: whole in memory (pyarrow) or out of core (DuckDB).

:class:`ExportSource` gives :func:`~inatcomp.build.release.build_dataset` one interface over both: the
``--licenses`` filter, the phases from the classes to the quotas (:meth:`ExportSource.choose`), run again without
photos a fetch found gone, and the look-ups the fetch report needs. Out of core (the default) only the chosen
photos' columns come back to Python; in memory (``in_memory=True``) is the builder before the engine, kept to
prove that both write the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.audit import _Audit
from inatcomp.build.engine import ExportEngine
from inatcomp.build.engine_sampling import sample_in_engine
from inatcomp.build.export import TABLE_COLUMNS, ExportTables, read_export
from inatcomp.build.fetched import _without
from inatcomp.build.inclusion import _classify
from inatcomp.build.licences import keep_licenses
from inatcomp.build.rules import BuildRules
from inatcomp.build.sampling import _apply_quotas, _photos_per_observation, _split_observers

__all__ = ["BUILD_COLUMNS", "ExportSource"]

#: The columns the builder reads from each export table (the photos' observer_id is the observation's).
BUILD_COLUMNS: dict[str, list[str]] = {
    table: [c for c in columns if (table, c) != ("photos", "observer_id")] for table, columns in TABLE_COLUMNS.items()
}


class ExportSource(contextlib.AbstractContextManager):
    """An export opened for the selection rounds of one build; a context manager (the engine's folder goes).

    Args:
        export_dir: The export folder.
        in_memory: Read the tables whole with pyarrow instead of the out-of-core engine.
        memory_limit: The engine's ``--memory-limit`` (e.g. ``'8GB'``).
        temp_dir: Where the engine's database and spills go.
        lap: Called with a stage name when a stage ends (the build's timings).
    """

    def __init__(
        self,
        export_dir: Path,
        *,
        in_memory: bool,
        memory_limit: str | None,
        temp_dir: Any,
        lap: Callable[[str], None],
    ) -> None:
        self.lap = lap
        self.engine: ExportEngine | None = None
        self.tables: ExportTables | None = None
        if in_memory:
            self.tables = read_export(export_dir, columns=BUILD_COLUMNS)
        else:
            self.engine = ExportEngine(export_dir, memory_limit=memory_limit, temp_dir=temp_dir)
            try:
                self.engine.load(BUILD_COLUMNS)
            except BaseException:
                self.engine.close()
                raise
        lap("read")
        self.observers: pa.Table | None = None if self.engine else self.tables.observers

    def __exit__(self, *exc: object) -> None:
        if self.engine is not None:
            self.engine.close()

    def keep_licenses(self, licenses: Sequence[str], audit: _Audit) -> None:
        """Leave out the photos under no licence of ``licenses`` (counted in ``audit``) for every round."""
        if self.engine is not None:
            self.engine.keep_licenses(licenses, audit)
        else:
            self.tables.photos = keep_licenses(self.tables.photos, licenses, audit)

    def known(self, photo_ids: set[int]) -> set[int]:
        """Which of ``photo_ids`` the export's photos table holds (under the kept licences)."""
        return set(self._photo_column(photo_ids, "photo_id", left_out_too=False).to_pylist())

    def observation_uuids(self, photo_ids: set[int]) -> pa.Array:
        """The observations of the given photos (one entry per photo row), left out of the rounds or not."""
        return self._photo_column(photo_ids, "observation_uuid", left_out_too=True)

    def _photo_column(self, photo_ids: set[int], column: str, *, left_out_too: bool) -> pa.Array:
        ids = pa.array(sorted(photo_ids), pa.int64())
        if self.engine is not None:
            return self.engine.photo_column(ids, column, left_out_too=left_out_too)
        photos = self.tables.photos  # without other licences; rounds leave gone photos out of a copy
        return photos.filter(pc.is_in(photos["photo_id"], value_set=ids))[column].combine_chunks()

    def choose(
        self,
        rules: BuildRules,
        audit: _Audit,
        rngs: tuple[np.random.Generator, np.random.Generator],
        gone: set[int],
    ) -> tuple[ExportTables, Any, np.ndarray, Any, Any, np.ndarray]:
        """The phases from the classes to the quotas, on the export without the photos in ``gone``.

        Returns:
            The tables holding what :func:`~inatcomp.build.selection._select` reads, the classes, each photo's
            observation row, the candidates, their splits and whether each is chosen.
        """
        if self.engine is not None:
            with self.engine.memory_errors(), self.engine.working():
                self.engine.leave_out(gone)
                tables, classified = self.engine.classify(rules, audit)
                self.observers = tables.observers
                self.lap("classes in the engine")
                candidates, splits, photo_rows, obs_rows = sample_in_engine(
                    self.engine.con, classified, rules, rngs, audit
                )
                self.lap("photos per observation, splits and quotas in the engine")
                tables, photo_obs = self.engine.selected_tables(tables, photo_rows, obs_rows)
            self.lap("chosen photos from the engine")
            return tables, classified, photo_obs, candidates, splits, np.ones(len(photo_rows), bool)
        split_rng, sample_rng = rngs
        tables = dataclasses.replace(self.tables, photos=_without(self.tables.photos, gone))
        classified = _classify(tables, rules, audit, self.lap)
        candidates = _photos_per_observation(tables, classified, rules, sample_rng, audit)
        self.lap("photos per observation")
        splits = _split_observers(classified, candidates, rules, split_rng, audit)
        self.lap("splits")
        chosen = _apply_quotas(splits, candidates, rules, sample_rng, audit)
        self.lap("quotas")
        return tables, classified, classified.photo_obs, candidates, splits, chosen
