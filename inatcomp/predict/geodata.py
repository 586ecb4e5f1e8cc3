"""Where and when: the geo prior's places and dates, read from location files and encoded for its network.

Source: O. Mac Aodha, E. Cole, P. Perona, "Presence-Only Geographical Priors for Fine-Grained Image
Classification", ICCV 2019 (iNat2018 val top-1 60.2 → 72.8). Written from the paper, not from its code. The prior
itself is :mod:`inatcomp.predict.geoprior`; this module imports no torch.

**Inputs** (:func:`encode_inputs`, the paper's "wrap" encoding): longitude and latitude scaled to ``[-1, 1]``
(``lon / 180``, ``lat / 90``), each mapped to ``sin(πx), cos(πx)``, so -180° and 180° are the same point; with
dates, the day of the year scaled to ``[-1, 1]`` and mapped the same way, so 31 December is next to 1 January.

**Data** (:func:`load_locations`, :func:`load_observations`): 2017/2018 location files (a list of records ``id,
lat, lon, user_id, date`` or ``date_c``) or the 2021 image fields (``latitude``, ``longitude``, ``date``).
Missing coordinates (null or absent) and absurd ones (not a number, outside ±90/±180, or exactly 0, 0, the usual
placeholder) are skipped and counted, never fatal; so are missing and unreadable dates. Structural problems (not
a list, a record without an integer id, repeated ids) are errors naming the file and the JSON path.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from inatcomp.fileio import read_json
from inatcomp.formats.predictions import index_of

__all__ = [
    "ENCODING",
    "Locations",
    "Observations",
    "day_fraction",
    "encode_inputs",
    "find_locations",
    "load_locations",
    "load_observations",
    "sample_sphere",
]

_logger = logging.getLogger(__name__)

#: The input encoding (recorded in the metadata).
ENCODING = "wrap"

_OK, _MISSING, _ABSURD = 0, 1, 2


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def encode_inputs(*, lat: np.ndarray, lon: np.ndarray, day: np.ndarray | None = None) -> np.ndarray:
    """The network's inputs: ``sin(πx), cos(πx)`` of ``lon / 180``, ``lat / 90`` and (with ``day``) ``2·day - 1``.

    Args:
        lat: Latitudes in degrees.
        lon: Longitudes in degrees (any real number: the encoding is periodic).
        day: Fractions of the year in ``[0, 1)`` (:func:`day_fraction`), or ``None`` for a place-only prior.

    Returns:
        float32 ``[n, 4]`` (``sin lon, sin lat, cos lon, cos lat``) or ``[n, 6]`` (then ``sin day, cos day``).
    """
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    place = np.stack([lon / 180.0, lat / 90.0], axis=1) * math.pi
    parts = [np.sin(place), np.cos(place)]
    if day is not None:
        when = (2.0 * np.asarray(day, dtype=np.float64).reshape(-1, 1) - 1.0) * math.pi
        parts += [np.sin(when), np.cos(when)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def day_fraction(text: str) -> float | None:
    """The fraction of the year (``[0, 1)``) of an ISO date (``2018-05-11``, with or without a time), or ``None``."""
    try:
        date = datetime.date.fromisoformat(text[:10])
    except (TypeError, ValueError):
        return None
    days = 366 if date.year % 4 == 0 and (date.year % 100 != 0 or date.year % 400 == 0) else 365
    return (date.timetuple().tm_yday - 1) / days


def sample_sphere(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform on the sphere, as (latitude, longitude) in degrees."""
    lon = rng.uniform(-180.0, 180.0, n)
    lat = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    return lat, lon


# --------------------------------------------------------------------------------------------------------------------
# Reading places and dates


@dataclasses.dataclass
class Locations:
    """Where and when each image was taken (NaN where unknown or absurd).

    Attributes:
        source: The file read.
        image_ids: int64 ``[n]``.
        lat: float64 ``[n]`` degrees.
        lon: float64 ``[n]`` degrees.
        day: float64 ``[n]`` fraction of the year.
        counts: ``records``, ``with_location``, ``missing_location``, ``absurd_location``, ``missing_date``,
            ``absurd_date`` (dates among the records with a location).
    """

    source: Path
    image_ids: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    day: np.ndarray
    counts: dict[str, int]

    def lookup(self, image_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lat, lon, day) of these images; NaN for images this table does not hold."""
        where = index_of(self.image_ids, np.asarray(image_ids, dtype=np.int64))
        found = where >= 0
        out = []
        for values in (self.lat, self.lon, self.day):
            column = np.full(len(where), np.nan)
            column[found] = values[where[found]]
            out.append(column)
        return out[0], out[1], out[2]


def _coordinates(lat: Any, lon: Any) -> tuple[float, float, int]:
    if lat is None or lon is None:
        return math.nan, math.nan, _MISSING
    if (
        isinstance(lat, bool)
        or isinstance(lon, bool)
        or not isinstance(lat, int | float)
        or not isinstance(lon, int | float)
    ):
        return math.nan, math.nan, _ABSURD
    lat, lon = float(lat), float(lon)
    if not (math.isfinite(lat) and math.isfinite(lon)) or abs(lat) > 90 or abs(lon) > 180 or (lat == 0 and lon == 0):
        return math.nan, math.nan, _ABSURD
    return lat, lon, _OK


def load_locations(path: str | os.PathLike) -> Locations:
    """Read the places and dates of images from a 2017/2018 location file or a 2021 dataset JSON.

    A location file is a list of ``{id, lat, lon, user_id, date | date_c}``; a 2021 dataset JSON has ``latitude``,
    ``longitude`` and ``date`` in its image records. Missing and absurd coordinates and dates are counted and
    logged, and left NaN.

    Raises:
        ValueError: Unreadable JSON, a dataset JSON without coordinates, a record that is not an object, an id
            that is not an integer, or a repeated id (each naming the file and the JSON path).
    """
    path = Path(path)
    data = read_json(path)
    if isinstance(data, list):
        records, prefix, lat_key, lon_key, date_keys = data, "$", "lat", "lon", ("date", "date_c")
    elif isinstance(data, dict) and isinstance(data.get("images"), list):
        records, prefix, lat_key, lon_key, date_keys = data["images"], "$.images", "latitude", "longitude", ("date",)
        if records and not any(isinstance(r, dict) and ("latitude" in r or "longitude" in r) for r in records[:1000]):
            raise ValueError(
                f"{path}: $.images: no latitude/longitude fields (an iNat2017/2018 JSON?); give its location file "
                "(e.g. train2018_locations.json)"
            )
    else:
        raise ValueError(
            f"{path}: $: expected a location list or a dataset JSON with images, got {type(data).__name__}"
        )
    n = len(records)
    ids = np.empty(n, dtype=np.int64)
    lat, lon, day = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int8)
    date_status = np.zeros(n, dtype=np.int8)
    days: dict[str, float | None] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {prefix}[{i}]: expected an object, got {type(record).__name__}")
        image_id = record.get("id")
        if isinstance(image_id, bool) or not isinstance(image_id, int) or not 0 <= image_id < 2**63:
            raise ValueError(f"{path}: {prefix}[{i}].id: expected a non-negative integer image id, got {image_id!r}")
        ids[i] = image_id
        lat[i], lon[i], status[i] = _coordinates(record.get(lat_key), record.get(lon_key))
        text = next((record[k] for k in date_keys if record.get(k) not in (None, "")), None)
        if text is None:
            date_status[i] = _MISSING
            continue
        if not isinstance(text, str):
            date_status[i] = _ABSURD
            continue
        if text not in days:
            days[text] = day_fraction(text)
        value = days[text]
        if value is None:
            date_status[i] = _ABSURD
        else:
            day[i] = value
    unique, first = np.unique(ids, return_index=True)
    if len(unique) != n:
        seen = np.zeros(n, dtype=bool)
        seen[first] = True
        repeat = int(np.flatnonzero(~seen)[0])
        raise ValueError(f"{path}: {prefix}[{repeat}].id: image id {int(ids[repeat])} repeated")
    located = status == _OK
    counts = {
        "records": n,
        "with_location": int(located.sum()),
        "missing_location": int((status == _MISSING).sum()),
        "absurd_location": int((status == _ABSURD).sum()),
        "missing_date": int((located & (date_status == _MISSING)).sum()),
        "absurd_date": int((located & (date_status == _ABSURD)).sum()),
    }
    if counts["missing_location"] or counts["absurd_location"] or counts["absurd_date"]:
        _logger.info(
            "%s: %d of %d images without a usable location (%d missing, %d absurd), skipped; %d unreadable dates",
            path, n - counts["with_location"], n, counts["missing_location"], counts["absurd_location"],
            counts["absurd_date"],
        )  # fmt: skip
    return Locations(path, ids, lat, lon, day, counts)


def find_locations(data: str | os.PathLike, locations: str | os.PathLike | None = None) -> Path:
    """The file with the places of a dataset JSON's images.

    That is ``locations`` if given, else ``STEM_locations.json`` beside the JSON (2017/2018 releases), else the JSON
    itself (2021 image fields).
    """
    if locations is not None:
        return Path(locations)
    data = Path(data)
    beside = data.with_name(data.stem + "_locations.json")
    return beside if beside.is_file() else data


@dataclasses.dataclass
class Observations:
    """Located training observations.

    Attributes:
        lat: float64 ``[n]`` degrees.
        lon: float64 ``[n]`` degrees.
        day: float64 ``[n]`` fraction of the year (NaN where unknown).
        label: int64 ``[n]`` column of each observation's category in ``category_ids``.
        category_ids: int64 ``[C]``, the prior's columns.
        counts: What was read and skipped.
        sources: The files read (train JSON, locations).
    """

    lat: np.ndarray
    lon: np.ndarray
    day: np.ndarray
    label: np.ndarray
    category_ids: np.ndarray
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)


def load_observations(train: str | os.PathLike, *, locations: str | os.PathLike | None = None) -> Observations:
    """The located, labelled images of a training JSON (locations from :func:`find_locations`).

    The prior's columns are the categories with at least one located image (the others get a neutral factor when
    the prior is applied). Images without a location record are counted as ``no_location_record``.

    Raises:
        ValueError: Unreadable files, a JSON without annotations, or no located images at all.
    """
    train = Path(train)
    data = read_json(train)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list) or not annotations:
        raise ValueError(f"{train}: $.annotations: expected a non-empty list (a labelled train JSON)")
    try:
        image = np.fromiter((a["image_id"] for a in annotations), dtype=np.int64, count=len(annotations))
        category = np.fromiter((a["category_id"] for a in annotations), dtype=np.int64, count=len(annotations))
    except (KeyError, TypeError, ValueError) as error:
        bad = next((i for i, a in enumerate(annotations) if not _annotation_ok(a)), 0)
        raise ValueError(
            f"{train}: $.annotations[{bad}]: expected integer image_id and category_id ({error})"
        ) from None
    table = load_locations(find_locations(train, locations))
    lat, lon, day = table.lookup(image)
    no_record = int((~np.isin(image, table.image_ids)).sum())
    keep = np.isfinite(lat)
    category_ids, label = np.unique(category[keep], return_inverse=True)
    if not len(category_ids):
        raise ValueError(f"{table.source}: none of the {len(image)} images of {train} has a usable location")
    all_categories = np.unique(category)
    counts = {
        "images": len(image),
        "with_location": int(keep.sum()),
        "no_location_record": no_record,
        "missing_location": int((~keep).sum()) - no_record,
        "without_date": int((keep & ~np.isfinite(day)).sum()),
        "categories": len(all_categories),
        "categories_without_location": len(all_categories) - len(category_ids),
        "location_file": table.counts,
    }
    if counts["no_location_record"] or counts["missing_location"] or counts["categories_without_location"]:
        _logger.warning(
            "%s: %d of %d images skipped (%d without a location record, %d with a missing or absurd location); "
            "%d categories have no located image", train, len(image) - counts["with_location"], len(image),
            no_record, counts["missing_location"], counts["categories_without_location"],
        )  # fmt: skip
    return Observations(
        lat=lat[keep], lon=lon[keep], day=day[keep], label=label.astype(np.int64), category_ids=category_ids,
        counts=counts, sources={"train": str(train), "locations": str(table.source)},
    )  # fmt: skip


def _annotation_ok(annotation: Any) -> bool:
    return isinstance(annotation, dict) and all(
        isinstance(annotation.get(k), int) and not isinstance(annotation.get(k), bool)
        for k in ("image_id", "category_id")
    )
