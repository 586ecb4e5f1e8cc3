"""inatcomp.formats.taxonomy: ranks, ancestry strings, ancestors at each rank (the roll-up), supercategories."""

from __future__ import annotations

import numpy as np
import pytest

from inatcomp.formats.taxonomy import (
    CATEGORY_RANKS,
    LIFE_TAXON_ID,
    Rank,
    Supercategory,
    TaxonIndex,
    split_ancestry,
    supercategory_of,
)

# (taxon_id, parent_id, rank, name): Life → Animalia → Arthropoda → Insecta → Lepidoptera → Nymphalidae → Vanessa,
# with species, a subspecies, a hybrid; and a plant genus with a variety and a form; and an archaeon.
_TAXA = [
    (LIFE_TAXON_ID, -1, "stateofmatter", "Life"),
    (1, LIFE_TAXON_ID, "kingdom", "Animalia"),
    (2, 1, "phylum", "Arthropoda"),
    (3, 2, "class", "Insecta"),
    (4, 3, "order", "Lepidoptera"),
    (5, 4, "family", "Nymphalidae"),
    (6, 5, "genus", "Vanessa"),
    (7, 6, "species", "Vanessa atalanta"),
    (8, 7, "subspecies", "Vanessa atalanta rubria"),
    (9, 6, "hybrid", "Vanessa atalanta × cardui"),
    (10, 6, "species", "Vanessa × hybrida"),  # a hybrid by its name only
    (20, LIFE_TAXON_ID, "kingdom", "Plantae"),
    (21, 20, "phylum", "Tracheophyta"),
    (22, 21, "class", "Magnoliopsida"),
    (23, 22, "order", "Fagales"),
    (24, 23, "family", "Fagaceae"),
    (25, 24, "genus", "Quercus"),
    (26, 25, "species", "Quercus alba"),
    (27, 26, "variety", "Quercus alba var. minor"),
    (28, 27, "form", "Quercus alba minor f. nana"),  # under the variety: still rolls up to the species
    (30, LIFE_TAXON_ID, "kingdom", "Archaea"),
    (31, 30, "phylum", "Euryarchaeota"),
    (40, 1, "phylum", "Mollusca"),
    (41, 40, "class", "Gastropoda"),
    (50, 1, "phylum", "Chordata"),
    (51, 50, "class", "Ascidiacea"),
]
_LEVELS = {r.label: r.level for r in Rank}


def _index(taxa=_TAXA) -> TaxonIndex:
    rows = list(zip(*taxa)) or [(), (), (), ()]
    ranks = np.array(rows[2], dtype=object)
    return TaxonIndex(
        taxon_ids=np.array(rows[0]),
        parent_ids=np.array(rows[1]),
        ranks=ranks,
        rank_levels=np.array([_LEVELS[r] for r in ranks]),
        names=np.array(rows[3], dtype=object),
        active=np.ones(len(taxa), dtype=bool),
    )


def _row(index: TaxonIndex, taxon_id: int) -> int:
    return int(index.rows_of(np.array([taxon_id]))[0])


def test_ranks_go_down_from_life_with_the_export_labels_and_levels():
    levels = [r.level for r in Rank]
    assert levels == sorted(levels, reverse=True)
    assert (Rank.LIFE.label, Rank.LIFE.level) == ("stateofmatter", 100.0)
    assert (Rank.SPECIES.label, Rank.SPECIES.level) == ("species", 10.0)
    assert Rank.HYBRID.level == Rank.SPECIES.level and Rank.SUBSPECIES.level == Rank.VARIETY.level == 5.0
    assert [r.label for r in CATEGORY_RANKS] == ["kingdom", "phylum", "class", "order", "family", "genus"]
    assert len({r.label for r in Rank}) == len(Rank)


def test_split_ancestry_accepts_both_separators():
    assert split_ancestry("") == []
    assert split_ancestry("48460/1/2") == [48460, 1, 2]
    assert split_ancestry("48460\\1\\2") == [48460, 1, 2]
    with pytest.raises(ValueError):
        split_ancestry("48460/x")


@pytest.mark.parametrize(
    ("kingdom", "phylum", "class_", "expected"),
    [
        ("Animalia", "Arthropoda", "Insecta", Supercategory.INSECTA),
        ("Animalia", "Arthropoda", "Arachnida", Supercategory.ARACHNIDA),
        ("Animalia", "Chordata", "Aves", Supercategory.AVES),
        ("Animalia", "Chordata", "Actinopterygii", Supercategory.ACTINOPTERYGII),
        ("Animalia", "Mollusca", "Gastropoda", Supercategory.MOLLUSCA),
        ("Animalia", "Cnidaria", "Anthozoa", Supercategory.ANIMALIA),  # every other animal
        ("Animalia", "Chordata", "Ascidiacea", Supercategory.ANIMALIA),
        ("Plantae", "Tracheophyta", "Magnoliopsida", Supercategory.PLANTAE),
        ("Fungi", "Basidiomycota", "Agaricomycetes", Supercategory.FUNGI),
        ("Chromista", "Ochrophyta", None, Supercategory.CHROMISTA),
        ("Protozoa", None, None, Supercategory.PROTOZOA),
        ("Bacteria", "Cyanobacteria", "Cyanophyceae", Supercategory.BACTERIA),
        ("Archaea", "Euryarchaeota", None, None),
        ("Viruses", None, None, None),
        (None, None, None, None),
    ],
)
def test_supercategory_of(kingdom, phylum, class_, expected):
    assert supercategory_of(kingdom, phylum, class_) is expected


def test_there_are_the_14_supercategories_of_inat2018():
    assert len(Supercategory) == 14
    assert {supercategory_of("Animalia", "Chordata", c) for c in ("Mammalia", "Reptilia", "Amphibia")} == {
        Supercategory.MAMMALIA,
        Supercategory.REPTILIA,
        Supercategory.AMPHIBIA,
    }


def test_ancestors_at_every_named_rank():
    index = _index()
    subspecies = _row(index, 8)
    expected = {"kingdom": 1, "phylum": 2, "class": 3, "order": 4, "family": 5, "genus": 6, "species": 7}
    for rank, taxon_id in expected.items():
        assert index.taxon_ids[index.ancestor[rank][subspecies]] == taxon_id, rank
    genus = _row(index, 6)
    assert index.ancestor["genus"][genus] == genus  # a taxon is its own ancestor at its rank
    assert index.ancestor["species"][genus] == -1  # nothing below
    life = _row(index, LIFE_TAXON_ID)
    assert all(index.ancestor[rank][life] == -1 for rank in expected)
    assert index.parent[life] == -1 and index.parent[subspecies] == _row(index, 7)


def test_infraspecific_taxa_roll_up_to_their_species_and_hybrids_do_not():
    index = _index()
    species_of = {t: index.ancestor["species"][_row(index, t)] for t in (7, 8, 9, 26, 27, 28)}
    assert species_of[7] == species_of[8] == _row(index, 7)  # subspecies
    assert species_of[26] == species_of[27] == species_of[28] == _row(index, 26)  # variety, form under it
    assert species_of[9] == -1  # a hybrid is no species' child
    hybrid = index.is_hybrid[index.rows_of(np.array([7, 8, 9, 10, 26]))]
    assert hybrid.tolist() == [False, False, True, True, False]  # by rank, or by the × in its name


def test_named_and_supercategories_of_rows():
    index = _index()
    rows = index.rows_of(np.array([8, 27, 31, 41, 51, LIFE_TAXON_ID]))
    assert index.named("genus", rows).tolist() == ["Vanessa", "Quercus", "", "", "", ""]
    assert index.named("class", rows).tolist() == ["Insecta", "Magnoliopsida", "", "Gastropoda", "Ascidiacea", ""]
    assert index.supercategories(rows).tolist() == ["Insecta", "Plantae", "", "Mollusca", "Animalia", ""]


def test_rows_of_follow_the_input_table_with_minus_one_for_unknown_ids():
    index = _index()
    positions = [i for i, row in enumerate(_TAXA) if row[0] in (7, LIFE_TAXON_ID)]
    assert index.rows_of(np.array([7, 999, -5, LIFE_TAXON_ID])).tolist() == [positions[1], -1, -1, positions[0]]
    empty = _index([])
    assert empty.rows_of(np.array([2, 3])).tolist() == [-1, -1]


def test_an_orphan_has_no_ancestors_above_it_and_a_cycle_ends():
    taxa = [
        (1, -1, "kingdom", "Animalia"),
        (7, 99, "species", "Lost species"),
        (5, 6, "genus", "A"),
        (6, 5, "family", "B"),
    ]
    index = _index(taxa)
    orphan = _row(index, 7)
    assert index.parent[orphan] == -1  # its parent is not in the table
    assert index.ancestor["species"][orphan] == orphan and index.ancestor["kingdom"][orphan] == -1
    genus, family = _row(index, 5), _row(index, 6)
    assert index.ancestor["family"][genus] == family and index.ancestor["genus"][family] == genus


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="taxon_id 7 appears more than once"):
        _index(_TAXA + [(7, 6, "species", "Vanessa again")])
