"""The observations of a synthetic world, drawn for a taxonomy: who saw which species, where, when, in which photos.

:func:`generate_export` draws, in a fixed order from one random stream (so the same seed gives the same
export): each species' frequency, range and season; the observations (species, place, observer); their
dates; the community's identifications; the observations and observers tables with the gaps and oddities
of a real export; the photos table; each photo's rendering parameters (for :mod:`inatcomp.world.photos`);
and the two truth tables no real export has (``synth_species``, ``synth_truth``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from inatcomp.formats.taxonomy import Supercategory
from inatcomp.world.render import BACKGROUND_KINDS
from inatcomp.world.taxa import SUPERCATEGORY_WEIGHTS, SynthTaxonomy

__all__ = ["GeneratedExport", "generate_export"]

_SUPERCATEGORIES = tuple(Supercategory)

_FIRST_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jia", "Kofi", "Lena")
_LAST_NAMES = ("Abe", "Berg", "Costa", "Diaz", "Eze", "Fox", "Gupta", "Holm", "Ito", "Jensen", "Khan", "Lopez")
_LICENSES = ("CC-BY-NC", "CC-BY", "CC0", "CC-BY-SA", "CC-BY-NC-SA", "CC-BY-NC-ND", "CC-BY-ND")
_LICENSE_WEIGHTS = (0.6, 0.15, 0.08, 0.05, 0.07, 0.04, 0.01)
#: Regions of the world (latitude range, longitude range, share of observers).
_REGIONS = (
    ((25, 50), (-125, -70), 0.30),  # North America
    ((36, 60), (-10, 30), 0.20),  # Europe
    ((-35, 5), (-75, -40), 0.08),  # South America
    ((-35, 10), (10, 40), 0.06),  # Africa
    ((20, 45), (100, 140), 0.10),  # East Asia
    ((-40, -15), (115, 155), 0.10),  # Australia
    ((-10, 20), (95, 125), 0.08),  # South-East Asia
    ((-47, -35), (166, 179.9), 0.08),  # New Zealand, near the antimeridian
)
_PHOTOS_PER_OBSERVATION = (1, 2, 3, 4)
_PHOTOS_PER_OBSERVATION_P = (0.55, 0.25, 0.12, 0.08)
_ASPECTS = ((4, 3), (3, 4), (1, 1))  # width : height
_ASPECT_P = (0.55, 0.25, 0.20)


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random version-4 UUID strings, vectorised (a million in well under a second)."""
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexdigits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = hexdigits[raw >> 4]
    digits[:, 1::2] = hexdigits[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    keep = [i for i in range(36) if i not in (8, 13, 18, 23)]
    out[:, keep] = digits
    return out.view("S36").ravel().astype(str)


@dataclasses.dataclass
class GeneratedExport:
    """Everything generated for an export, tables plus the per-photo rendering parameters."""

    taxa: pd.DataFrame
    observations: pd.DataFrame
    photos: pd.DataFrame
    observers: pd.DataFrame
    species: pd.DataFrame
    truth: pd.DataFrame
    render: dict[str, np.ndarray]


def _observer_table(rng: np.random.Generator, n: int) -> pd.DataFrame:
    ids = np.sort(rng.choice(np.arange(1, 20 * n + 1000), size=n, replace=False))
    first = np.asarray(_FIRST_NAMES)[rng.integers(len(_FIRST_NAMES), size=n)]
    last = np.asarray(_LAST_NAMES)[rng.integers(len(_LAST_NAMES), size=n)]
    login = np.char.add(np.char.add(np.char.lower(first), np.char.lower(last)), ids.astype(str))
    names = np.where(rng.random(n) < 0.4, np.char.add(np.char.add(first, " "), last), "")
    return pd.DataFrame({"observer_id": ids, "login": login, "name": names})


@dataclasses.dataclass
class _SpeciesTraits:
    """What each species is like before anything is observed: how common it is, where and when it lives.

    Attributes:
        ids: Taxon id of each species.
        weights: Relative frequency (Zipf-like over an order in which siblings sit near each other).
        region: Index into ``_REGIONS`` of the species' home region.
        centre_lat: Latitude of the range's centre.
        centre_lon: Longitude of the range's centre.
        range_sigma: Spread of the range in degrees of latitude (1.5 times that in longitude).
        season_peak: Day of the year the species is seen most.
        season_width: Spread of the season in days (1000: no season to speak of).
    """

    ids: np.ndarray
    weights: np.ndarray
    region: np.ndarray
    centre_lat: np.ndarray
    centre_lon: np.ndarray
    range_sigma: np.ndarray
    season_peak: np.ndarray
    season_width: np.ndarray


@dataclasses.dataclass
class _Observations:
    """Who saw what where, one entry per observation, before the community's identification.

    Attributes:
        species: Index of the true species.
        photos: Number of photos (1–4, exactly ``SynthConfig.photos`` in all).
        region: Index into ``_REGIONS`` of where it was made.
        lat: Latitude.
        lon: Longitude.
        observer: Index of the observer.
        n_observers: Observers drawn (some may end up with no observation).
    """

    species: np.ndarray
    photos: np.ndarray
    region: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    observer: np.ndarray
    n_observers: int


_REGION_P = np.array([r[2] for r in _REGIONS]) / np.array([r[2] for r in _REGIONS]).sum()
_REGION_LAT = (np.array([r[0][0] for r in _REGIONS]), np.array([r[0][1] for r in _REGIONS]))
_REGION_LON = (np.array([r[1][0] for r in _REGIONS]), np.array([r[1][1] for r in _REGIONS]))


def _species_traits(rng: np.random.Generator, taxonomy: SynthTaxonomy) -> _SpeciesTraits:
    """Draw each species' frequency, range and season.

    Frequency is Zipf-like over an order in which siblings sit near each other, so that siblings are common
    or rare together and pass the inclusion rules together (as in iNaturalist, where a well-observed genus
    tends to have several well-observed species).
    """
    n_species = len(taxonomy.species_rows)
    genus_index = np.unique(taxonomy.species_genus, return_inverse=True)[1]
    genus_key = rng.random(int(genus_index.max()) + 1 if n_species else 0)
    sibling_key = genus_key[genus_index] + rng.normal(0, 0.03, size=n_species)
    freq_rank = np.empty(n_species, dtype=np.int64)
    freq_rank[np.argsort(sibling_key, kind="stable")] = np.arange(1, n_species + 1)
    region = rng.choice(len(_REGIONS), size=n_species, p=_REGION_P)
    centre_lat = rng.uniform(_REGION_LAT[0][region], _REGION_LAT[1][region])
    centre_lon = rng.uniform(_REGION_LON[0][region], _REGION_LON[1][region])
    # Wide, overlapping ranges and mild seasons: place and date narrow the species down, as on iNaturalist,
    # without naming it (narrow ranges made a place-and-date prior alone beat the image models).
    range_sigma = rng.uniform(2.0, 10.0, size=n_species)
    season_peak = rng.integers(0, 365, size=n_species)
    season_width = np.where(rng.random(n_species) < 0.4, 1000.0, rng.uniform(25, 90, size=n_species))
    return _SpeciesTraits(
        ids=taxonomy.taxa["taxon_id"].to_numpy()[taxonomy.species_rows],
        weights=1.0 / freq_rank**1.1,
        region=region,
        centre_lat=centre_lat,
        centre_lon=centre_lon,
        range_sigma=range_sigma,
        season_peak=season_peak,
        season_width=season_width,
    )


def _observation_species(rng: np.random.Generator, n_photos: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photos per observation (exactly ``n_photos`` in all) and each observation's species.

    Every species gets an observation (two where photos allow); the rest are drawn by frequency.

    Returns:
        Photos per observation and species index of each observation.
    """
    n_species = len(weights)
    mean_photos = float(np.dot(_PHOTOS_PER_OBSERVATION, _PHOTOS_PER_OBSERVATION_P))
    estimate = int(n_photos / mean_photos * 1.2) + 10
    per_obs = rng.choice(_PHOTOS_PER_OBSERVATION, size=estimate, p=_PHOTOS_PER_OBSERVATION_P)
    cumulative = np.cumsum(per_obs)
    n_obs = int(np.searchsorted(cumulative, n_photos) + 1)
    per_obs = per_obs[:n_obs].copy()
    per_obs[-1] -= int(cumulative[n_obs - 1] - n_photos)
    n_obs = len(per_obs)
    guaranteed = min(n_obs, n_species * (2 if n_obs >= 2 * n_species else 1))
    obs_species = np.empty(n_obs, dtype=np.int64)
    obs_species[:guaranteed] = np.arange(guaranteed) % n_species
    obs_species[guaranteed:] = rng.choice(n_species, size=n_obs - guaranteed, p=weights / weights.sum())
    order = rng.permutation(n_obs)
    obs_species = obs_species[order]
    per_obs = per_obs[order]
    if per_obs.min() < 1:  # the truncated last observation may have landed anywhere: give it one photo
        deficit = int(1 - per_obs.min())
        per_obs[per_obs.argmin()] = 1
        per_obs[per_obs.argmax()] -= deficit
    return per_obs, obs_species


def _observation_places(
    rng: np.random.Generator, traits: _SpeciesTraits, obs_species: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each observation was made: mostly inside the species' range, sometimes a vagrant in another region.

    Returns:
        Region index, latitude and longitude of each observation.
    """
    n_obs = len(obs_species)
    obs_region = np.where(
        rng.random(n_obs) < 0.9,
        traits.region[obs_species],
        rng.choice(len(_REGIONS), size=n_obs, p=_REGION_P),
    )
    lat = traits.centre_lat[obs_species] + rng.normal(0, 1, n_obs) * traits.range_sigma[obs_species]
    lon = traits.centre_lon[obs_species] + rng.normal(0, 1, n_obs) * traits.range_sigma[obs_species] * 1.5
    vagrant = obs_region != traits.region[obs_species]
    lat[vagrant] = rng.uniform(_REGION_LAT[0][obs_region[vagrant]], _REGION_LAT[1][obs_region[vagrant]])
    lon[vagrant] = rng.uniform(_REGION_LON[0][obs_region[vagrant]], _REGION_LON[1][obs_region[vagrant]])
    lat = np.clip(lat, -89.9, 89.9)
    lon = (lon + 180.0) % 360.0 - 180.0
    return obs_region, lat, lon


def _observers_of(rng: np.random.Generator, obs_supercat: np.ndarray, obs_region: np.ndarray) -> tuple[int, np.ndarray]:
    """Who made each observation: heavy-tailed observers, each with a home region and 1–3 preferred supercategories.

    80 % of observations go to a local observer who prefers the supercategory (any local one when none does),
    the rest to any local observer; within a pool, observers are drawn by activity (Pareto).

    Returns:
        The number of observers and the observer index of each observation.
    """
    n_obs = len(obs_supercat)
    n_observers = max(3, n_obs // 12)
    activity = rng.pareto(1.1, size=n_observers) + 0.05
    observer_region = rng.choice(len(_REGIONS), size=n_observers, p=_REGION_P)
    sc_weights = np.array(list(SUPERCATEGORY_WEIGHTS.values()), dtype=np.float64) ** 0.6
    preferred = np.zeros((n_observers, len(_SUPERCATEGORIES)), dtype=bool)
    for k in range(3):
        pick = rng.choice(len(_SUPERCATEGORIES), size=n_observers, p=sc_weights / sc_weights.sum())
        preferred[np.arange(n_observers), pick] |= (k == 0) | (rng.random(n_observers) < 0.5)
    obs_observer = np.empty(n_obs, dtype=np.int64)
    specialist = rng.random(n_obs) < 0.8
    uniform = rng.random(n_obs)
    for region in range(len(_REGIONS)):
        locals_ = np.flatnonzero(observer_region == region)
        if len(locals_) == 0:
            locals_ = np.arange(n_observers)
        for supercat in range(len(_SUPERCATEGORIES)):
            rows = np.flatnonzero((obs_region == region) & (obs_supercat == supercat))
            if len(rows) == 0:
                continue
            fans = locals_[preferred[locals_, supercat]]
            for subset, pool in (
                (rows[specialist[rows]], fans if len(fans) else locals_),
                (rows[~specialist[rows]], locals_),
            ):
                cdf = np.cumsum(activity[pool])
                obs_observer[subset] = pool[np.minimum(np.searchsorted(cdf, uniform[subset] * cdf[-1]), len(pool) - 1)]
    return n_observers, obs_observer


def _draw_observations(
    rng: np.random.Generator, n_photos: int, taxonomy: SynthTaxonomy, traits: _SpeciesTraits
) -> _Observations:
    """What was seen, where and by whom (:func:`_observation_species`, :func:`_observation_places`,
    :func:`_observers_of`, in that order of draws)."""
    per_obs, obs_species = _observation_species(rng, n_photos, traits.weights)
    obs_region, lat, lon = _observation_places(rng, traits, obs_species)
    n_observers, obs_observer = _observers_of(rng, taxonomy.species_supercategory[obs_species], obs_region)
    return _Observations(
        species=obs_species,
        photos=per_obs,
        region=obs_region,
        lat=lat,
        lon=lon,
        observer=obs_observer,
        n_observers=n_observers,
    )


def _observation_dates(rng: np.random.Generator, traits: _SpeciesTraits, obs_species: np.ndarray) -> np.ndarray:
    """When: a year (more recent ones more often), and a day near the species' seasonal peak, as ISO text."""
    n_obs = len(obs_species)
    year = rng.choice(np.arange(2012, 2025), size=n_obs, p=np.linspace(1, 4, 13) / np.linspace(1, 4, 13).sum())
    day = (traits.season_peak[obs_species] + rng.normal(0, 1, n_obs) * traits.season_width[obs_species]).astype(
        np.int64
    ) % 365
    dates = (year - 1970).astype("datetime64[Y]").astype("datetime64[D]") + day.astype("timedelta64[D]")
    return np.datetime_as_string(dates, unit="D").astype(object)


def _identifications(
    rng: np.random.Generator, taxonomy: SynthTaxonomy, species_ids: np.ndarray, obs_species: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """What the community said: the quality grade and the taxon each observation is identified as.

    Some observations are identified only to genus (needs_id or casual), some to a subspecies/variety, a few
    of a hybrid's parent species to the hybrid, and 1 % to nothing (casual).

    Returns:
        Taxon id (``""`` for none) and quality grade of each observation, as object arrays.
    """
    n_obs = len(obs_species)
    taxa = taxonomy.taxa
    quality = rng.choice(np.array(["research", "needs_id", "casual"], dtype=object), size=n_obs, p=[0.62, 0.28, 0.10])
    taxon_of_obs = species_ids[obs_species].astype(object)
    to_genus = rng.random(n_obs) < 0.06
    taxon_of_obs[to_genus] = taxonomy.species_genus[obs_species[to_genus]]
    quality[to_genus] = np.where(rng.random(int(to_genus.sum())) < 0.85, "needs_id", "casual")
    has_infra = np.array([len(c) > 0 for c in taxonomy.infraspecific])
    to_infra = (~to_genus) & has_infra[obs_species] & (rng.random(n_obs) < 0.3)
    for i in np.flatnonzero(to_infra):
        children = taxonomy.infraspecific[obs_species[i]]
        taxon_of_obs[i] = children[int(rng.integers(len(children)))]
    if len(taxonomy.hybrid_rows):
        hybrid_ids = taxa["taxon_id"].to_numpy()[taxonomy.hybrid_rows]
        for hybrid_id, parent_species in zip(hybrid_ids, taxonomy.hybrid_species):
            rows = np.flatnonzero((obs_species == parent_species) & ~to_genus)[: int(rng.integers(2, 8))]
            taxon_of_obs[rows] = hybrid_id
    no_taxon = rng.random(n_obs) < 0.01
    taxon_of_obs[no_taxon] = ""
    quality[no_taxon] = "casual"
    return taxon_of_obs, quality


def _observation_tables(
    rng: np.random.Generator,
    obs: _Observations,
    taxon_of_obs: np.ndarray,
    quality: np.ndarray,
    observed_on: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The observations and observers tables, with the gaps and oddities of a real export.

    Coordinates and dates are missing more often on casual observations; positional accuracy is
    log-normal, sometimes missing and sometimes absurd. Observers who appear in no observation are dropped,
    as a real export would not list them.

    Returns:
        The observations table and the observers table.
    """
    n_obs = len(obs.species)
    observed_on = observed_on.copy()
    casual = quality == "casual"
    no_coords = rng.random(n_obs) < np.where(casual, 0.25, 0.03)
    no_date = rng.random(n_obs) < np.where(casual, 0.15, 0.01)
    accuracy = np.round(rng.lognormal(3.5, 1.3, n_obs)).astype(np.int64).astype(object)
    accuracy[rng.random(n_obs) < 0.15] = ""
    absurd = rng.random(n_obs) < 0.005
    accuracy[absurd] = rng.choice(np.array([-80, 106807033, 25000000, 999999], dtype=object), size=int(absurd.sum()))
    lat_text = np.char.mod("%.6f", obs.lat).astype(object)
    lon_text = np.char.mod("%.6f", obs.lon).astype(object)
    lat_text[no_coords] = ""
    lon_text[no_coords] = ""
    accuracy[no_coords] = ""
    observed_on[no_date] = ""
    anomaly = np.char.mod("%.4f", rng.beta(1, 20, n_obs))

    observers = _observer_table(rng, obs.n_observers)
    observer_ids = observers["observer_id"].to_numpy()[obs.observer]
    observations = pd.DataFrame(
        {
            "observation_uuid": _uuids(rng, n_obs),
            "observer_id": observer_ids,
            "latitude": lat_text,
            "longitude": lon_text,
            "positional_accuracy": accuracy,
            "taxon_id": taxon_of_obs,
            "quality_grade": quality,
            "observed_on": observed_on,
            "anomaly_score": anomaly,
        }
    )
    observers = observers[np.isin(observers["observer_id"].to_numpy(), observer_ids)].reset_index(drop=True)
    return observations, observers


def _photo_table(
    rng: np.random.Generator, n_photos: int, image_size: int, obs: _Observations, observations: pd.DataFrame
) -> pd.DataFrame:
    """The photos table: 1–4 per observation, the first at position 0, with a licence and an aspect ratio."""
    per_obs = obs.photos
    photo_obs = np.repeat(np.arange(len(per_obs)), per_obs)
    starts = np.cumsum(per_obs) - per_obs
    position = np.arange(n_photos) - np.repeat(starts, per_obs)
    photo_ids = 1000 + np.cumsum(rng.integers(1, 40, size=n_photos))
    aspect = rng.choice(len(_ASPECTS), size=n_photos, p=_ASPECT_P)
    aw = np.array([a[0] for a in _ASPECTS])[aspect]
    ah = np.array([a[1] for a in _ASPECTS])[aspect]
    long_side = image_size
    width = np.where(aw >= ah, long_side, np.round(long_side * aw / ah)).astype(np.int64)
    height = np.where(ah >= aw, long_side, np.round(long_side * ah / aw)).astype(np.int64)
    return pd.DataFrame(
        {
            "photo_uuid": _uuids(rng, n_photos),
            "photo_id": photo_ids,
            "observation_uuid": observations["observation_uuid"].to_numpy()[photo_obs],
            "observer_id": observations["observer_id"].to_numpy()[photo_obs],
            "extension": "jpg",
            "license": rng.choice(np.asarray(_LICENSES, dtype=object), size=n_photos, p=_LICENSE_WEIGHTS),
            "width": width,
            "height": height,
            "position": position,
        }
    )


def _sibling_index(genus: np.ndarray) -> np.ndarray:
    """Each species' place among the species of its genus (0, 1, ... in taxonomy order)."""
    seen: dict[int, int] = {}
    index = np.zeros(len(genus), dtype=np.int64)
    for i, g in enumerate(genus.tolist()):
        index[i] = seen.get(g, 0)
        seen[g] = index[i] + 1
    return index


def _render_parameters(
    rng: np.random.Generator, taxonomy: SynthTaxonomy, traits: _SpeciesTraits, obs: _Observations, photos: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Per-photo rendering parameters: the species' lineage, the observer's camera style, pose and light.

    The subject's bounding box usually spans 60-110 % of the frame's shorter side (the subject fills 20-70 %
    of the frame), 12 % of photos show it small; centred within the middle 40 % of the frame, a large subject
    is often cut by the frame's edge. 60 % of photos have the species' habitat as background, the rest the
    observer's usual one; half show the organism facing the other way.
    """
    n_photos = len(photos)
    n_obs, n_observers = len(obs.species), obs.n_observers
    photo_obs = np.repeat(np.arange(n_obs), obs.photos)
    photo_species = obs.species[photo_obs]
    photo_observer = obs.observer[photo_obs]
    small = rng.random(n_photos) < 0.12
    return {
        "photo_id": photos["photo_id"].to_numpy(),
        "width": photos["width"].to_numpy(),
        "height": photos["height"].to_numpy(),
        "supercategory": taxonomy.species_supercategory[photo_species],
        "family": taxonomy.species_family[photo_species],
        "genus": taxonomy.species_genus[photo_species],
        "species": traits.ids[photo_species],
        "sibling": _sibling_index(taxonomy.species_genus)[photo_species],
        "centre_x": rng.uniform(0.3, 0.7, n_photos),
        "centre_y": rng.uniform(0.3, 0.7, n_photos),
        "radius": np.where(small, rng.uniform(0.14, 0.26, n_photos), rng.uniform(0.3, 0.55, n_photos)),
        "angle": rng.uniform(0, 2 * np.pi, n_photos),
        "flip": rng.random(n_photos) < 0.5,
        "articulation": rng.random(n_photos),
        "brightness": rng.uniform(0.7, 1.2, n_photos),
        "contrast": rng.uniform(0.8, 1.15, n_photos),
        "individual_hue": rng.normal(0, 0.01, n_obs)[photo_obs],
        "in_habitat": rng.random(n_photos) < 0.6,
        "gain": (1.0 + rng.normal(0, 0.08, (n_observers, 3)))[photo_observer],
        "background": rng.integers(0, len(BACKGROUND_KINDS), n_observers)[photo_observer],
        "blur": np.where(rng.random(n_observers) < 0.3, rng.uniform(0.6, 1.4, n_observers), 0.0)[photo_observer],
        "noise": rng.uniform(0.0, 0.04, n_observers)[photo_observer],
        "quality": rng.integers(70, 96, n_observers)[photo_observer],
    }


def _truth_tables(
    taxonomy: SynthTaxonomy, traits: _SpeciesTraits, obs: _Observations, observations: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The taxa table as the export writes it, and the two truth files no real export has.

    Returns:
        ``taxa`` (``active`` as ``true``/``false``), ``synth_species`` (range, season, frequency of each
        species) and ``synth_truth`` (the true species of every observation).
    """
    species_table = pd.DataFrame(
        {
            "taxon_id": traits.ids,
            "supercategory": np.array([s.value for s in _SUPERCATEGORIES])[taxonomy.species_supercategory],
            "range_latitude": np.round(traits.centre_lat, 4),
            "range_longitude": np.round(traits.centre_lon, 4),
            "range_sigma_degrees": np.round(traits.range_sigma, 4),
            "season_peak_day": traits.season_peak,
            "season_width_days": np.round(traits.season_width, 2),
            "frequency_weight": np.round(traits.weights / traits.weights.sum(), 8),
        }
    )
    truth = pd.DataFrame(
        {"observation_uuid": observations["observation_uuid"].to_numpy(), "true_taxon_id": traits.ids[obs.species]}
    )
    taxa_out = taxonomy.taxa[["taxon_id", "ancestry", "rank_level", "rank", "name", "active"]].copy()
    taxa_out["active"] = np.where(taxa_out["active"].to_numpy(), "true", "false")
    return taxa_out, species_table, truth


def generate_export(
    taxonomy: SynthTaxonomy, *, seed: int, photos: int, image_size: int, block: int = 0
) -> GeneratedExport:
    """Everything of an export but the images, in phases that share one random stream (their order is fixed).

    Species traits, then the observations (species, place, observer), dates, identifications, the
    observations and observers tables, photos, rendering parameters; the truth tables draw nothing.

    Args:
        taxonomy: The species and their taxa.
        seed: Seed (of ``SynthConfig``).
        photos: Number of photos in the export.
        image_size: Long side of the photos in pixels.
        block: Block of a large export generated block by block: the species' traits are drawn first from
            the seed's stream (the same in every block), then block 0 goes on in that stream and block k > 0
            draws the rest from a stream of its own, ``[seed, 3, k]``.
    """
    rng = np.random.default_rng([seed, 3])
    traits = _species_traits(rng, taxonomy)
    if block:
        rng = np.random.default_rng([seed, 3, block])
    obs = _draw_observations(rng, photos, taxonomy, traits)
    observed_on = _observation_dates(rng, traits, obs.species)
    taxon_of_obs, quality = _identifications(rng, taxonomy, traits.ids, obs.species)
    observations, observers = _observation_tables(rng, obs, taxon_of_obs, quality, observed_on)
    photo_table = _photo_table(rng, photos, image_size, obs, observations)
    render_params = _render_parameters(rng, taxonomy, traits, obs, photo_table)
    taxa_out, species_table, truth = _truth_tables(taxonomy, traits, obs, observations)
    return GeneratedExport(taxa_out, observations, photo_table, observers, species_table, truth, render_params)
