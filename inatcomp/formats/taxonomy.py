"""Ranks, ancestry and supercategories of the iNaturalist taxonomy.

The iNaturalist Open Data ``taxa`` table gives each taxon a ``rank_level`` (kingdom 70 … species 10,
infraspecific 5, the root "Life" 100) and an ``ancestry`` string of ancestor ids from the root down.
Competition categories carry the named ranks kingdom … genus and a *supercategory*, the coarse group
by which results are reported (14 in iNat2018).
"""

from __future__ import annotations

import enum

import numpy as np

__all__ = ["LIFE_TAXON_ID", "Rank", "Supercategory", "TaxonIndex", "supercategory_of", "split_ancestry"]

#: Taxon id of the root "Life" in iNaturalist.
LIFE_TAXON_ID = 48460


class Rank(enum.Enum):
    """Taxonomic ranks with their iNaturalist rank levels."""

    LIFE = ("stateofmatter", 100.0)
    KINGDOM = ("kingdom", 70.0)
    PHYLUM = ("phylum", 60.0)
    CLASS = ("class", 50.0)
    ORDER = ("order", 40.0)
    FAMILY = ("family", 30.0)
    GENUS = ("genus", 20.0)
    SPECIES = ("species", 10.0)
    HYBRID = ("hybrid", 10.0)
    SUBSPECIES = ("subspecies", 5.0)
    VARIETY = ("variety", 5.0)
    FORM = ("form", 5.0)

    @property
    def label(self) -> str:
        """The rank's name as the export writes it."""
        return self.value[0]

    @property
    def level(self) -> float:
        """The rank level as the export writes it."""
        return self.value[1]


#: The named ranks a competition category carries, from the top down.
CATEGORY_RANKS = (Rank.KINGDOM, Rank.PHYLUM, Rank.CLASS, Rank.ORDER, Rank.FAMILY, Rank.GENUS)


class Supercategory(enum.Enum):
    """The 14 supercategories of iNat2018 (docs/formats.md §2)."""

    PLANTAE = "Plantae"
    INSECTA = "Insecta"
    AVES = "Aves"
    REPTILIA = "Reptilia"
    MAMMALIA = "Mammalia"
    FUNGI = "Fungi"
    AMPHIBIA = "Amphibia"
    MOLLUSCA = "Mollusca"
    ANIMALIA = "Animalia"
    ARACHNIDA = "Arachnida"
    ACTINOPTERYGII = "Actinopterygii"
    CHROMISTA = "Chromista"
    PROTOZOA = "Protozoa"
    BACTERIA = "Bacteria"


_CLASS_SUPERCATEGORIES = {
    s.value: s
    for s in (
        Supercategory.INSECTA,
        Supercategory.AVES,
        Supercategory.REPTILIA,
        Supercategory.MAMMALIA,
        Supercategory.AMPHIBIA,
        Supercategory.ARACHNIDA,
        Supercategory.ACTINOPTERYGII,
    )
}
_KINGDOM_SUPERCATEGORIES = {
    s.value: s
    for s in (
        Supercategory.PLANTAE,
        Supercategory.FUNGI,
        Supercategory.CHROMISTA,
        Supercategory.PROTOZOA,
        Supercategory.BACTERIA,
    )
}


def supercategory_of(kingdom: str | None, phylum: str | None, class_: str | None) -> Supercategory | None:
    """The iNat2018 supercategory of a taxon from its kingdom, phylum and class names.

    Classes Insecta, Aves, Reptilia, Mammalia, Amphibia, Arachnida and Actinopterygii name their own;
    phylum Mollusca; kingdoms Plantae, Fungi, Chromista, Protozoa and Bacteria; every other animal is
    Animalia.

    Returns:
        The supercategory, or ``None`` when the kingdom is not one of the above (Archaea, Viruses …).
    """
    if class_ in _CLASS_SUPERCATEGORIES:
        return _CLASS_SUPERCATEGORIES[class_]
    if phylum == "Mollusca":
        return Supercategory.MOLLUSCA
    if kingdom in _KINGDOM_SUPERCATEGORIES:
        return _KINGDOM_SUPERCATEGORIES[kingdom]
    if kingdom == "Animalia":
        return Supercategory.ANIMALIA
    return None


def split_ancestry(ancestry: str) -> list[int]:
    """Ancestor ids from an ancestry string; accepts ``/`` and ``\\`` as separators.

    Raises:
        ValueError: a part is not an integer.
    """
    if not ancestry:
        return []
    return [int(part) for part in ancestry.replace("\\", "/").split("/") if part]


_NAMED_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")


class TaxonIndex:
    """The taxa table as arrays, with each taxon's ancestor at every named rank.

    Rows follow the input table. ``ancestor[rank]`` holds, for each row, the row of its ancestor (or
    itself) at that rank, or -1. Parents are taken from the last id of the ancestry.

    Args:
        taxon_ids: Taxon ids.
        parent_ids: Parent ids (-1 for the root).
        ranks: Rank names.
        rank_levels: Rank levels.
        names: Scientific names.
        active: Whether each taxon is active.

    Raises:
        ValueError: Duplicate taxon ids.
    """

    def __init__(
        self,
        *,
        taxon_ids: np.ndarray,
        parent_ids: np.ndarray,
        ranks: np.ndarray,
        rank_levels: np.ndarray,
        names: np.ndarray,
        active: np.ndarray,
    ) -> None:
        self.taxon_ids = np.asarray(taxon_ids, dtype=np.int64)
        self.ranks = np.asarray(ranks, dtype=object)
        self.rank_levels = np.asarray(rank_levels, dtype=np.float64)
        self.names = np.asarray(names, dtype=object)
        self.active = np.asarray(active, dtype=bool)
        self._order = np.argsort(self.taxon_ids, kind="stable")
        sorted_ids = self.taxon_ids[self._order]
        if len(sorted_ids) > 1 and (dupes := sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]).size:
            raise ValueError(f"taxa: taxon_id {int(dupes[0])} appears more than once")
        self.parent = self.rows_of(np.asarray(parent_ids, dtype=np.int64))
        self.ancestor = self._ancestors()
        self.is_hybrid = (self.ranks == "hybrid") | np.char.find(self.names.astype(str), " × ") >= 0

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the given taxon ids; -1 where an id is not in the table."""
        ids = np.asarray(ids, dtype=np.int64)
        sorted_ids = self.taxon_ids[self._order]
        pos = np.searchsorted(sorted_ids, ids)
        pos = np.minimum(pos, max(len(sorted_ids) - 1, 0))
        found = (len(sorted_ids) > 0) & (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
        return np.where(found, self._order[pos] if len(sorted_ids) else -1, -1)

    def _ancestors(self) -> dict[str, np.ndarray]:
        n = len(self.taxon_ids)
        ancestor = {rank: np.full(n, -1, dtype=np.int64) for rank in _NAMED_RANKS}
        rank_codes = {rank: self.ranks == rank for rank in _NAMED_RANKS}
        current = np.arange(n)
        alive = np.ones(n, dtype=bool)
        for _ in range(256):  # deeper than any real taxonomy; a cycle stops here
            rows = current[alive]
            for rank in _NAMED_RANKS:
                hit = rank_codes[rank][rows] & (ancestor[rank][alive] == -1)
                target = ancestor[rank]
                target[np.flatnonzero(alive)[hit]] = rows[hit]
            nxt = self.parent[rows]
            current[alive] = nxt
            alive[np.flatnonzero(alive)[nxt < 0]] = False
            if not alive.any():
                break
        return ancestor

    def named(self, rank: str, rows: np.ndarray) -> np.ndarray:
        """Names of the ancestors at ``rank`` of the given rows ('' where there is none)."""
        anc = self.ancestor[rank][rows]
        out = np.full(len(rows), "", dtype=object)
        out[anc >= 0] = self.names[anc[anc >= 0]]
        return out

    def supercategories(self, rows: np.ndarray) -> np.ndarray:
        """Supercategory names of the given rows ('' where the kingdom has none)."""
        kingdom, phylum, class_ = (self.named(r, rows) for r in ("kingdom", "phylum", "class"))
        cache: dict[tuple[str, str, str], str] = {}
        out = np.empty(len(rows), dtype=object)
        for i, key in enumerate(zip(kingdom, phylum, class_)):
            if key not in cache:
                found = supercategory_of(*key)
                cache[key] = found.value if found else ""
            out[i] = cache[key]
        return out
