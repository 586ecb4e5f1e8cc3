"""The geo prior's model: a presence-only spatio-temporal prior over the categories, trained, saved and loaded.

Source: O. Mac Aodha, E. Cole, P. Perona, "Presence-Only Geographical Priors for Fine-Grained Image
Classification", ICCV 2019 (iNat2018 val top-1 60.2 → 72.8). Written from the paper, not from its code. Its inputs
(places and dates, and their encoding) are read by :mod:`inatcomp.predict.geodata`; it is combined with image
predictions by :mod:`inatcomp.predict.geocombine`.

**Model** (:class:`GeoPriorNet`): a linear layer with ReLU to ``hidden`` units, ``layers`` residual blocks
(``x + relu(W2 dropout(relu(W1 x)))``) and a linear classifier without bias; a sigmoid per category gives the
prior ``P(y | place, date)``.

**Loss** ("full assume negative"): for each observation of category ``y``, ``λ · -log σ(z_y)`` for the true
category (``λ`` = :attr:`PriorConfig.pos_weight`, by default the number of categories, so the one positive
weighs as much as all the negatives), ``-log(1 - σ(z_c))`` for every other category at the observation's place
and date, and ``-log(1 - σ(z_c))`` for all categories at a random place (uniform on the sphere) and random day
of the year. Batches are class-balanced: each draw picks a category uniformly, then one of its observations.

A prior is saved as a checkpoint (:func:`inatcomp.models.checkpoints.save_checkpoint`): ``PRIOR.safetensors`` with
the weights and ``PRIOR.json`` with ``format`` :data:`PRIOR_FORMAT`, the category ids in column order, the encoding,
the training options and the data counts. Nothing is unpickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inatcomp.fileio import resolve_checkpoint
from inatcomp.models.checkpoints import load_checkpoint, save_checkpoint
from inatcomp.options import resolve_device
from inatcomp.predict.geodata import ENCODING, Observations, encode_inputs, load_observations, sample_sphere

__all__ = [
    "PRIOR_FORMAT",
    "GeoPrior",
    "GeoPriorNet",
    "PriorConfig",
    "load_prior",
    "save_prior",
    "train_prior",
]

_logger = logging.getLogger(__name__)

#: The ``format`` of a prior's JSON metadata.
PRIOR_FORMAT = "inatcomp-geoprior-1"
#: An image with a place but no date gets the prior averaged over this many evenly spaced days.
YEAR_SAMPLES = 12
#: Rows per forward pass of the prior.
_PRIOR_BATCH = 1024


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
        data: Observations, or a labelled train JSON for :func:`~inatcomp.predict.geodata.load_observations`.
        locations: The location file of a train JSON (default: :func:`~inatcomp.predict.geodata.find_locations`).
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
    weights = save_checkpoint(path, prior.net, prior.metadata)
    prior.path = weights
    _logger.info("geo prior saved: %s", weights)
    return weights


def load_prior(path: str | os.PathLike, *, device: str | None = None) -> GeoPrior:
    """Load a prior saved by :func:`save_prior` (a ``.safetensors`` file or its stem).

    Raises:
        ValueError: Missing files, or metadata or weights that are not a geo prior's.
    """
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
