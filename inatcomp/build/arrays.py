"""The NumPy and Arrow kernels the build's phases share: sorting and ranking within groups, the join by uuid,
unique ids, membership, takes.

Each gives what its NumPy or Arrow counterpart gives (the tests compare them), faster on the export's
columns: non-negative integers sorted as packed numbers, uuids read as fixed-width bytes in place, small ids
looked up in dense tables, rows taken in ascending order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "stable_argsort",
    "sort_with_order",
    "lexsort_by_group",
    "random_keys",
    "rank_within_groups",
    "first_within_groups",
]


def stable_argsort(values: np.ndarray) -> np.ndarray:
    """``np.argsort(values, kind="stable")``, faster for non-negative integers (:func:`sort_with_order`)."""
    return sort_with_order(values)[1]


def sort_with_order(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(values[order], order)`` with ``order = np.argsort(values, kind="stable")``, faster for non-negative
    integers.

    NumPy sorts plain integers with a vectorised sort (AVX-512 where the CPU has it), an order of magnitude
    faster than any of its argsorts: each value is shifted left and its row written into the low bits, so
    sorting these numbers sorts the rows, ties by row. Values too wide for that are sorted in two passes
    (the low bits, then stably the high bits).
    """
    n = len(values)
    if n == 0 or values.dtype.kind not in "iu" or int(values.min()) < 0:
        order = np.argsort(values, kind="stable")
        return values[order], order
    row_bits = max((n - 1).bit_length(), 1)
    room = 64 - row_bits
    if int(values.max()).bit_length() <= room:
        packed = values.astype(np.uint64) << np.uint64(row_bits)
        packed |= np.arange(n, dtype=np.uint64)
        packed.sort()
        order = (packed & np.uint64((1 << row_bits) - 1)).view(np.int64)
        packed >>= np.uint64(row_bits)
        return packed.astype(values.dtype, copy=False), order
    order = np.argsort(values)  # NumPy's vectorised argsort: the stable order when no two values are equal
    ordered = values[order]
    if not (ordered[1:] == ordered[:-1]).any():
        return ordered, order
    wide = values.astype(np.uint64)
    order = stable_argsort(wide & np.uint64((1 << room) - 1))
    order = order[stable_argsort(wide[order] >> np.uint64(room))]
    return values[order], order


def lexsort_by_group(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``np.lexsort((keys, groups))``: by group, then key, then position; faster for integer groups and keys."""
    return _sorted_groups(groups, keys)[1]


def _sorted_groups(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(groups[order], order)`` for ``order = np.lexsort((keys, groups))``.

    Non-negative integer groups and keys are sorted as one number (group, key) when it fits, else in two
    stable passes (:func:`sort_with_order`); other keys by NumPy's vectorised quicksort, which equals the
    stable order when no two keys are equal, then the groups by a stable pass.
    """
    if len(keys) == 0:
        return groups[:0], np.zeros(0, dtype=np.int64)
    if keys.dtype.kind in "iu" and groups.dtype.kind in "iu" and int(keys.min()) >= 0 and int(groups.min()) >= 0:
        span = int(keys.max()) + 1
        if (int(groups.max()) * span + span).bit_length() < 63:
            combined, order = sort_with_order(groups.astype(np.int64) * span + keys.astype(np.int64))
            return combined // span, order
        order = stable_argsort(keys)
    else:
        order = np.argsort(keys)
        ordered = keys[order]
        if len(keys) > 1 and ((ordered[1:] == ordered[:-1]).any() or np.isnan(ordered[-1])):
            order = np.argsort(keys, kind="stable")
    ordered_groups, second = sort_with_order(groups[order])
    return ordered_groups, order[second]


def random_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random sort keys: 32-bit integers, which :func:`lexsort_by_group` sorts far faster than floats
    (two keys tie about once in four billion pairs; a tie falls to position)."""
    return rng.integers(0, 1 << 32, n, dtype=np.uint32)


def rank_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (0, 1, …) of each item within its group, in the order of ``keys`` (ties: by position)."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    same = _same_if_in_order(groups, keys)
    if same is not None:
        return _rank_in_runs(same)
    sorted_groups, order = _sorted_groups(groups, keys)
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = _rank_in_runs(sorted_groups[1:] == sorted_groups[:-1])
    return ranks


def first_within_groups(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Whether each item ranks first in its group: ``rank_within_groups(groups, keys) == 0``, with less work."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=bool)
    same = _same_if_in_order(groups, keys)
    if same is not None:
        return np.r_[True, ~same]
    sorted_groups, order = _sorted_groups(groups, keys)
    first = np.empty(n, dtype=bool)
    first[order] = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]]
    return first


def _same_if_in_order(groups: np.ndarray, keys: np.ndarray) -> np.ndarray | None:
    """Whether each item is in the group of the one before, when the items are already sorted by group and
    key (an export often lists an observation's photos together, by position); None when they are not."""
    same = groups[1:] == groups[:-1]
    if (groups[1:] >= groups[:-1]).all() and (keys[1:][same] >= keys[:-1][same]).all():
        return same
    return None


def _rank_in_runs(same: np.ndarray) -> np.ndarray:
    """Position of each item within its run, the runs given by ``same`` (item i+1 continues item i's run)."""
    heads = np.flatnonzero(np.r_[True, ~same])
    lengths = np.diff(np.r_[heads, len(same) + 1])
    return np.arange(len(same) + 1, dtype=np.int64) - np.repeat(heads, lengths)


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


#: Ids below this are always looked up in a dense table rather than by binary search or sorting (see :func:`_dense`).
_DENSE_IDS = 1 << 24


def _dense(top: int, n: int) -> bool:
    """Whether a table indexed by ids up to ``top`` is small for ``n`` lookups: under :data:`_DENSE_IDS`
    entries, or under four per lookup."""
    return top < max(_DENSE_IDS, 4 * n)


def _unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` for integers: by counting when they are small and
    non-negative, else by :func:`sort_with_order` (several times faster than NumPy's)."""
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


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sorting (NumPy's hash-based unique is several times slower on big integer arrays)."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def _take_numbers(column: pa.ChunkedArray, rows: np.ndarray, fill: float | None = None) -> np.ndarray:
    """``column[rows]`` as NumPy, nulls replaced by ``fill`` (without one, as ``to_numpy`` gives them: NaN)."""
    taken = column.take(pa.array(rows))
    return (taken if fill is None else taken.fill_null(fill)).to_numpy()


def _take_strings(values: pa.Array, rows: np.ndarray) -> pa.Array:
    """``values.take(rows)``; for uuids (36 bytes each) as NumPy copies of fixed-width items, several times faster."""
    layout = _uuid_layout(values)
    if layout is None:
        return values.take(pa.array(rows))
    n, first, buffer = layout
    data = np.take(np.ndarray(shape=(n, 9), dtype=np.uint32, buffer=buffer, offset=first), rows, axis=0)
    offsets = np.arange(0, 36 * len(rows) + 1, 36, dtype=np.int32)
    return pa.StringArray.from_buffers(len(rows), pa.py_buffer(offsets), pa.py_buffer(data))


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
