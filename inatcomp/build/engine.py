"""The export read out of core: DuckDB scans, filters, joins and aggregates the four tables on disk.

Why DuckDB (and not Polars' streaming engine or Arrow's Acero): it reads gzipped tab-separated text and
Parquet itself with column projection; its joins and aggregates spill to a temporary folder when they
pass ``memory_limit`` (Polars' streaming engine falls back to in-memory operators for some joins, Acero's
hash join does not spill); it keeps a scan's row order in the tables it creates (``preserve_insertion_order``),
which the build's seed contract needs (an export's photo rows draw their random keys in table order); and
it is one wheel without further dependencies.

The tables are loaded once (the used columns only, typed) into a database file in a fresh folder under
``temp_dir``; every table's ``rowid`` is then its row in the export file. What comes back to Python is
small or the selection's: the taxa and observers tables (small beside the others), per-class counts, the
(observer, class) pairs of the candidate photos with their counts (:mod:`inatcomp.build.engine_sampling`
samples in the database), and the chosen photos' release columns. The classes, reasons and audit counts are
those of :mod:`inatcomp.build.inclusion`, worked out per taxon in NumPy and applied per observation by SQL, so
the release is the in-memory builder's byte for byte.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from inatcomp.build.arrays import _unique_inverse
from inatcomp.build.audit import _Audit
from inatcomp.build.export import TABLE_COLUMNS, ExportTables, explain_table_error, find_table
from inatcomp.build.inclusion import _REASONS, _apply_inclusion, _Classified, _taxon_classes, _taxon_index
from inatcomp.build.licences import LICENCE_RULE, allowed_licences, warn_absent_licences
from inatcomp.build.rules import BuildRules

__all__ = [
    "DEFAULT_MEMORY_SHARE",
    "DUCKDB_SHARE",
    "RESTING_POOL_MB",
    "ExportEngine",
    "default_memory_limit",
    "parse_memory_limit",
    "typed_scan",
]

_logger = logging.getLogger(__name__)

#: Share of the machine's memory a build may use by default. The rest is for the operating system's file
#: cache of the export (read once, sequentially), other programs and headroom: 40 % of a 24 GB machine is
#: 9.6 GB, above the 8 GB at which a 100 M-observation build is to stay within 12 GB (BENCHMARKS.md, build-scale).
DEFAULT_MEMORY_SHARE = 0.4
#: Share of ``--memory-limit`` given to DuckDB's buffer pool (its ``memory_limit``). The rest covers what the
#: pool does not count (the text scanner's buffers, the database's own structures) and the build's arrays in
#: Python (the observer split's (observer, class) pairs, the selection and the release texts), so that the
#: process as a whole stays near the limit.
DUCKDB_SHARE = 0.4
#: DuckDB's buffer pool between selection rounds, in MiB (:meth:`ExportEngine.working`; at most its limit).
RESTING_POOL_MB = 64

_DUCKDB_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR", pa.bool_(): "BOOLEAN"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*$", re.IGNORECASE)


def default_memory_limit() -> int:
    """:data:`DEFAULT_MEMORY_SHARE` of this machine's physical memory, in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * DEFAULT_MEMORY_SHARE)


def parse_memory_limit(text: str) -> int:
    """A memory size such as ``8GB``, ``500MB`` or ``1.5GiB`` in bytes (KB, MB … powers of 1000, KiB … of 1024).

    Raises:
        ValueError: Not a number followed by B, KB, MB, GB or TB (or KiB … TiB).
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--memory-limit {text!r}: expected a number and a unit, e.g. 8GB or 500MB")
    number, unit, binary = match.groups()
    power = " KMGT".index(unit.upper() or " ")
    return int(float(number) * (1024 if binary else 1000) ** power)


class ExportEngine:
    """A DuckDB database in a fresh folder under ``temp_dir`` holding an export's used columns; a context manager.

    Args:
        export_dir: The export folder.
        memory_limit: DuckDB's ``memory_limit`` (e.g. ``'8GB'``); default :func:`default_memory_limit`.
        temp_dir: Where the database and the spills go (default the system's temporary folder).
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        *,
        memory_limit: str | None = None,
        temp_dir: str | os.PathLike | None = None,
    ) -> None:
        self.export_dir = Path(export_dir)
        if temp_dir is not None and not Path(temp_dir).is_dir():
            raise ValueError(f"--temp-dir {temp_dir}: no such folder (expected a folder for DuckDB's spills)")
        self.folder = Path(tempfile.mkdtemp(prefix="inatcomp-build-", dir=temp_dir))
        limit = parse_memory_limit(memory_limit) if memory_limit else default_memory_limit()
        self.limit_text = memory_limit or f"{limit / 2**30:.1f}GiB"
        # The text scanner's buffers are outside DuckDB's pool: at most 1/32 of the limit (DuckDB's default, 32 MB,
        # from a 1 GB limit on), at least 4 MB.
        self.scan_buffer = int(min(32 * 2**20, max(4 * 2**20, limit / 32)))
        config = {
            "memory_limit": f"{int(limit * DUCKDB_SHARE / 2**20)}MiB",
            "temp_directory": str(self.folder / "spill"),
            "threads": os.cpu_count() or 1,
            "preserve_insertion_order": True,  # each table's rowid is its row in the export file
        }
        self.pool_limit = config["memory_limit"]
        self.resting_limit = f"{min(RESTING_POOL_MB, int(limit * DUCKDB_SHARE / 2**20))}MiB"
        try:
            self.con = duckdb.connect(str(self.folder / "export.duckdb"), config=config)
            # The database is scratch, removed at close: writing it out at close cost 7.5 s at 10 M observations.
            self.con.execute("PRAGMA disable_checkpoint_on_shutdown")
        except duckdb.Error:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        _logger.info(
            "export engine: DuckDB %s, memory limit %s (DuckDB %s), spills in %s",
            duckdb.__version__,
            self.limit_text,
            config["memory_limit"],
            self.folder,
        )

    def __enter__(self) -> ExportEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database and remove its folder."""
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def load(self, columns: dict[str, list[str]]) -> None:
        """Copy the given columns of each table, typed, into the database (the gzip or Parquet is read once).

        Raises:
            ValueError: A table is missing, lacks a column or does not parse; the message names the file and line.
        """
        for table, wanted in columns.items():
            path = find_table(self.export_dir, table)
            query = typed_scan(self.con, path, table, wanted, buffer_size=self.scan_buffer)
            try:
                self.con.execute(f"CREATE TABLE {table} AS {query}")
            except duckdb.OutOfMemoryException as error:
                raise ValueError(
                    f"{path}: reading the {table} table needs more than --memory-limit {self.limit_text} "
                    f"({_first_line(error)}); raise --memory-limit"
                ) from error
            except duckdb.Error as error:
                raise explain_table_error(path, table, _first_line(error)) from error
            rows = self.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
            _logger.info("read %s: %d rows", path, rows)
        # Photo rows left out of every round: other licences, photos a fetch found gone.
        self.con.execute("CREATE TABLE left_out (photo_row BIGINT)")
        self.left_out: set[int] = set()

    def keep_licenses(self, licenses: Sequence[str], audit: _Audit) -> None:
        """Leave out the photos under none of ``licenses`` (compared without case or surrounding blanks).

        Raises:
            ValueError: No licence named.
        """
        allowed = allowed_licences(licenses)
        self.con.register("allowed_licences", pa.table({"name": allowed}))
        name = "upper(trim(coalesce(license, '')))"
        warn_absent_licences(
            allowed, (row[0] for row in self.con.execute(f"SELECT DISTINCT {name} FROM photos").fetchall())
        )
        self.con.execute(
            f"INSERT INTO left_out SELECT rowid FROM photos WHERE {name} NOT IN (SELECT name FROM allowed_licences)"
        )
        self.con.unregister("allowed_licences")
        removed = self.con.execute("SELECT count(*) FROM left_out").fetchall()[0][0]
        audit.add(LICENCE_RULE, photos=int(removed))

    def leave_out(self, photo_ids: set[int]) -> None:
        """Leave out the photos with these ids from the next :meth:`classify` on (those not left out already)."""
        new = sorted(photo_ids - self.left_out)
        if not new:
            return
        self.con.register("gone_ids", pa.table({"photo_id": pa.array(new, pa.int64())}))
        self.con.execute("INSERT INTO left_out SELECT p.rowid FROM photos p SEMI JOIN gone_ids g USING (photo_id)")
        self.con.unregister("gone_ids")
        self.left_out.update(new)

    def photo_column(self, photo_ids: pa.Array, column: str, *, left_out_too: bool) -> pa.Array:
        """``column`` of the photos with the given ids, in export order (with those left out or without them)."""
        self.con.register("wanted_ids", pa.table({"photo_id": photo_ids}))
        where = "" if left_out_too else "WHERE p.rowid NOT IN (SELECT photo_row FROM left_out) "
        result = self.arrow(
            f'SELECT p."{column}" FROM photos p SEMI JOIN wanted_ids w USING (photo_id) {where}ORDER BY p.rowid'
        )
        self.con.unregister("wanted_ids")
        return result[column].combine_chunks()

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """The buffer pool at its limit inside, then shrunk to :data:`RESTING_POOL_MB` (its pages go back).

        Between selection rounds the release is made in Python: shrinking the pool evicts the tables' cached
        pages (they are on disk) and DuckDB hands their memory back, so the engine's share and the release's
        are not both resident at the build's peak.
        """
        self.con.execute(f"SET memory_limit = '{self.pool_limit}'")
        try:
            yield
        finally:
            with contextlib.suppress(duckdb.Error):  # a pool that cannot shrink only costs memory
                self.con.execute(f"SET memory_limit = '{self.resting_limit}'")

    @contextlib.contextmanager
    def memory_errors(self) -> Iterator[None]:
        """Turn DuckDB's out-of-memory error into a one-line ValueError naming the limit."""
        try:
            yield
        except duckdb.OutOfMemoryException as error:
            raise ValueError(
                f"{self.export_dir}: the build needs more than --memory-limit {self.limit_text} "
                f"({_first_line(error)}); raise --memory-limit"
            ) from error

    def arrow(self, query: str) -> pa.Table:
        """The result of ``query`` as an Arrow table."""
        return self.con.sql(query).to_arrow_table()

    def classify(self, rules: BuildRules, audit: _Audit) -> tuple[ExportTables, _Classified]:
        """Every observation's class or reason (:mod:`inatcomp.build.inclusion`'s rules), worked out in the database.

        Leaves the tables ``obs`` (each observation's class, reason and observer) and ``photo_obs`` (each photo's
        observation and position) in the database for :func:`~inatcomp.build.engine_sampling.sample_in_engine`.

        Returns:
            Tables holding the taxa and the observers, and the taxa (the per-observation arrays stay empty: the
            classes are in the database).
        """
        taxa_table = _typed_table(self.arrow("SELECT * FROM taxa ORDER BY rowid"), "taxa")
        observers = _typed_table(self.arrow("SELECT * FROM observers ORDER BY rowid"), "observers")
        taxa = _taxon_index(taxa_table)
        taxon_class, taxon_reason = _taxon_classes(taxa, rules)
        taxon_info = pa.table(
            {"taxon_id": taxa.taxon_ids, "cls": taxon_class.astype(np.int64), "reason": taxon_reason.astype(np.int64)}
        )
        self.con.register("taxon_info", taxon_info)
        thresholds = bool(rules.min_observations or rules.min_research_observations or rules.min_photos)
        self._observation_reasons(research_only=rules.research_only and not thresholds)
        orphans = self.con.execute("SELECT count(*) FROM photo_obs WHERE obs_row IS NULL").fetchall()[0][0]
        audit.add("photo without observation", photos=int(orphans))
        self._inclusion(taxa, rules)
        if rules.research_only and thresholds:  # the grade after the thresholds, which count every grade
            self.con.execute(
                f"UPDATE obs SET reason = {_REASONS.index('not research grade')}, cls = -1 "
                "WHERE reason = 0 AND NOT research"
            )
        for code, n_obs, n_photos in self.con.execute(
            "SELECT reason, count(*), sum(n_photos) FROM obs WHERE reason <> 0 GROUP BY reason ORDER BY reason"
        ).fetchall():
            audit.add(_REASONS[code], observations=int(n_obs), photos=int(n_photos))
        self.con.unregister("taxon_info")
        tables = ExportTables(
            taxa=taxa_table, observations=pa.table({}), photos=pa.table({}), observers=observers, folder=self.export_dir
        )
        empty = np.zeros(0, np.int64)
        return tables, _Classified(taxa=taxa, obs_class=empty, obs_observer=empty, photo_obs=empty)

    def _observation_reasons(self, *, research_only: bool) -> None:
        """Tables ``obs`` (class, reason, observer, research, photos of each observation) and ``photo_obs``.

        With ``research_only`` the grade is a reason here already (when no inclusion threshold comes between).
        """
        no_taxon, unknown_taxon = _REASONS.index("no taxon"), _REASONS.index("unknown taxon")
        unknown_observer = _REASONS.index("unknown observer")
        research = "coalesce(o.quality_grade = 'research', false)"
        grade_reason = f"WHEN NOT {research} THEN {_REASONS.index('not research grade')}" if research_only else ""
        grade_class = f"AND {research}" if research_only else ""
        self.con.execute(
            "CREATE OR REPLACE TEMP VIEW known_observers AS "
            "SELECT DISTINCT observer_id FROM observers WHERE observer_id IS NOT NULL"
        )
        # An observation's photos are joined to the first observation of their uuid (as pc.index_in does).
        self.con.execute(
            "CREATE OR REPLACE TABLE photo_obs AS "
            "SELECT p.rowid AS photo_row, f.obs_row, coalesce(p.position, 0) AS position "
            "FROM photos p LEFT JOIN (SELECT observation_uuid, min(rowid) AS obs_row FROM observations "
            "GROUP BY observation_uuid) f ON p.observation_uuid = f.observation_uuid "
            "WHERE p.rowid NOT IN (SELECT photo_row FROM left_out)"
        )
        self.con.execute(
            f"""CREATE OR REPLACE TABLE obs AS
            SELECT o.rowid AS obs_row, coalesce(o.observer_id, -1) AS observer,
              CASE WHEN o.taxon_id IS NULL THEN {no_taxon} WHEN t.taxon_id IS NULL THEN {unknown_taxon}
                   WHEN t.reason <> 0 THEN t.reason WHEN k.observer_id IS NULL THEN {unknown_observer}
                   {grade_reason} ELSE 0 END AS reason,
              CASE WHEN o.taxon_id IS NOT NULL AND t.taxon_id IS NOT NULL AND t.reason = 0
                   AND k.observer_id IS NOT NULL {grade_class} THEN t.cls ELSE -1 END AS cls,
              {research} AS research,
              coalesce(n.n_photos, 0) AS n_photos
            FROM observations o
            LEFT JOIN taxon_info t ON o.taxon_id = t.taxon_id
            LEFT JOIN known_observers k ON coalesce(o.observer_id, -1) = k.observer_id
            LEFT JOIN (SELECT obs_row, count(*) AS n_photos FROM photo_obs WHERE obs_row IS NOT NULL
                       GROUP BY obs_row) n ON o.rowid = n.obs_row"""
        )

    def _inclusion(self, taxa: object, rules: BuildRules) -> None:
        """The inclusion thresholds and leaf genera, decided per class from per-class counts, applied to ``obs``."""
        if not (rules.min_observations or rules.min_research_observations or rules.min_photos):
            return
        counts = self.arrow(
            "SELECT cls, research, count(*) AS n_obs, sum(n_photos) AS n_photos FROM obs WHERE reason = 0 "
            "GROUP BY cls, research ORDER BY cls, research"
        )
        cls = counts["cls"].to_numpy().astype(np.int64)
        reason = np.zeros(len(cls), np.int8)
        before = cls.copy()
        _apply_inclusion(
            taxa,
            cls,
            reason,
            counts["research"].to_numpy(zero_copy_only=False).astype(bool),
            counts["n_photos"].to_numpy().astype(np.float64),
            rules,
            weights=counts["n_obs"].to_numpy().astype(np.float64),
        )
        decided = pa.table({"old": before, "new": cls, "reason": reason.astype(np.int64)})
        self.con.register("class_decision", decided)
        self.con.execute(
            "UPDATE obs SET cls = d.new, reason = d.reason "
            "FROM (SELECT DISTINCT old, new, reason FROM class_decision) d WHERE obs.reason = 0 AND obs.cls = d.old"
        )
        self.con.unregister("class_decision")

    def selected_tables(
        self, tables: ExportTables, photo_rows: np.ndarray, obs_rows: np.ndarray
    ) -> tuple[ExportTables, np.ndarray]:
        """The chosen photos' and their observations' release columns, read from the database.

        Args:
            tables: The tables of :meth:`classify`.
            photo_rows: The chosen photos' rows in the photos table, ascending.
            obs_rows: Their observations' rows in the observations table.

        Returns:
            Tables holding only the chosen photos and their observations (in export order) and each chosen
            photo's row in the new observations table.
        """
        unique_obs, photo_obs = _unique_inverse(obs_rows)
        photos = self._rows("photos", photo_rows, ["photo_id", "extension", "license", "width", "height"])
        observations = self._rows("observations", unique_obs, [c for c in TABLE_COLUMNS["observations"]])
        return dataclasses.replace(tables, photos=photos, observations=observations), photo_obs

    def _rows(self, table: str, rows: np.ndarray, columns: list[str]) -> pa.Table:
        """Columns of ``table`` at the given (ascending) rows."""
        self.con.register("wanted_rows", pa.table({"r": rows.astype(np.int64)}))
        names = ", ".join(f't."{c}"' for c in columns)
        result = self.arrow(f"SELECT {names} FROM {table} t SEMI JOIN wanted_rows w ON t.rowid = w.r ORDER BY t.rowid")
        self.con.unregister("wanted_rows")
        return _typed_table(result, table)


def typed_scan(
    con: duckdb.DuckDBPyConnection, path: Path, table: str, wanted: list[str], *, buffer_size: int = 32 * 2**20
) -> str:
    """The query reading columns ``wanted`` of export table ``table`` from ``path``, typed as :data:`TABLE_COLUMNS`.

    Raises:
        ValueError: The file cannot be read or lacks a column (named with the file and line).
    """
    if path.suffix == ".parquet":
        source = f"read_parquet({_quoted(str(path))})"
        try:
            described = con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        except duckdb.Error as error:
            raise explain_table_error(path, table, _first_line(error)) from error
        have = {row[0]: row[1] for row in described}
    else:
        # The header names the columns: no sniffing (DuckDB's sniffer reads and buffers a sample of every file).
        have = dict.fromkeys(_csv_header(path, table), "VARCHAR")
        columns = "{" + ", ".join(f"{_quoted(c)}: 'VARCHAR'" for c in have) + "}"
        source = (
            f"read_csv({_quoted(str(path))}, delim='\\t', quote='', escape='', header=true, auto_detect=false, "
            f"buffer_size={buffer_size}, columns={columns})"
        )
    missing = [c for c in wanted if c not in have]
    if missing:
        raise ValueError(
            f"{path}: line 1: missing column(s) {', '.join(missing)} of the {table} table "
            f"(has {', '.join(have)}; expected a header of tab-separated column names)"
        )
    parquet = path.suffix == ".parquet"
    exprs = ", ".join(_typed(f'"{c}"', have[c], TABLE_COLUMNS[table][c], parquet) + f' AS "{c}"' for c in wanted)
    return f"SELECT {exprs} FROM {source}"


def _quoted(text: str) -> str:
    """``text`` as an SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _csv_header(path: Path, table: str) -> list[str]:
    """The column names on the first line of a tab-separated (maybe gzipped) table.

    Raises:
        ValueError: The file cannot be read or has no header line.
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8") as f:
            line = f.readline()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:
        raise explain_table_error(path, table, str(error)) from error
    if not line.strip():
        raise ValueError(f"{path}: line 1: no header (expected the {table} table's tab-separated column names)")
    return line.rstrip("\r\n").split("\t")


def _typed(column: str, source_type: str, target: pa.DataType, parquet: bool) -> str:
    """SQL giving a column its export type: text as read ('' for an empty field), other text trimmed and cast."""
    target_sql = _DUCKDB_TYPES[target]
    if target_sql == "VARCHAR":
        if parquet:
            return column if source_type == "VARCHAR" else f"trim(CAST({column} AS VARCHAR))"
        return f"coalesce({column}, '')"
    if source_type == "VARCHAR":
        return f"CAST(nullif(trim({column}), '') AS {target_sql})"
    return f"CAST({column} AS {target_sql})"


def _typed_table(table: pa.Table, name: str) -> pa.Table:
    """An engine result with the Arrow types of :data:`TABLE_COLUMNS` (plain strings, int64, float64)."""
    types = TABLE_COLUMNS[name]
    return pa.table({c: table[c].cast(types[c]) for c in table.column_names})


def _first_line(error: Exception) -> str:
    """DuckDB's message without its hints and context lines."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
