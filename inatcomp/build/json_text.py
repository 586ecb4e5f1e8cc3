"""The dataset JSON files: every field made JSON text once, each file's records joined from them with Arrow.

The records are written in blocks (:func:`_json_records`) so that a file is written without holding all its
text, in the compact layout that the leakage audit re-reads (:func:`~inatcomp.build.audit._json_image_ids`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.arrays import _DENSE_IDS, _needs_escape, _unique_inverse
from inatcomp.build.audit import _json_image_ids
from inatcomp.build.layout import _PARTS
from inatcomp.build.rules import BuildRules, Preset, Split
from inatcomp.build.selection import _ImageColumns, _Selection
from inatcomp.fileio import write_atomic

_LICENSE_URLS = {
    "CC0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "CC-BY": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-SA": "https://creativecommons.org/licenses/by-sa/4.0/",
    "CC-BY-ND": "https://creativecommons.org/licenses/by-nd/4.0/",
    "CC-BY-NC-SA": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "CC-BY-NC-ND": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
}


@dataclasses.dataclass
class _ReleaseTexts:
    """The JSON text the dataset files are joined from.

    Attributes:
        info: The ``info`` object, compact JSON.
        licenses: The ``licenses`` list, compact JSON.
        categories: The ``categories`` list, compact JSON.
        images: The pieces of an image record (:func:`_json_records`): text, or one text per image.
        annotations: The pieces of an annotation record.
        locations: The pieces of a location record, or None for a release without location files.
    """

    info: bytes
    licenses: bytes
    categories: bytes
    images: list[str | pa.Array]
    annotations: list[str | pa.Array]
    locations: list[str | pa.Array] | None


@dataclasses.dataclass
class _PlaceTexts:
    """Latitude, longitude and date of each image as JSON text (the dates as distinct texts and an index)."""

    latitude: pa.Array
    longitude: pa.Array
    date: pa.Array
    date_index: pa.Array

    @classmethod
    def of(cls, columns: _ImageColumns) -> _PlaceTexts:
        dates = columns.date_values
        date_text = _json_strings(pc.if_else(pc.equal(dates, ""), pa.scalar(None, pa.string()), dates))
        return cls(
            latitude=_json_numbers(columns.latitude),
            longitude=_json_numbers(columns.longitude),
            date=pa.concat_arrays([date_text, pa.array(["null"])]),
            date_index=pa.array(columns.date),
        )


def _release_texts(
    *,
    rules: BuildRules,
    names: dict[str, str],
    selection: _Selection,
    observers: pa.Table,
    categories: list[dict],
) -> _ReleaseTexts:
    """Make every field of the dataset files' records JSON text, once.

    Each piece of a record carries the key before its value (keys are joined to a few distinct values once).

    Args:
        rules: The build's rules.
        names: The release's file names (:func:`~inatcomp.build.layout.release_names`).
        selection: The release's images.
        observers: The export's observers table (the images' rights holders).
        categories: The category records.
    """
    s = selection
    is_2021 = rules.preset is Preset.INAT2021
    licenses, license_of_image = _licenses(s.columns)
    observer_keys, observer_of_image = _unique_inverse(s.columns.observer_id)
    holder_text = _json_strings(_rights_holders(observers, observer_keys))
    by_observer = pa.array(observer_of_image)
    id_text = _json_numbers(np.arange(len(s.photo_id), dtype=np.int64))
    file_name_text = _json_strings(s.file_names) if s.file_name_text is None else s.file_name_text
    image_pieces = [
        '{"id":',
        id_text,
        _json_pairs(s.width, s.height, (',"width":', ',"height":', ',"file_name":')),
        file_name_text,
        _json_numbers(license_of_image, ',"license":'),
        pc.binary_join_element_wise(',"rights_holder":', holder_text, "").take(by_observer),
    ]
    place = _PlaceTexts.of(s.columns) if is_2021 or "train_locations" in names else None
    if is_2021:
        image_pieces += _image_place_pieces(s.columns, place)
    image_pieces.append("}")
    annotation_pieces = ['{"id":', id_text, ',"image_id":', id_text, _json_numbers(s.category, ',"category_id":'), "}"]
    location_pieces = None
    if "train_locations" in names:
        location_pieces = [
            '{"id":',
            id_text,
            ',"lat":',
            place.latitude,
            ',"lon":',
            place.longitude,
            _json_numbers(observer_keys, ',"user_id":').take(by_observer),
            pc.binary_join_element_wise(',"date":', place.date, "}", "").take(place.date_index),
        ]
    return _ReleaseTexts(
        info=_compact_json(_release_info(rules)),
        licenses=_compact_json(licenses),
        categories=_compact_json(categories),
        images=image_pieces,
        annotations=annotation_pieces,
        locations=location_pieces,
    )


def _image_place_pieces(columns: _ImageColumns, place: _PlaceTexts) -> list[str | pa.Array]:
    """The pieces of a 2021 image record after its rights holder: date, latitude, longitude, uncertainty."""
    acc = pa.array(columns.accuracy)
    finite = pc.is_finite(acc)
    acc_int = pc.if_else(finite, pc.trunc(pc.if_else(finite, acc, 0.0)), pa.scalar(None, pa.float64()))
    return [
        pc.binary_join_element_wise(',"date":', place.date, "").take(place.date_index),
        ',"latitude":',
        place.latitude,
        ',"longitude":',
        place.longitude,
        _json_numbers(acc_int.cast(pa.int64(), safe=False), ',"location_uncertainty":'),
    ]


def _release_info(rules: BuildRules) -> dict:
    """The ``info`` object of the dataset files."""
    return {
        "year": rules.year,
        "version": "1.0",
        "description": f"inatcomp {rules.preset.value} challenge dataset",
        "contributor": "inatcomp",
        "url": "",
        "date_created": "",
    }


def _licenses(columns: _ImageColumns) -> tuple[list[dict], np.ndarray]:
    """The ``licenses`` list (ids from 1, in name order) and each image's license id."""
    license_names = sorted(columns.license_values.to_pylist())
    license_id = {name: i + 1 for i, name in enumerate(license_names)}
    licenses = [{"id": license_id[nm], "name": nm, "url": _LICENSE_URLS.get(nm, "")} for nm in license_names]
    license_of_image = np.array([license_id[nm] for nm in columns.license_values.to_pylist()] or [0])[columns.license]
    return licenses, license_of_image


def _write_json_files(
    pool: concurrent.futures.Executor,
    *,
    out: Path,
    names: dict[str, str],
    texts: _ReleaseTexts,
    split: np.ndarray,
    mini: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Write the dataset JSON files (and locations, categories) through ``pool``; re-read the split files' image ids.

    Returns:
        The image ids read back from the train, val and test files.
    """
    # What the threads write: each a path and its content; the split files are re-read for their image ids.
    writes: list[tuple[Path, Callable[[], Iterable[bytes] | bytes], bool]] = []
    for part, code in _PARTS.items():
        idx = np.flatnonzero(split == code)
        writes.append((out / names[part], functools.partial(_dataset_json, texts, idx, code == Split.TEST), True))
        if f"{part}_locations" in names:
            writes.append((out / names[f"{part}_locations"], functools.partial(_locations_json, texts, idx), False))
        if part == "train" and mini is not None:
            writes.append((out / names["train_mini"], functools.partial(_dataset_json, texts, mini, False), False))
    writes.append((out / "categories.json", lambda: texts.categories, False))
    done = {
        path.name: pool.submit(_write_file, path, make, reread) for path, make, reread in writes
    }  # the biggest first
    read_back = {name: future.result() for name, future in done.items()}
    return {part: read_back[names[part]] for part in _PARTS}


def _write_file(path: Path, make: Callable[[], Iterable[bytes] | bytes], reread: bool) -> np.ndarray | None:
    """Write ``make()``'s text to ``path``; its image ids read back when ``reread``."""
    write_atomic(path, make())
    return _json_image_ids(path) if reread else None


def _dataset_json(texts: _ReleaseTexts, idx: np.ndarray, test: bool) -> Iterator[bytes]:
    """The text of a dataset file of images ``idx`` (a test file has no annotations)."""
    yield from (b'{"info":', texts.info, b',"images":[')
    yield from _json_records(texts.images, idx)
    yield from (b'],"licenses":', texts.licenses, b',"categories":', texts.categories)
    if not test:
        yield b',"annotations":['
        yield from _json_records(texts.annotations, idx)
        yield b"]"
    yield b"}"


def _locations_json(texts: _ReleaseTexts, idx: np.ndarray) -> Iterator[bytes]:
    """The text of a location file of images ``idx``."""
    yield b"["
    yield from _json_records(texts.locations, idx)
    yield b"]"


def _compact_json(obj: object) -> bytes:
    """Compact JSON text of a small object, as :func:`inatcomp.fileio.write_json` writes it."""
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


def _json_strings(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Strings as JSON string literals (quoted and escaped as orjson does); null as ``null``."""
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
