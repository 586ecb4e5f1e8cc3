"""Ranks, ancestry and supercategories of the iNaturalist taxonomy.

The iNaturalist Open Data ``taxa`` table gives each taxon a ``rank_level`` (kingdom 70 … species 10,
infraspecific 5, the root "Life" 100) and an ``ancestry`` string of ancestor ids from the root down.
Competition categories carry the named ranks kingdom … genus and a *supercategory*, the coarse group
by which results are reported (14 in iNat2018).
"""

from __future__ import annotations

import enum

__all__ = ["LIFE_TAXON_ID", "Rank", "Supercategory", "supercategory_of", "split_ancestry"]

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
    """The 14 supercategories of iNat2018 (formats.md §2)."""

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
