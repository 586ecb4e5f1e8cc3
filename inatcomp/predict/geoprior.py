"""Where and when: a presence-only spatio-temporal prior over the categories, combined with image scores.

Source: O. Mac Aodha, E. Cole, P. Perona, "Presence-Only Geographical Priors for Fine-Grained Image
Classification", ICCV 2019 (iNat2018 val top-1 60.2 → 72.8). Written from the paper, not from its code.

**Inputs** (:func:`encode_inputs`, the paper's "wrap" encoding): longitude and latitude scaled to ``[-1, 1]``
(``lon / 180``, ``lat / 90``), each mapped to ``sin(πx), cos(πx)``, so -180° and 180° are the same point; with
dates, the day of the year scaled to ``[-1, 1]`` and mapped the same way, so 31 December is next to 1 January.

**Model** (:class:`GeoPriorNet`): a linear layer with ReLU to ``hidden`` units, ``layers`` residual blocks
(``x + relu(W2 dropout(relu(W1 x)))``) and a linear classifier without bias; a sigmoid per category gives the
prior ``P(y | place, date)``.

**Loss** ("full assume negative"): for each observation of category ``y``, ``λ · -log σ(z_y)`` for the true
category (``λ`` = :attr:`PriorConfig.pos_weight`, by default the number of categories, so the one positive
weighs as much as all the negatives), ``-log(1 - σ(z_c))`` for every other category at the observation's place
and date, and ``-log(1 - σ(z_c))`` for all categories at a random place (uniform on the sphere) and random day
of the year. Batches are class-balanced: each draw picks a category uniformly, then one of its observations.

**Data** (:func:`load_locations`, :func:`load_observations`): 2017/2018 location files (a list of records ``id,
lat, lon, user_id, date`` or ``date_c``) or the 2021 image fields (``latitude``, ``longitude``, ``date``).
Missing coordinates (null or absent) and absurd ones (not a number, outside ±90/±180, or exactly 0, 0, the usual
placeholder) are skipped and counted, never fatal; so are missing and unreadable dates. Structural problems (not
a list, a record without an integer id, repeated ids) are errors naming the file and the JSON path.

**Combination** (:func:`apply_prior`, :func:`evaluate_prior`): ``p(y | image, place) ∝ p(y | image) · P(y |
place, date)``, renormalised per image, streaming the prediction file in row chunks. Images without a usable
location keep their row bit for bit; an image with a place but no date gets the prior averaged over the year.
Prediction files hold probabilities (``score_kind`` ``prob``: also ``--average logit`` predictions, the softmax
of the mean logits); rank-ensemble scores (``rank``) are refused, since they are not probabilities.

A prior is saved as a checkpoint (:func:`inatcomp.models.factory.save_checkpoint`): ``PRIOR.safetensors`` with the
weights and ``PRIOR.json`` with ``format`` :data:`PRIOR_FORMAT`, the category ids in column order, the encoding,
the training options and the data counts. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inatcomp.fileio import read_json
from inatcomp.options import resolve_device

__all__ = [
    "PRIOR_FORMAT",
    "GeoPrior",
    "GeoPriorNet",
    "Locations",
    "Observations",
    "PriorConfig",
    "apply_prior",
    "day_fraction",
    "encode_inputs",
    "evaluate_prior",
    "find_locations",
    "load_locations",
    "load_observations",
    "load_prior",
    "plot_prior_map",
    "sample_sphere",
    "save_prior",
    "train_prior",
]

_logger = logging.getLogger(__name__)

#: The ``format`` of a prior's JSON metadata.
PRIOR_FORMAT = "inatcomp-geoprior-1"
#: The input encoding (recorded in the metadata).
ENCODING = "wrap"
#: An image with a place but no date gets the prior averaged over this many evenly spaced days.
YEAR_SAMPLES = 12
#: Rows per forward pass of the prior.
_PRIOR_BATCH = 1024

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
        from inatcomp.formats.predictions import index_of

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


# --------------------------------------------------------------------------------------------------------------------
# The model


class _ResidualLayer(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width), nn.ReLU()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class GeoPriorNet(nn.Module):
    """The prior's network: encoded place (and date) → one logit per category (see the module docstring).

    Args:
        inputs: 4 (place) or 6 (place and date).
        classes: Number of categories.
        hidden: Width of the residual layers.
        layers: Number of residual layers.
        dropout: Dropout inside each residual layer.
    """

    def __init__(self, *, inputs: int, classes: int, hidden: int = 256, layers: int = 4, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), *[_ResidualLayer(hidden, dropout) for _ in range(layers)]
        )
        self.classifier = nn.Linear(hidden, classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Training options of a prior (the paper's defaults, except where said).

    Attributes:
        use_dates: Encode the day of the year besides the place.
        hidden: Width of the residual layers (paper: 256).
        layers: Residual layers (paper: 4).
        dropout: Dropout in the residual layers (paper: 0.5).
        epochs: Passes; an epoch is ``max(n_observations / batch_size, min_steps_per_epoch)`` balanced batches.
        batch_size: Observations per batch (as many random background points are added).
        min_steps_per_epoch: Floor of the steps per epoch, so a small training set still trains long enough.
        lr: Adam learning rate (paper: 5e-4).
        lr_decay: Learning rate factor per epoch (paper: 0.98).
        pos_weight: λ, the weight of the true category's positive term; ``None``: the number of categories.
        seed: Seed of the initialisation, the batches and the background points.
        device: ``cpu``, ``cuda`` …; ``None`` picks CUDA when available.
        threads: CPU threads while training (``None``: torch's setting). One by default: the network is small,
            and with more threads than free cores (other processes, ``pytest -n``) torch's threads spin and a
            run is 20-40 times slower.
    """

    use_dates: bool = True
    hidden: int = 256
    layers: int = 4
    dropout: float = 0.5
    epochs: int = 30
    batch_size: int = 1024
    min_steps_per_epoch: int = 20
    lr: float = 5e-4
    lr_decay: float = 0.98
    pos_weight: float | None = None
    seed: int = 0
    device: str | None = None
    threads: int | None = 1

    def check(self) -> None:
        """Raise ValueError on an impossible option."""
        for name in ("hidden", "epochs", "batch_size", "min_steps_per_epoch", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.layers < 0 or not 0 <= self.dropout < 1 or self.lr <= 0 or not 0 < self.lr_decay <= 1:
            raise ValueError(
                f"need layers ≥ 0, 0 ≤ dropout < 1, lr > 0, 0 < lr_decay ≤ 1; got {self.layers}, {self.dropout}, "
                f"{self.lr}, {self.lr_decay}"
            )
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {self.pos_weight}")


@dataclasses.dataclass
class GeoPrior:
    """A trained prior: the network, its columns and how it encodes its inputs.

    Attributes:
        net: The network (eval mode).
        category_ids: int64 ``[C]``, the category of each output column.
        use_dates: Whether the network takes the day of the year.
        metadata: What is saved beside the weights (format, options, counts).
        path: The weights file it was saved to or loaded from, if any.
    """

    net: GeoPriorNet
    category_ids: np.ndarray
    use_dates: bool
    metadata: dict[str, Any]
    path: Path | None = None

    def scores(
        self,
        *,
        lat: np.ndarray,
        lon: np.ndarray,
        day: np.ndarray | None = None,
        columns: np.ndarray | None = None,
    ) -> np.ndarray:
        """``P(category | place, date)`` for each place, float32 ``[n, C]`` (or ``[n, len(columns)]``).

        Args:
            lat: Latitudes in degrees (finite).
            lon: Longitudes in degrees (finite).
            day: Fractions of the year; NaN (or ``None``) averages the prior over the year. Ignored by a
                place-only prior.
            columns: Only these output columns (a map of one category needs one row of the classifier).

        Raises:
            ValueError: A coordinate that is not finite.
        """
        lat = np.asarray(lat, dtype=np.float64).reshape(-1)
        lon = np.asarray(lon, dtype=np.float64).reshape(-1)
        if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
            raise ValueError("prior scores need finite coordinates (filter missing locations first)")
        n = len(lat)
        weight = self.net.classifier.weight
        if columns is not None:
            weight = weight[torch.as_tensor(np.asarray(columns, dtype=np.int64))]
        out = np.empty((n, weight.shape[0]), dtype=np.float32)
        if not self.use_dates:
            days = None
        elif day is None:
            days = np.full(n, np.nan)
        else:
            days = np.asarray(day, dtype=np.float64).reshape(-1)
            if len(days) != n:
                raise ValueError(f"{len(days)} days for {n} places")
        grid = (np.arange(YEAR_SAMPLES) + 0.5) / YEAR_SAMPLES

        def prob(rows: slice | np.ndarray, when: np.ndarray | None) -> torch.Tensor:
            x = encode_inputs(lat=lat[rows], lon=lon[rows], day=when)
            return torch.sigmoid(self.net.features(torch.from_numpy(x).to(weight.device)) @ weight.T)

        with torch.inference_mode():
            for start in range(0, n, _PRIOR_BATCH):
                part = slice(start, min(start + _PRIOR_BATCH, n))
                if days is None:
                    out[part] = prob(part, None).cpu().numpy()
                    continue
                d = days[part]
                known = np.isfinite(d)
                chunk = prob(part, np.where(known, d, 0.0))
                if not known.all():  # no date: the mean over the year, one day of the year at a time
                    rows = np.flatnonzero(~known) + start
                    year = sum(prob(rows, np.full(len(rows), g)) for g in grid) / YEAR_SAMPLES
                    chunk[torch.from_numpy(rows - start).to(chunk.device)] = year
                out[part] = chunk.cpu().numpy()
        return out


def _full_assume_negative(
    logits: torch.Tensor, background: torch.Tensor, label: torch.Tensor, pos_weight: float
) -> torch.Tensor:
    """The "full assume negative" loss; ``-log σ(z) = softplus(-z)``, ``-log(1 - σ(z)) = softplus(z)``."""
    negative = nn.functional.softplus(logits)
    at_label = logits.gather(1, label[:, None])
    observed = (
        negative.sum() - nn.functional.softplus(at_label).sum() + pos_weight * nn.functional.softplus(-at_label).sum()
    )
    return observed / logits.numel() + nn.functional.softplus(background).mean()


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _training_points(obs: Observations, *, use_dates: bool) -> tuple[np.ndarray, ...]:
    """The observations a prior trains on: ``lat, lon, day, label`` (with dates: the dated ones only)."""
    lat, lon, day, label = obs.lat, obs.lon, obs.day, obs.label
    if use_dates:
        dated = np.isfinite(day)
        if not dated.any():
            raise ValueError(
                f"{obs.sources.get('train', 'the data')}: no located image has a date; train with no dates"
            )
        if not dated.all():
            _logger.warning("%d located images without a date left out of a prior with dates", int((~dated).sum()))
        lat, lon, day, label = lat[dated], lon[dated], day[dated], label[dated]
    return lat, lon, day, label


def train_prior(
    data: Observations | str | os.PathLike,
    *,
    locations: str | os.PathLike | None = None,
    config: PriorConfig | None = None,
    out: str | os.PathLike | None = None,
) -> GeoPrior:
    """Train a prior on presence-only observations (see the module docstring for the model and loss).

    Args:
        data: Observations, or a labelled train JSON for :func:`load_observations`.
        locations: The location file of a train JSON (default: :func:`find_locations`).
        config: Training options (default :class:`PriorConfig`).
        out: Save the prior here (``OUT.safetensors`` and ``OUT.json``; see :func:`save_prior`).

    Raises:
        ValueError: Bad options or unusable data.
    """
    config = config or PriorConfig()
    config.check()
    obs = data if isinstance(data, Observations) else load_observations(data, locations=locations)
    counts = dict(obs.counts)
    lat, lon, day, label = _training_points(obs, use_dates=config.use_dates)
    classes = len(obs.category_ids)
    per_class = np.bincount(label, minlength=classes)
    present = np.flatnonzero(per_class)
    order = np.argsort(label, kind="stable")
    starts = np.concatenate([[0], np.cumsum(per_class)[:-1]])
    pos_weight = float(config.pos_weight if config.pos_weight is not None else classes)
    steps_per_epoch = max(math.ceil(len(label) / config.batch_size), config.min_steps_per_epoch)
    device = resolve_device(config.device)
    rng = np.random.default_rng([config.seed, 29])
    inputs = 6 if config.use_dates else 4
    start_time = time.perf_counter()
    with _torch_threads(config.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = GeoPriorNet(
            inputs=inputs, classes=classes, hidden=config.hidden, layers=config.layers, dropout=config.dropout
        ).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
        schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay)
        net.train()
        history = []
        for _epoch in range(config.epochs):
            total = 0.0
            for _ in range(steps_per_epoch):
                cls = present[rng.integers(len(present), size=config.batch_size)]
                pick = order[starts[cls] + (rng.random(config.batch_size) * per_class[cls]).astype(np.int64)]
                b_lat, b_lon = sample_sphere(config.batch_size, rng)
                if config.use_dates:
                    x = encode_inputs(lat=lat[pick], lon=lon[pick], day=day[pick])
                    xb = encode_inputs(lat=b_lat, lon=b_lon, day=rng.random(config.batch_size))
                else:
                    x, xb = encode_inputs(lat=lat[pick], lon=lon[pick]), encode_inputs(lat=b_lat, lon=b_lon)
                logits = net(torch.from_numpy(np.concatenate([x, xb])).to(device))
                target = torch.from_numpy(label[pick]).to(device)
                loss = _full_assume_negative(
                    logits[: config.batch_size], logits[config.batch_size :], target, pos_weight
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
            schedule.step()
            history.append(total / steps_per_epoch)
    net.eval()
    seconds = time.perf_counter() - start_time
    _logger.info(
        "geo prior: %d categories, %d observations, %d epochs × %d steps in %.1f s, final loss %.4f",
        classes, len(label), config.epochs, steps_per_epoch, seconds, history[-1],
    )  # fmt: skip
    counts["trained_on"] = len(label)
    metadata = {
        "format": PRIOR_FORMAT,
        "category_ids": obs.category_ids.tolist(),
        "num_classes": classes,
        "use_dates": config.use_dates,
        "encoding": ENCODING,
        "inputs": inputs,
        "hidden": config.hidden,
        "layers": config.layers,
        "dropout": config.dropout,
        "config": {**dataclasses.asdict(config), "pos_weight": pos_weight},
        "loss": "full assume negative (Mac Aodha et al. 2019)",
        "steps_per_epoch": steps_per_epoch,
        "loss_history": history,
        "train_seconds": seconds,
        "counts": counts,
        "observations_per_category": np.bincount(obs.label, minlength=classes).tolist(),
        **obs.sources,
    }
    prior = GeoPrior(net=net.cpu(), category_ids=obs.category_ids.copy(), use_dates=config.use_dates, metadata=metadata)
    if out is not None:
        save_prior(prior, out)
    return prior


def save_prior(prior: GeoPrior, path: str | os.PathLike) -> Path:
    """Write ``PATH.safetensors`` (weights) and ``PATH.json`` (metadata) atomically; returns the weights file."""
    from inatcomp.models.factory import save_checkpoint

    weights = save_checkpoint(path, prior.net, prior.metadata)
    prior.path = weights
    _logger.info("geo prior saved: %s", weights)
    return weights


def load_prior(path: str | os.PathLike, *, device: str | None = None) -> GeoPrior:
    """Load a prior saved by :func:`save_prior` (a ``.safetensors`` file or its stem).

    Raises:
        ValueError: Missing files, or metadata or weights that are not a geo prior's.
    """
    from inatcomp.models.factory import load_checkpoint, resolve_checkpoint

    state_dict, meta, _ = load_checkpoint(path)
    where = resolve_checkpoint(path).with_suffix(".json")
    if not isinstance(meta, dict) or meta.get("format") != PRIOR_FORMAT:
        raise ValueError(f"{where}: $.format: expected {PRIOR_FORMAT!r} (a geo prior), got {_get(meta, 'format')!r}")
    try:
        category_ids = np.asarray(meta["category_ids"], dtype=np.int64)
        net = GeoPriorNet(
            inputs=int(meta["inputs"]),
            classes=len(category_ids),
            hidden=int(meta["hidden"]),
            layers=int(meta["layers"]),
            dropout=float(meta["dropout"]),
        )
        use_dates = bool(meta["use_dates"])
        net.load_state_dict(state_dict)
    except KeyError as error:
        raise ValueError(f"{where}: $.{error.args[0]}: missing") from None
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{where}: weights and metadata do not match ({str(error).splitlines()[0]})") from None
    if meta.get("encoding", ENCODING) != ENCODING or int(meta["inputs"]) != (6 if use_dates else 4):
        raise ValueError(
            f"{where}: $.encoding: {meta.get('encoding')!r} with {meta['inputs']} inputs is not known here"
        )
    net = net.to(torch.device(device)) if device else net
    return GeoPrior(
        net=net.eval(),
        category_ids=category_ids,
        use_dates=use_dates,
        metadata=meta,
        path=where.with_suffix(".safetensors"),
    )


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


# --------------------------------------------------------------------------------------------------------------------
# Combining with image predictions


@dataclasses.dataclass
class _Chunk:
    start: int
    original: np.ndarray  # float16 [r, C]
    combined: np.ndarray  # float32 [r, C]; rows without a location equal the original
    located: np.ndarray  # bool [r]
    prior: np.ndarray | None  # float32 [located rows, C] in the prediction's columns (neutral where unknown)


def _prior_source(preds: Any, locations: str | os.PathLike | None) -> Path:
    if locations is not None:
        return Path(locations)
    data = preds.header.get("data")
    if not data:
        raise ValueError(f"{preds.path}: header names no data JSON; give the locations (--locations)")
    return find_locations(data)


def _combined_chunks(
    preds: Any, prior: GeoPrior, table: Locations, chunk_rows: int | None, stats: dict[str, int], *, keep_prior: bool
) -> Iterator[_Chunk]:
    """Stream a prediction file's rows with the prior applied (see :func:`apply_prior`).

    Memory is a few float32 copies of one chunk (the prior's scores, the product, the combined rows).
    """
    from inatcomp.formats.predictions import index_of

    kind = preds.header.get("score_kind", "prob")
    if kind != "prob":
        raise ValueError(
            f"{preds.path}: score_kind {kind!r}: the scores are not probabilities; apply the prior to each member "
            "before a rank ensemble, or ensemble with mean-prob"
        )
    column = index_of(prior.category_ids, preds.category_ids)
    known = column >= 0
    if not known.all():
        _logger.warning(
            "%d of %d categories of %s have no prior (no located training image): a neutral factor for them",
            int((~known).sum()), preds.n_classes, preds.path,
        )  # fmt: skip
    stats["categories_without_prior"] = int((~known).sum())
    lat, lon, day = table.lookup(preds.image_ids)
    has_place = np.isfinite(lat)
    if not has_place.any():
        _logger.warning("no image of %s has a location in %s: predictions unchanged", preds.path, table.source)
    for start, chunk in preds.iter_chunks(chunk_rows):
        rows = slice(start, start + len(chunk))
        combined = chunk.astype(np.float32)
        if (combined < 0).any() or not np.isfinite(combined).all():
            raise ValueError(f"{preds.path}: rows {start}-{start + len(chunk) - 1} hold negative or non-finite scores")
        located = has_place[rows].copy()
        kept = None
        if located.any():
            d = day[rows][located] if prior.use_dates else None
            raw = prior.scores(lat=lat[rows][located], lon=lon[rows][located], day=d)
            factor = raw[:, np.maximum(column, 0)]
            if not known.all():
                factor[:, ~known] = raw.mean(axis=1, keepdims=True)
            del raw
            idx = np.flatnonzero(located)
            product = combined[idx] * factor
            total = product.sum(axis=1, keepdims=True)
            ok = (total[:, 0] > 0) & np.isfinite(total[:, 0])
            stats["zero_products"] += int((~ok).sum())
            product /= np.where(ok[:, None], total, 1.0)
            combined[idx[ok]] = product[ok]
            located[idx[~ok]] = False
            kept = factor[ok] if keep_prior else None
            if prior.use_dates:
                stats["located_without_date"] += int((~np.isfinite(d[ok])).sum())
        stats["with_location"] += int(located.sum())
        yield _Chunk(start, chunk, combined, located, kept)


def apply_prior(
    predictions: str | os.PathLike,
    *,
    prior: GeoPrior | str | os.PathLike,
    out: str | os.PathLike,
    locations: Locations | str | os.PathLike | None = None,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Multiply a prediction file's probabilities by the prior, renormalise, and write a new prediction file.

    Images without a usable location (none in ``locations``, missing or absurd) keep their row unchanged; an image
    with a place but no date gets the prior averaged over the year. ``out`` may be ``predictions`` itself (it is
    replaced when the new file is complete).

    Args:
        predictions: A prediction folder (``NAME.pred``) of probabilities.
        prior: A :class:`GeoPrior` or the path of a saved one.
        out: The prediction folder to write.
        locations: Location file or 2021 dataset JSON with the images' places; default: from the data JSON named
            in the prediction header (:func:`find_locations`).
        chunk_rows: Rows per chunk (default: about 64 MB of float32).

    Returns:
        What was done: ``images``, ``with_location``, ``without_location``, ``located_without_date``,
        ``categories_without_prior``, ``zero_products`` (rows left unchanged because every product was 0).

    Raises:
        ValueError: Unreadable inputs, or scores that are not probabilities.
    """
    from inatcomp.formats.predictions import PredictionWriter, open_predictions

    preds = open_predictions(predictions)
    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    table = locations if isinstance(locations, Locations) else load_locations(_prior_source(preds, locations))
    stats = {"with_location": 0, "located_without_date": 0, "zero_products": 0, "categories_without_prior": 0}
    structural = {"format", "n_images", "n_classes", "score_kind", "files"}
    header = {k: v for k, v in preds.header.items() if k not in structural}
    with PredictionWriter(out, image_ids=preds.image_ids, category_ids=preds.category_ids, header=header) as writer:
        for chunk in _combined_chunks(preds, prior, table, chunk_rows, stats, keep_prior=False):
            rows = chunk.combined.astype("<f2")
            rows[~chunk.located] = chunk.original[~chunk.located]
            writer.write(rows)
        result = {
            "images": preds.n_images,
            **stats,
            "without_location": preds.n_images - stats["with_location"],
        }
        writer.header["geo_prior"] = {
            "prior": str(prior.path) if prior.path else None,
            "locations": str(table.source),
            "input": str(predictions),
            "use_dates": prior.use_dates,
            **result,
        }
    _logger.info(
        "%s: geo prior applied to %d of %d images (%d without a location left unchanged)",
        out, stats["with_location"], preds.n_images, result["without_location"],
    )  # fmt: skip
    return result


def evaluate_prior(
    predictions: str | os.PathLike,
    labels: str | os.PathLike,
    *,
    prior: GeoPrior | str | os.PathLike,
    locations: Locations | str | os.PathLike | None = None,
    k: int = 3,
    chunk_rows: int | None = None,
) -> dict[str, Any]:
    """Top-1 and top-k error of image predictions with and without the prior (nothing is written).

    Args:
        predictions: Prediction folder of a labelled split (val).
        labels: The labelled competition JSON.
        prior: A :class:`GeoPrior` or the path of a saved one.
        locations: The split's places (default: from ``labels``, :func:`find_locations`).
        k: The k of the top-k error.
        chunk_rows: Rows per chunk.

    Returns:
        ``images``, ``with_location``, ``use_dates``, ``image`` and ``combined`` (each ``top1_error``,
        ``top<k>_error``), ``prior_alone`` (the prior's own errors on the located images), ``top1_gain`` and
        ``top<k>_gain`` (error points removed by the prior, as fractions), and the application counts.

    Raises:
        ValueError: Unreadable files, ids that do not match.
    """
    from inatcomp.formats.predictions import expected_columns, open_predictions, top_k_columns
    from inatcomp.score.scoring import top_k_hits

    preds = open_predictions(predictions)
    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    table = locations if isinstance(locations, Locations) else load_locations(find_locations(labels, locations))
    expected = expected_columns(preds, labels, source=predictions).columns
    stats = {"with_location": 0, "located_without_date": 0, "zero_products": 0, "categories_without_prior": 0}
    hits = {name: [0, 0] for name in ("image", "combined", "prior_alone")}
    for chunk in _combined_chunks(preds, prior, table, chunk_rows, stats, keep_prior=True):
        want = expected[chunk.start : chunk.start + len(chunk.original)]
        for name, scores, target in (
            ("image", chunk.original, want),
            ("combined", chunk.combined, want),
            ("prior_alone", chunk.prior, want[chunk.located]),
        ):
            if scores is None or not len(scores):
                continue
            ranked = top_k_columns(scores, max(k, 1))
            hits[name][0] += int(top_k_hits(ranked, target, 1).sum())
            hits[name][1] += int(top_k_hits(ranked, target, k).sum())
    n, located = preds.n_images, stats["with_location"]

    def errors(name: str, total: int) -> dict[str, float | None]:
        h1, hk = hits[name]
        return {"top1_error": 1 - h1 / total if total else None, f"top{k}_error": 1 - hk / total if total else None}

    image, combined = errors("image", n), errors("combined", n)
    return {
        "predictions": str(predictions),
        "labels": str(labels),
        "prior": str(prior.path) if prior.path else None,
        "use_dates": prior.use_dates,
        "images": n,
        "k": k,
        **stats,
        "image": image,
        "combined": combined,
        "prior_alone": errors("prior_alone", located),
        "top1_gain": image["top1_error"] - combined["top1_error"],
        f"top{k}_gain": image[f"top{k}_error"] - combined[f"top{k}_error"],
    }


# --------------------------------------------------------------------------------------------------------------------
# A map


def plot_prior_map(
    prior: GeoPrior | str | os.PathLike,
    *,
    out: str | os.PathLike,
    category_id: int | None = None,
    day: float | None = None,
    points: tuple[Sequence[float], Sequence[float]] | None = None,
    resolution: float = 1.0,
    title: str | None = None,
) -> Path:
    """An equirectangular PNG map of one category's prior (longitude across, latitude up).

    Args:
        prior: A :class:`GeoPrior` or the path of a saved one.
        out: The PNG to write.
        category_id: The category (default: the one with the most training observations).
        day: Fraction of the year for a prior with dates (default: averaged over the year).
        points: ``(lat, lon)`` of observations to mark on the map (e.g. the training images of the category).
        resolution: Grid step in degrees.
        title: Plot title (default: the category and the day).

    Raises:
        ValueError: A category the prior does not have, or a bad resolution.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from inatcomp.formats.validate import write_atomic

    prior = prior if isinstance(prior, GeoPrior) else load_prior(prior)
    if category_id is None:
        counts = prior.metadata.get("observations_per_category") or [0]
        category_id = int(prior.category_ids[int(np.argmax(counts))])
    columns = np.flatnonzero(prior.category_ids == category_id)
    if not len(columns):
        raise ValueError(f"category {category_id}: not in the prior (its categories: {len(prior.category_ids)})")
    if not 0.05 <= resolution <= 30:
        raise ValueError(f"resolution must be in [0.05, 30] degrees, got {resolution}")
    lons = np.arange(-180 + resolution / 2, 180, resolution)
    lats = np.arange(90 - resolution / 2, -90, -resolution)
    grid_lat, grid_lon = np.meshgrid(lats, lons, indexing="ij")
    days = None if day is None else np.full(grid_lat.size, float(day))
    values = prior.scores(lat=grid_lat.ravel(), lon=grid_lon.ravel(), day=days, columns=columns)
    image = values[:, 0].reshape(grid_lat.shape)
    figure = Figure(figsize=(9.0, 4.8), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    shown = axes.imshow(
        image, extent=(-180, 180, -90, 90), origin="upper", cmap="viridis", vmin=0, vmax=1, aspect="auto"
    )
    if points is not None and len(points[0]):
        axes.scatter(points[1], points[0], s=6, c="#ff3030", marker="o", linewidths=0, label="training images")
        axes.legend(loc="lower left", fontsize=8)
    when = "averaged over the year" if prior.use_dates and day is None else ""
    if prior.use_dates and day is not None:
        when = f"day {int(day * 365) + 1} of the year"
    axes.set_title(title or f"geo prior of category {category_id}" + (f", {when}" if when else ""))
    axes.set_xlabel("longitude (°)")
    axes.set_ylabel("latitude (°)")
    axes.set_xticks(range(-180, 181, 60))
    axes.set_yticks(range(-90, 91, 30))
    label = "P(category | place, date)" if prior.use_dates else "P(category | place)"
    figure.colorbar(shown, ax=axes, label=label, fraction=0.03)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_atomic(out, buffer.getvalue())
