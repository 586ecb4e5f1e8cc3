"""The sampling phases in the engine: photos per observation, the observer split's counts and the quotas in SQL.

What :mod:`inatcomp.build.sampling` does with arrays as long as the candidate photos, this module does with
tables in the engine's database, so that the build's memory holds the selection, not the export: only the
(observer, class) pairs with their image counts (for :func:`~inatcomp.build.splits.assign_observer_pairs`),
per-class counts and the chosen photos come back to Python. The random keys are drawn in Python from the same
generators, in the same order and over the same candidates as the in-memory phases draw them, a block at a time,
and stored beside the candidates in their order; NumPy's generators give the same numbers whatever the
block sizes. So the choice is the in-memory builder's, photo for photo.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from inatcomp.build.arrays import random_keys
from inatcomp.build.audit import _Audit
from inatcomp.build.inclusion import _Classified
from inatcomp.build.rules import BuildRules, PhotoChoice, Split
from inatcomp.build.sampling import _Candidates, _split_pairs, _Splits
from inatcomp.build.splits import _Pairs

__all__ = ["KEY_BLOCK", "sample_in_engine"]

#: Random keys drawn and stored per block (8 MB of keys in Python at a time).
KEY_BLOCK = 1 << 20


def sample_in_engine(
    con: object,
    classified: _Classified,
    rules: BuildRules,
    rngs: tuple[np.random.Generator, np.random.Generator],
    audit: _Audit,
) -> tuple[_Candidates, _Splits, np.ndarray, np.ndarray]:
    """Photos per observation, the observer split and the quotas over the engine's ``photo_obs`` and ``obs``.

    Args:
        con: The engine's DuckDB connection, holding the tables ``photo_obs`` (photo row, observation row,
            position) and ``obs`` (observation row, class, observer) of :class:`~inatcomp.build.engine.ExportEngine`.
        classified: The taxa (the engine's classes are in its tables: the arrays per observation stay empty).
        rules: The build's rules.
        rngs: The split and sample generators, as the in-memory phases get them.
        audit: Where the photos and classes left out are counted.

    Returns:
        The chosen photos as candidates (in export order), their classes and splits, every one chosen (so that
        :func:`~inatcomp.build.selection._select` takes them as the in-memory phases' choice), the chosen photos'
        rows in the export's photos table and their observations' rows in the observations table.
    """
    split_rng, sample_rng = rngs
    _photos_per_observation(con, rules, sample_rng, audit)
    class_rows = con.sql("SELECT cls FROM cand_classes ORDER BY cc").fetchnumpy()["cls"].astype(np.int64)
    pair_rows = con.sql("SELECT co, cc, count(*) AS n FROM cand GROUP BY co, cc ORDER BY co, cc").fetchnumpy()
    n_observers = int(pair_rows["co"][-1]) + 1 if len(pair_rows["co"]) else 0
    pairs = _Pairs(pair_rows["co"], pair_rows["cc"], pair_rows["n"], n_observers)
    del pair_rows
    supercats, kept, observer_split = _split_pairs(
        classified.taxa, pairs, class_rows, n_observers, rules, split_rng, audit
    )
    del pairs
    chosen = _quotas(con, observer_split, kept, rules, sample_rng, audit)
    n = len(chosen["photo_row"])
    candidates = _Candidates(rows=np.arange(n), obs=np.zeros(0, np.int64), rank_in_obs=None)
    splits = _Splits(
        class_rows=class_rows,
        cand_class=chosen["cc"].astype(np.int64),
        supercategories=supercats,
        kept=kept,
        image_split=chosen["split"].astype(np.int8),
    )
    return candidates, splits, chosen["photo_row"].astype(np.int64), chosen["obs_row"].astype(np.int64)


def _photos_per_observation(con: object, rules: BuildRules, rng: np.random.Generator, audit: _Audit) -> None:
    """Tables ``cand`` (the photos kept per observation, in export order, with compact class and observer indices)
    and ``cand_classes`` (each compact class's row in the taxa table).

    As :func:`~inatcomp.build.sampling._photos_per_observation`: the photos of observations with a class, ranked
    within their observation by position (or by a random key drawn over all of them), ties in export order.
    """
    joined = (
        "SELECT p.photo_row, p.obs_row, p.position, o.cls, o.observer "
        "FROM photo_obs p JOIN obs o ON p.obs_row = o.obs_row WHERE o.cls >= 0"
    )
    total = con.execute("SELECT coalesce(sum(n_photos), 0) FROM obs WHERE cls >= 0").fetchall()[0][0]
    random = rules.photo_choice is PhotoChoice.RANDOM
    if random:  # the keys are drawn over the candidates in export order
        con.execute(f"CREATE OR REPLACE TABLE cand0 AS {joined} ORDER BY p.photo_row")
        _store_keys(con, "keys0", total, rng)
    if rules.photos_per_observation == 1 and not random:
        # Each observation's least (position, row): an aggregate, not a sort, over the photos alone and stored
        # first (DuckDB spills a lone aggregate, not one under joins and a sort in one statement). Position and
        # row packed into one integer when they fit: three times faster than a struct's minimum.
        low, high, last_row = con.execute(
            "SELECT min(position), max(position), max(photo_row) FROM photo_obs"
        ).fetchall()[0]
        packed = low is None or (low >= 0 and high < 2**31 and last_row < 2**32)
        least = (
            "min(position * 4294967296 + photo_row) % 4294967296"
            if packed
            else "min({'k': position, 'r': photo_row}).r"
        )
        con.execute(
            f"CREATE OR REPLACE TABLE first_photo AS SELECT obs_row, {least} AS photo_row FROM photo_obs "
            "WHERE obs_row IS NOT NULL GROUP BY obs_row"
        )
        kept_query = (
            "SELECT f.photo_row, f.obs_row, o.cls, o.observer, 0 AS rank_in_obs "
            "FROM first_photo f JOIN obs o ON f.obs_row = o.obs_row WHERE o.cls >= 0"
        )
    else:
        if not random:
            con.execute(f"CREATE OR REPLACE TABLE cand0 AS {joined}")
        source, key = ("(SELECT * FROM cand0 POSITIONAL JOIN keys0)", "key") if random else ("cand0", "position")
        kept_query = (
            f"SELECT * FROM (SELECT photo_row, obs_row, cls, observer, row_number() OVER (PARTITION BY obs_row "
            f"ORDER BY {key}, photo_row) - 1 AS rank_in_obs FROM {source}) "
            f"WHERE rank_in_obs < {int(rules.photos_per_observation)}"
        )
    # Compact indices as in sampling: classes and observers in ascending order. Every observation with a class
    # and a photo keeps a photo, so they are those of all such observations.
    for table, column, compact in (("cand_classes", "cls", "cc"), ("cand_observers", "observer", "co")):
        con.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT {column}, row_number() OVER (ORDER BY {column}) - 1 AS "
            f"{compact} FROM (SELECT DISTINCT {column} FROM obs WHERE cls >= 0 AND n_photos > 0)"
        )
    con.execute(
        f"""CREATE OR REPLACE TABLE cand AS
        SELECT k.photo_row, k.obs_row, k.rank_in_obs, c.cc, o.co
        FROM ({kept_query}) k JOIN cand_classes c ON k.cls = c.cls JOIN cand_observers o ON k.observer = o.observer
        ORDER BY k.photo_row"""
    )
    for table in ("cand0", "keys0", "first_photo", "cand_observers"):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    n_kept = con.execute("SELECT count(*) FROM cand").fetchall()[0][0]
    audit.add("photos per observation", photos=int(total - n_kept))


def _store_keys(con: object, table: str, n: int, rng: np.random.Generator) -> None:
    """Table ``table`` of ``n`` random keys (:func:`~inatcomp.build.arrays.random_keys`), drawn a block at a time."""
    con.execute(f"CREATE OR REPLACE TABLE {table} (key BIGINT)")
    for first in range(0, n, KEY_BLOCK):
        block = pa.table({"key": random_keys(rng, min(KEY_BLOCK, n - first)).astype(np.int64)})
        con.register("key_block", block)
        con.execute(f"INSERT INTO {table} SELECT key FROM key_block")
        con.unregister("key_block")


def _quotas(
    con: object,
    observer_split: np.ndarray,
    kept: np.ndarray,
    rules: BuildRules,
    rng: np.random.Generator,
    audit: _Audit,
) -> dict[str, np.ndarray]:
    """As :func:`~inatcomp.build.sampling._apply_quotas`, in SQL: each split's photos of a kept class ranked by key.

    Returns:
        The chosen candidates' photo row, observation row, compact class and split, in export order.
    """
    n = con.execute("SELECT count(*) FROM cand").fetchall()[0][0]
    _store_keys(con, "quota_keys", n, rng)
    con.register("observer_split", pa.table({"co": np.arange(len(observer_split)), "split": observer_split}))
    con.register("kept_class", pa.table({"cc": np.flatnonzero(kept)}))
    quota = {Split.TEST: rules.test_per_class, Split.VAL: rules.val_per_class, Split.TRAIN: rules.max_train}
    con.register(
        "split_quota",
        pa.table({"split": pa.array([int(k) for k in quota], pa.int8()), "q": pa.array(quota.values(), pa.int64())}),
    )
    # Each candidate's sort key: train spread over observations, an observation's second photo only after every
    # observation's first (the in-memory phases' (rank << 32) | key); ties by position.
    con.execute(
        f"""CREATE OR REPLACE TABLE quota_cand AS
        SELECT c.photo_row, c.obs_row, c.cc, s.split,
          CASE WHEN s.split = {int(Split.TRAIN)} THEN c.rank_in_obs * 4294967296 + c.key ELSE c.key END AS sk
        FROM (SELECT * FROM cand POSITIONAL JOIN quota_keys) c
        JOIN observer_split s ON c.co = s.co SEMI JOIN kept_class k ON c.cc = k.cc"""
    )
    # Only the groups over their quota are ranked, and of those only the items below a key limit under which
    # about twice the quota fall; a group with fewer than its quota below it is ranked whole: exact, as
    # sampling._within_quota.
    con.execute(
        """CREATE OR REPLACE TABLE quota_groups AS
        SELECT g.cc, g.split, q.q, least((2 * q.q + 64) / g.n, 1.0) * 4294967296 AS lim
        FROM (SELECT cc, split, count(*) AS n FROM quota_cand GROUP BY cc, split) g
        JOIN split_quota q ON g.split = q.split WHERE q.q IS NOT NULL AND g.n > q.q"""
    )
    con.execute(
        """CREATE OR REPLACE TABLE quota_groups AS
        SELECT g.cc, g.split, g.q, g.lim, count(*) FILTER (WHERE c.sk < g.lim) < g.q AS short
        FROM quota_groups g JOIN quota_cand c ON c.cc = g.cc AND c.split = g.split
        GROUP BY g.cc, g.split, g.q, g.lim"""
    )
    con.execute(
        """CREATE OR REPLACE TABLE chosen AS
        SELECT photo_row, obs_row, cc, split FROM quota_cand c ANTI JOIN quota_groups g USING (cc, split)
        UNION ALL
        SELECT photo_row, obs_row, cc, split FROM (
          SELECT c.photo_row, c.obs_row, c.cc, c.split, g.q,
            row_number() OVER (PARTITION BY c.cc, c.split ORDER BY c.sk, c.photo_row) AS r
          FROM quota_cand c JOIN quota_groups g USING (cc, split) WHERE g.short OR c.sk < g.lim)
        WHERE r <= q"""
    )
    for view in ("observer_split", "kept_class", "split_quota"):
        con.unregister(view)
    counts = {split: [0, 0] for split in quota}
    for table, column in (("quota_cand", 0), ("chosen", 1)):
        for split, size in con.execute(f"SELECT split, count(*) FROM {table} GROUP BY split").fetchall():
            counts[Split(split)][column] = int(size)
    for split, why in (
        (Split.TEST, "test images beyond the per-class quota"),
        (Split.VAL, "val images beyond the per-class quota"),
        (Split.TRAIN, "train images above max_train"),
    ):
        if quota[split] is not None:
            audit.add(why, photos=counts[split][0] - counts[split][1])
    chosen = con.sql("SELECT photo_row, obs_row, cc, split FROM chosen ORDER BY photo_row").fetchnumpy()
    for table in ("chosen", "quota_groups", "quota_cand", "quota_keys", "cand", "cand_classes"):
        con.execute(f"DROP TABLE {table}")
    return chosen
