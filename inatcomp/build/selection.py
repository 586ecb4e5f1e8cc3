"""The release's images: the chosen photos in the release order, with what the release files need from the export.

Values are taken from the export's columns in ascending row order (several times faster than in a random
order), then put in the release order: train and val by category, then test in a random order.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.arrays import _take_numbers, _take_strings, random_keys, sort_with_order
from inatcomp.build.export import ExportTables
from inatcomp.build.layout import _file_names, _release_order
from inatcomp.build.rules import BuildRules
from inatcomp.build.sampling import _Candidates, _Splits


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


@dataclasses.dataclass
class _Selection:
    """The release's images in the release order, and its categories.

    Attributes:
        cat_frame: One row per category, in category-id order (:func:`~inatcomp.build.categories._category_frame`).
        split: Split code of each image.
        category: Category id of each image.
        photo_id: Photo id of each image (its file's stem).
        width: Width of each release image.
        height: Height of each release image.
        columns: What the release files need from the export about each image.
        extension: Each source photo's file extension, when the images are written; else None.
        file_names: Release-layout file name of each image, unless only ``file_name_text`` was made.
        file_name_text: The file names as JSON string literals, when made at once; else None.
    """

    cat_frame: pd.DataFrame
    split: np.ndarray
    category: np.ndarray
    photo_id: np.ndarray
    width: np.ndarray
    height: np.ndarray
    columns: _ImageColumns
    extension: pa.Array | None = None
    file_names: pa.Array | None = None
    file_name_text: pa.Array | None = None


def _select(
    tables: ExportTables,
    photo_obs: np.ndarray,
    candidates: _Candidates,
    splits: _Splits,
    chosen: np.ndarray,
    *,
    cat_frame: pd.DataFrame,
    category_of_compact: np.ndarray,
    rules: BuildRules,
    images: bool,
    rng: np.random.Generator,
) -> _Selection:
    """The chosen candidates in the release order, with what the release files need from the export.

    Everything the release needs from the export's photos and observations is taken: ``tables`` keeps empty
    slices of them, so their memory goes.

    Args:
        tables: The export's tables.
        photo_obs: Row of each photo's observation.
        candidates: The candidate photos.
        splits: Their classes and splits.
        chosen: Whether each candidate is in the release.
        cat_frame: The categories (:func:`~inatcomp.build.categories._category_frame`).
        category_of_compact: Category id of each compact class.
        rules: The build's rules.
        images: Whether the images are written (their source extensions are then taken too).
        rng: The sample generator: it draws test's order.
    """
    sel = np.flatnonzero(chosen)
    photo_rows = candidates.rows[sel]
    sel_split = splits.image_split[sel].astype(np.int64)
    sel_category = category_of_compact[splits.cand_class[sel]]
    p, o = tables.photos, tables.observations
    # Taken in row order (several times faster than in a random order), then put in the release order.
    photo_id = _take_numbers(p["photo_id"], photo_rows)
    width, height = _fit(
        _take_numbers(p["width"], photo_rows, 0), _take_numbers(p["height"], photo_rows, 0), rules.max_image_side
    )
    extensions = p["extension"].take(pa.array(photo_rows)) if images else None
    # What the release files need from the export is taken in a second thread, beside the image order.
    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        gathered = helper.submit(_ImageColumns.gather, p, o, photo_rows, photo_obs[photo_rows])
        # Image ids: train by category, then val by category, then test in a random order (ids leak no label).
        test_shuffle = random_keys(rng, len(sel))
        order = _release_order(sel_split, sel_category, test_shuffle, photo_id)
        del sel, test_shuffle
        columns = gathered.result()
    # Everything the release needs from the export's photos and observations is taken: let their memory go.
    tables.photos, tables.observations = p.slice(0, 0), o.slice(0, 0)
    del p, o
    pa.default_memory_pool().release_unused()
    return _Selection(
        cat_frame=cat_frame,
        split=sel_split[order],
        category=sel_category[order],
        photo_id=photo_id[order],
        width=width[order],
        height=height[order],
        columns=columns[order],
        extension=None if extensions is None else pc.utf8_lower(extensions.take(pa.array(order))),
    )


def _name_files(selection: _Selection, rules: BuildRules, names: dict[str, str], *, images: bool) -> _Selection:
    """The images' release-layout file names: as text for the image files, or at once as JSON text.

    Without images the names are only needed as JSON text: made so at once when nothing needs escaping.
    """
    s = selection
    name_args = (rules, names, s.cat_frame, s.split, s.category, s.photo_id)
    name_text = None if images else _file_names(*name_args, quoted=True)
    file_names = _file_names(*name_args) if name_text is None else None
    return dataclasses.replace(s, file_names=file_names, file_name_text=name_text)


def _fit(width: np.ndarray, height: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Sizes after shrinking so the long side is at most ``side`` (never enlarged)."""
    long = np.maximum(np.maximum(width, height), 1)
    scale = np.minimum(1.0, side / long)
    return np.maximum(1, np.round(width * scale)).astype(np.int64), np.maximum(1, np.round(height * scale)).astype(
        np.int64
    )
