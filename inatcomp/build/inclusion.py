"""Inclusion: every observation gets a class or a reason why not, and every photo its observation.

The reasons are roll-up, hybrids, inactive or unknown taxa, unknown observers, quality grade, and for
``production`` the inclusion thresholds and leaf genera; what each removed goes into the audit.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import re
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.arrays import _dense, _index_in, _is_in
from inatcomp.build.audit import _Audit
from inatcomp.build.export import ExportTables, ancestry_parents
from inatcomp.build.rules import BuildRules
from inatcomp.formats.taxonomy import TaxonIndex

__all__ = ["is_informal_name"]

_GENUS = r"[A-Z][a-z]+(?:-[A-Z]?[a-z]+)*"
_EPITHET = r"(?:× ?)?[a-z]+(?:-[a-z]+)*"
_INFRA_MARKER = r"(?:subsp\.|ssp\.|var\.|subvar\.|f\.|forma) "
#: Formal names: a genus; a binomial at rank species; a trinomial (a rank marker allowed) below it.
_FORMAL = {
    "genus": re.compile(rf"{_GENUS}"),
    "species": re.compile(rf"{_GENUS} {_EPITHET}"),
    "infraspecific": re.compile(rf"{_GENUS} {_EPITHET} (?:{_INFRA_MARKER})?{_EPITHET}"),
}

_REASONS = (
    "",
    "no taxon",
    "unknown taxon",
    "hybrid",
    "identified above species",
    "inactive taxon",
    "informal name",
    "no kingdom in ancestry",
    "unknown observer",
    "not research grade",
    "below inclusion thresholds",
    "no supercategory",
)


@dataclasses.dataclass
class _Classified:
    """Each observation's class after every inclusion rule, and each photo's observation.

    Attributes:
        taxa: The export's taxa.
        obs_class: Class of each observation (a row of the taxa table), -1 for one left out.
        obs_observer: Observer id of each observation (-1 for none).
        photo_obs: Row of each photo's observation, -1 for a photo without one.
    """

    taxa: TaxonIndex
    obs_class: np.ndarray
    obs_observer: np.ndarray
    photo_obs: np.ndarray


def _classify(tables: ExportTables, rules: BuildRules, audit: _Audit, lap: Callable[[str], None]) -> _Classified:
    """Give every observation a class or a reason why not, and join the photos to their observations.

    The columns done with are dropped from ``tables`` as soon as they are (lower peak memory, fewer fresh
    pages to touch).

    Args:
        tables: The export's tables.
        rules: The build's rules.
        audit: Receives what each reason removed.
        lap: Marks the end of a stage for the build's timings.
    """
    # The photos' join to their observations (by uuid) runs in a second thread beside the observations' classes.
    with concurrent.futures.ThreadPoolExecutor(1) as helper:
        joined = helper.submit(_index_in, tables.photos["observation_uuid"], tables.observations["observation_uuid"])
        taxa = _taxon_index(tables.taxa)
        obs_class, obs_reason, research, obs_observer = _observation_reasons(tables, taxa, rules)
        lap("observations")
        photo_obs = joined.result()
    lap("join by uuid")
    tables.photos = tables.photos.drop_columns(["observation_uuid"])  # not needed again: free it
    pa.default_memory_pool().release_unused()
    orphan = photo_obs < 0
    audit.add("photo without observation", photos=int(orphan.sum()))
    photos_per_obs = np.bincount(photo_obs[~orphan], minlength=len(obs_class)).astype(np.float64)
    del orphan
    _apply_inclusion(taxa, obs_class, obs_reason, research, photos_per_obs, rules)
    if rules.research_only:
        obs_reason[(obs_reason == 0) & ~research] = _REASONS.index("not research grade")
        obs_class[obs_reason != 0] = -1
    _audit_reasons(obs_reason, photos_per_obs, audit)
    lap("join")
    return _Classified(taxa=taxa, obs_class=obs_class, obs_observer=obs_observer, photo_obs=photo_obs)


def _taxon_index(t: pa.Table) -> TaxonIndex:
    """The export's taxa table as a :class:`TaxonIndex` (ranks in lower case, a null ``active`` as active)."""
    return TaxonIndex(
        taxon_ids=t["taxon_id"].to_numpy(),
        parent_ids=ancestry_parents(t["ancestry"]),
        ranks=np.asarray(pc.utf8_lower(t["rank"]).to_numpy(zero_copy_only=False), dtype=object),
        rank_levels=t["rank_level"].fill_null(0).to_numpy(),
        names=t["name"].to_numpy(zero_copy_only=False),
        active=t["active"].fill_null(True).to_numpy(zero_copy_only=False),
    )


def _observation_reasons(
    tables: ExportTables, taxa: TaxonIndex, rules: BuildRules
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Observations: a class or a reason each, by their taxon and observer, before the inclusion thresholds.

    The observations' ``taxon_id`` and ``quality_grade`` are dropped from ``tables`` once read.

    Returns:
        The class row and reason code of each observation, whether it is research grade, and its observer id.
    """
    o = tables.observations
    obs_taxon = o["taxon_id"].fill_null(-1).to_numpy()
    obs_class, obs_reason = _observation_classes(taxa, obs_taxon, o["taxon_id"].is_valid().to_numpy(False), rules)
    del obs_taxon
    known_observers = tables.observers["observer_id"].to_numpy()
    obs_observer = o["observer_id"].fill_null(-1).to_numpy()
    unknown_observer = ~_is_in(obs_observer, known_observers)
    obs_reason[(obs_reason == 0) & unknown_observer] = _REASONS.index("unknown observer")
    obs_class[obs_reason != 0] = -1
    research = pc.equal(o["quality_grade"], "research").fill_null(False).to_numpy(zero_copy_only=False)
    tables.observations = o.drop_columns(["taxon_id", "quality_grade"])
    return obs_class, obs_reason, research, obs_observer


def _audit_reasons(reason: np.ndarray, photos_per_obs: np.ndarray, audit: _Audit) -> None:
    """Observations and photos each reason left out, into the audit in the reasons' order."""
    reason_observations = np.bincount(reason, minlength=len(_REASONS))
    reason_photos = np.bincount(reason, weights=photos_per_obs, minlength=len(_REASONS))
    for code in np.flatnonzero(reason_observations[1:]) + 1:
        audit.add(_REASONS[code], observations=int(reason_observations[code]), photos=int(reason_photos[code]))


def _observation_classes(
    taxa: TaxonIndex,
    obs_taxon: np.ndarray,
    obs_valid_taxon: np.ndarray,
    rules: BuildRules,
) -> tuple[np.ndarray, np.ndarray]:
    """Class row (into the taxa table) and skip reason code of each observation, before inclusion rules.

    Everything but the first two reasons depends on the taxon alone: it is worked out once per taxon.
    """
    taxon_class, taxon_reason = _taxon_classes(taxa, rules)
    known = taxa.taxon_ids
    if len(known) and known.min() >= 0 and _dense(int(known.max()), len(obs_taxon)):
        # One lookup per observation in tables indexed by taxon id; the last entry answers for unknown ids.
        top = int(known.max()) + 1
        class_of_id = np.full(top + 1, -1, dtype=np.int64)
        class_of_id[known] = taxon_class
        reason_of_id = np.full(top + 1, _REASONS.index("unknown taxon"), dtype=np.int8)
        reason_of_id[known] = taxon_reason
        at = np.where((obs_taxon >= 0) & (obs_taxon < top), obs_taxon, top)
        cls, reason = class_of_id[at], reason_of_id[at]
        del at
    else:
        rows = np.where(obs_valid_taxon, taxa.rows_of(np.where(obs_valid_taxon, obs_taxon, -1)), -1)
        safe_rows = np.maximum(rows, 0)
        reason = taxon_reason[safe_rows] if len(taxon_reason) else np.zeros(len(rows), np.int8)
        reason[rows < 0] = _REASONS.index("unknown taxon")
        cls = np.where(reason == 0, taxon_class[safe_rows] if len(taxon_class) else -1, -1)
    no_taxon = ~obs_valid_taxon
    reason[no_taxon] = _REASONS.index("no taxon")
    cls[no_taxon] = -1
    return cls, reason


def is_informal_name(name: str, rank_level: float) -> bool:
    """Whether a class's name is provisional or a manuscript name rather than a Latin name of its rank.

    A formal name is, at rank species (level 10), a binomial: a capitalised genus (letters, hyphenated parts
    allowed) and one lower-case epithet (letters and hyphens, ``×`` allowed before it); below species a
    trinomial, with ``subsp.``, ``var.``, ``f.`` … allowed before the last epithet; above species (a leaf
    genus) one capitalised word. Anything else is informal: a quote, digit or dot (``Mycena sp.
    'acicula-CA01'``, ``Hydnocristella sp. 'PNW01'``), or more lower-case words than the rank has
    (``Dactylocnemis poor knights``, ``Symbiodinium ex mcneilli``).
    """
    kind = "species" if rank_level == 10 else "infraspecific" if rank_level < 10 else "genus"
    return _FORMAL[kind].fullmatch(name) is None


def _taxon_classes(taxa: TaxonIndex, rules: BuildRules) -> tuple[np.ndarray, np.ndarray]:
    """Class row and skip reason code of an observation of each taxon (row of the taxa table)."""
    rows = np.arange(len(taxa.taxon_ids))
    reason = np.zeros(len(rows), dtype=np.int8)
    reason[taxa.is_hybrid[rows]] = _REASONS.index("hybrid")
    level = taxa.rank_levels[rows]
    species = taxa.ancestor["species"][rows]
    if rules.rollup_infraspecific:
        cls = np.where(level <= 10, species, -1)
    else:
        cls = np.where((level <= 10) & (species >= 0), rows, -1)
    genus = taxa.ancestor["genus"][rows]
    above = (reason == 0) & (cls < 0)
    if rules.leaf_genera:
        at_genus = above & (taxa.ranks[rows] == "genus")
        cls[at_genus] = genus[at_genus]
        above &= ~at_genus
    reason[above] = _REASONS.index("identified above species")
    inactive = (reason == 0) & ~(taxa.active[rows] & taxa.active[np.where(cls >= 0, cls, 0)])
    reason[inactive] = _REASONS.index("inactive taxon")
    if not rules.allow_informal_names:
        checked = np.flatnonzero(reason == 0)
        class_rows = np.unique(cls[checked])
        informal_class = np.array(
            [is_informal_name(str(taxa.names[c]), float(taxa.rank_levels[c])) for c in class_rows], dtype=bool
        )
        informal = np.zeros(len(rows), dtype=bool)
        informal[checked] = informal_class[np.searchsorted(class_rows, cls[checked])] if len(class_rows) else False
        reason[informal] = _REASONS.index("informal name")
    supercategory_missing = (reason == 0) & (taxa.ancestor["kingdom"][np.where(cls >= 0, cls, 0)] < 0)
    reason[supercategory_missing] = _REASONS.index("no kingdom in ancestry")
    cls[reason != 0] = -1
    return cls, reason


def _apply_inclusion(
    taxa: TaxonIndex,
    cls: np.ndarray,
    reason: np.ndarray,
    research: np.ndarray,
    photos_per_obs: np.ndarray,
    rules: BuildRules,
    *,
    weights: np.ndarray | None = None,
) -> None:
    """Inclusion thresholds and leaf genera (production), in place on ``cls`` and ``reason``.

    Each entry is an observation, or with ``weights`` that many observations of one class and grade (the
    out-of-core path passes per-class counts: every decision here depends on the class alone).
    """
    if not (rules.min_observations or rules.min_research_observations or rules.min_photos):
        return
    ok = reason == 0
    n = len(taxa.taxon_ids)

    def qualifies(keys: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = None if weights is None else weights[mask]
        n_obs = np.bincount(keys[mask], weights=w, minlength=n)
        n_research = np.bincount(
            keys[mask & research], weights=None if weights is None else weights[mask & research], minlength=n
        )
        n_photos = np.bincount(keys[mask], weights=photos_per_obs[mask], minlength=n)
        by_obs = (n_obs >= rules.min_observations) & (n_research >= rules.min_research_observations)
        by_photos = (n_photos >= rules.min_photos) if rules.min_photos else np.zeros(n, bool)
        return by_obs | by_photos

    safe_cls = np.where(ok, cls, 0)
    is_species_class = ok & (taxa.ranks[safe_cls] != "genus")
    species_ok = qualifies(safe_cls, is_species_class)
    keep = ok & is_species_class & species_ok[safe_cls]
    if rules.leaf_genera:
        # A genus whose species all fail becomes a class with its own and its species' observations.
        genus_of = taxa.ancestor["genus"][safe_cls]
        has_species_class = np.zeros(n, bool)
        has_species_class[genus_of[keep & (genus_of >= 0)]] = True
        candidate = ok & ~keep & (genus_of >= 0) & ~has_species_class[np.maximum(genus_of, 0)]
        genus_ok = qualifies(np.maximum(genus_of, 0), candidate)
        leaf = candidate & genus_ok[np.maximum(genus_of, 0)]
        cls[leaf] = genus_of[leaf]
        keep |= leaf
    dropped = ok & ~keep
    reason[dropped] = _REASONS.index("below inclusion thresholds")
    cls[dropped] = -1
