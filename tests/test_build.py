"""Tests of the dataset builder: each rule on hand-made exports, properties on generated ones."""

from __future__ import annotations

import collections
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from inatcomp.build import build_dataset, check_leakage, release_names, split_val
from inatcomp.build.rules import PhotoChoice, Preset, rules_for
from inatcomp.build.splits import assign_observers
from inatcomp.cli import main
from inatcomp.formats.competitions import format_of_preset
from inatcomp.formats.validate import validate_file
from inatcomp.pipeline import find_release
from inatcomp.score.scoring import score_file
from inatcomp.world.synth import SynthConfig, write_export

TAXA_HEADER = ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"]
OBS_HEADER = [
    "observation_uuid", "observer_id", "latitude", "longitude", "positional_accuracy", "taxon_id",
    "quality_grade", "observed_on", "anomaly_score",
]  # fmt: skip
PHOTO_HEADER = [
    "photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license", "width", "height", "position"
]  # fmt: skip

# Life → Plantae → Tracheophyta → Magnoliopsida → Fagales → Fagaceae → Quercus / Acer
_LINEAGE = "48460/1/2/3/4/5"
HAND_TAXA = [
    (48460, "", 100, "stateofmatter", "Life", "true"),
    (1, "48460", 70, "kingdom", "Plantae", "true"),
    (2, "48460/1", 60, "phylum", "Tracheophyta", "true"),
    (3, "48460\\1\\2", 50, "class", "Magnoliopsida", "t"),  # the other separator and boolean spelling
    (4, "48460/1/2/3", 40, "order", "Fagales", "true"),
    (5, "48460/1/2/3/4", 30, "family", "Fagaceae", "true"),
    (6, _LINEAGE, 20, "genus", "Quercus", "true"),
    (7, f"{_LINEAGE}/6", 10, "species", "Quercus alba", "true"),
    (8, f"{_LINEAGE}/6", 10, "species", "Quercus rubra", "true"),
    (9, f"{_LINEAGE}/6/7", 5, "subspecies", "Quercus alba minor", "true"),
    (10, f"{_LINEAGE}/6", 10, "hybrid", "Quercus × hybrida", "true"),
    (11, f"{_LINEAGE}/6", 10, "species", "Quercus vetusta", "false"),
    (12, _LINEAGE, 20, "genus", "Acer", "true"),
    (13, f"{_LINEAGE}/12", 10, "species", "Acer rarum", "f"),
]


class HandExport:
    """A hand-made export: observations given as (taxon, observer, grade), each with two photos."""

    def __init__(self) -> None:
        self.observations: list[tuple] = []
        self.photos: list[tuple] = []
        self.observers: set[int] = set()

    def add(self, taxon, observer, grade="research", photos=2, known_observer=True):
        n = len(self.observations)
        uuid = f"00000000-0000-4000-8000-{n:012d}"
        self.observations.append((uuid, observer, "45.0", "-70.0", "10", taxon, grade, "2020-05-01", "0.01"))
        for position in range(photos):
            photo_id = 1000 + 10 * n + position
            self.photos.append(
                (
                    f"10000000-0000-4000-8000-{photo_id:012d}",
                    photo_id,
                    uuid,
                    observer,
                    "jpg",
                    "CC-BY",
                    400,
                    300,
                    position,
                )
            )
        if known_observer:
            self.observers.add(observer)
        return uuid

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)

        def table(name, header, rows):
            lines = ["\t".join(header)] + ["\t".join("" if v is None else str(v) for v in row) for row in rows]
            (folder / f"{name}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

        table("taxa", TAXA_HEADER, HAND_TAXA)
        table("observations", OBS_HEADER, self.observations)
        table("photos", PHOTO_HEADER, self.photos)
        table("observers", ["observer_id", "login", "name"], [(o, f"user{o}", "") for o in sorted(self.observers)])
        return folder


@pytest.fixture
def hand(tmp_path) -> tuple[HandExport, Path]:
    export = HandExport()
    for observer in range(1, 11):
        export.add(7, observer)  # Quercus alba: 10 observers
    for observer in range(11, 14):
        export.add(9, observer)  # its subspecies: rolled up from 2018
    for observer in range(20, 27):
        export.add(8, observer)  # Quercus rubra
    for observer in range(30, 36):
        export.add(10, observer)  # hybrid
    for observer in range(40, 46):
        export.add(11, observer)  # inactive species
    for observer in range(50, 54):
        export.add(6, observer)  # identified to genus only
    export.add(999, 60)  # unknown taxon
    export.add(999, 61)
    export.add("", 62)  # no taxon
    export.add(8, 777, known_observer=False)  # unknown observer
    export.add(7, 70, grade="needs_id")
    export.add(7, 71, grade="casual")
    export.photos.append(
        (
            "20000000-0000-4000-8000-000000000001",
            99999,
            "ffffffff-0000-4000-8000-000000000000",
            1,
            "jpg",
            "CC0",
            10,
            10,
            0,
        )
    )
    return export, export.write(tmp_path / "export")


def _provenance(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "provenance.csv", dtype={"observation_uuid": str})


def test_rules_on_a_hand_made_export(hand, tmp_path):
    export, folder = hand
    result = build_dataset(folder, tmp_path / "out", rules=rules_for(Preset.INAT2018), images=False)
    removed = result.audit["removed"]
    assert removed["hybrid"] == {"observations": 6, "photos": 12}
    assert removed["inactive taxon"] == {"observations": 6, "photos": 12}
    assert removed["identified above species"] == {"observations": 4, "photos": 8}
    assert removed["unknown taxon"] == {"observations": 2, "photos": 4}
    assert removed["no taxon"] == {"observations": 1, "photos": 2}
    assert removed["unknown observer"] == {"observations": 1, "photos": 2}
    assert removed["not research grade"] == {"observations": 2, "photos": 4}
    assert removed["photo without observation"] == {"photos": 1}
    categories = json.loads((tmp_path / "out" / "categories.json").read_text())
    assert [c["name"] for c in categories] == ["Quercus alba", "Quercus rubra"]
    assert categories[0] | {"id": 0} == {
        "id": 0, "name": "Quercus alba", "supercategory": "Plantae", "kingdom": "Plantae", "phylum": "Tracheophyta",
        "class": "Magnoliopsida", "order": "Fagales", "family": "Fagaceae", "genus": "Quercus",
    }  # fmt: skip
    prov = _provenance(tmp_path / "out")
    # Roll-up: the subspecies observations count for Quercus alba (13 observers, 3 of them val).
    assert (prov["taxon_id"] == 7).sum() == 13
    # One photo per observation, the first.
    photo_positions = {p[1]: p[8] for p in export.photos}
    assert {photo_positions[p] for p in prov["photo_id"]} == {0}
    assert prov["observation_uuid"].is_unique
    # Exactly 3 val images per class, each observer in one split.
    assert prov[prov["split"] == "val"].groupby("taxon_id").size().tolist() == [3, 3]
    assert (prov.groupby("observer_id")["split"].nunique() == 1).all()


def test_2017_keeps_subspecies_apart(hand, tmp_path):
    _, folder = hand
    rules = rules_for(Preset.INAT2017, min_train=1, val_fraction=0.3)
    build_dataset(folder, tmp_path / "out", rules=rules, images=False)
    prov = _provenance(tmp_path / "out")
    categories = json.loads((tmp_path / "out" / "categories.json").read_text())
    assert set(categories[0]) == {"id", "name", "supercategory"}
    assert "Quercus alba minor" in {c["name"] for c in categories}  # the subspecies is a class of its own
    assert 0 < (prov["taxon_id"] == 9).sum() <= 3
    assert 0 < (prov["taxon_id"] == 7).sum() <= 10  # only the observations of the species itself


def test_random_photo_choice_and_caps(hand, tmp_path):
    export, folder = hand
    rules = rules_for(Preset.INAT2018, photo_choice=PhotoChoice.RANDOM, max_train=3, test_fraction=0.0)
    build_dataset(folder, tmp_path / "out", rules=rules, images=False, seed=1)
    prov = _provenance(tmp_path / "out")
    assert prov[prov["split"] == "train"].groupby("taxon_id").size().max() <= 3
    positions = {p[1]: p[8] for p in export.photos}
    assert prov["observation_uuid"].is_unique
    chosen = {positions[p] for p in prov["photo_id"]}
    assert chosen <= {0, 1} and 1 in chosen  # a random photo, not always the first


def test_production_makes_leaf_genera_and_spreads_photos(tmp_path):
    export = HandExport()
    for observer in range(1, 15):
        export.add(7, observer, photos=3)  # Quercus alba qualifies
    for observer in range(20, 24):
        export.add(6, observer)  # Quercus at genus level: dropped, a species qualifies
    for observer in range(30, 33):
        export.add(13, observer)  # Acer rarum alone is too rare …
    for observer in range(40, 52):
        export.add(12, observer)  # … but Acer has enough observations: a leaf class
    folder = export.write(tmp_path / "export")
    rules = rules_for(
        Preset.PRODUCTION, min_observations=8, min_research_observations=4, min_photos=1000, val_per_class=3,
        test_fraction=0.0, max_train=20,
    )  # fmt: skip
    result = build_dataset(folder, tmp_path / "out", rules=rules, images=False)
    categories = json.loads((tmp_path / "out" / "categories.json").read_text())
    assert [c["name"] for c in categories] == ["Acer", "Quercus alba"]
    assert result.audit["removed"]["below inclusion thresholds"]["observations"] == 4
    prov = _provenance(tmp_path / "out")
    train = prov[(prov["split"] == "train") & (prov["taxon_id"] == 7)]
    # Up to 5 photos per observation, spread: the cap of 20 takes every observation before second photos.
    assert len(train) == 20
    # One val observer (3 photos fill the quota) leaves 13 train observations: all get a first photo.
    assert (prov[prov["taxon_id"] == 7]["split"] == "val").sum() == 3
    assert train["observation_uuid"].nunique() == 13
    assert train.groupby("observation_uuid").size().max() == 2


@pytest.mark.parametrize(("species", "photos", "seed"), [(40, 3000, 0), (80, 6000, 1), (150, 12000, 2)])
def test_isolation_quotas_and_retention_on_generated_exports(tmp_path, species, photos, seed):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=species, photos=photos, seed=seed, images=False))
    out = tmp_path / "out"
    result = build_dataset(folder, out, rules=rules_for(Preset.INAT2018), images=False, seed=seed)
    prov = _provenance(out)
    for column in ("observer_id", "observation_uuid", "photo_id"):
        assert (prov.groupby(column)["split"].nunique() == 1).all()
    assert (prov[prov["split"] == "val"].groupby("taxon_id").size() == 3).all()
    train = prov[prov["split"] == "train"].groupby("taxon_id").size()
    assert train.between(2, 1000).all()
    assert set(train.index) == set(prov["taxon_id"])
    # Retention: against classes with enough research-grade images spread over at least 5 observers.
    obs = pd.read_csv(folder / "observations.csv", sep="\t", dtype=str, keep_default_na=False)
    taxa = pd.read_csv(folder / "taxa.csv", sep="\t", dtype=str, keep_default_na=False)
    species_rank = taxa.set_index("taxon_id")["rank"]
    research = obs[(obs["quality_grade"] == "research") & (obs["taxon_id"].map(species_rank) == "species")]
    per_class = research.groupby("taxon_id").agg(images=("observer_id", "size"), observers=("observer_id", "nunique"))
    feasible = per_class[(per_class["images"] >= 8) & (per_class["observers"] >= 5)]
    kept = set(prov["taxon_id"].astype(str))
    assert len(set(feasible.index) & kept) >= 0.85 * len(feasible)
    # Test split near its target share of train.
    sizes = result.images
    assert 0.15 * sizes["train"] <= sizes["test"] <= 0.5 * sizes["train"]
    assert result.audit["leakage"] == {
        "observers_in_two_splits": 0, "observations_in_two_splits": 0, "photos_in_two_splits": 0,
        "json_images_not_in_provenance_split": 0,
    }  # fmt: skip


def test_assign_observers_meets_quotas_and_targets():
    rng = np.random.default_rng(0)
    observer = rng.integers(0, 300, 6000)
    category = rng.integers(0, 40, 6000)
    rules = rules_for(Preset.INAT2018)
    result = assign_observers(observer, category, n_observers=300, n_classes=40, rules=rules, rng=rng)
    split = result.observer_split[observer]
    kept = result.class_kept
    assert kept.mean() > 0.9
    train = np.bincount(category[split == 0], minlength=40)
    assert (train[kept] >= rules.min_train).all()
    # Every val observer serves some class's quota: none is taken for nothing.
    val_per_class = np.bincount(category[split == 1], minlength=40)
    for o in np.flatnonzero(result.observer_split == 1):
        classes = np.unique(category[observer == o])
        assert (val_per_class[classes] > 0).any()
    # Test near its share of the (capped) train split, never more than half a class's non-val images.
    assert 0.25 <= (split == 2).sum() / np.minimum(train, rules.max_train).sum() <= 0.45
    test = np.bincount(category[split == 2], minlength=40)
    assert (test[kept] <= (train[kept] + test[kept] + 1) // 2).all()


def test_test_per_class_gives_a_test_that_weighs_classes_alike(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=80, photos=6000, seed=1, images=False))
    default = build_dataset(folder, tmp_path / "long", rules=rules_for(Preset.INAT2018), images=False, seed=1)
    out = tmp_path / "flat"
    result = build_dataset(folder, out, rules=rules_for(Preset.INAT2018, test_per_class=4), images=False, seed=1)
    prov = _provenance(out)
    for column in ("observer_id", "observation_uuid", "photo_id"):
        assert (prov.groupby(column)["split"].nunique() == 1).all()
    assert (prov[prov["split"] == "val"].groupby("taxon_id").size() == 3).all()
    assert prov[prov["split"] == "train"].groupby("taxon_id").size().min() >= 2
    test = prov[prov["split"] == "test"].groupby("taxon_id").size()
    assert test.max() == 4
    # No class dominates it as the head classes do under the share-of-train rule; about as many classes reach
    # it (only observers wasting at most twice what they bring are taken, so fewer observers qualify).
    long_test = _provenance(tmp_path / "long").query("split == 'test'").groupby("taxon_id").size()
    top3 = test.nlargest(3).sum() / test.sum()
    assert top3 < 0.25 < long_test.nlargest(3).sum() / long_test.sum()
    assert len(test) >= 0.75 * len(long_test)
    assert result.classes == default.classes  # the test quota never drops a class
    assert result.audit["removed"]["test images beyond the per-class quota"]["photos"] > 0
    assert result.audit["leakage"]["observers_in_two_splits"] == 0


def test_assign_observers_drops_a_class_that_isolation_cannot_place():
    # Class 1 has 6 images, all from one observer: no val observer apart from its train observer.
    observer = np.array([0] * 6 + [1, 2, 3, 4, 5, 6, 7])
    category = np.array([1] * 6 + [0] * 7)
    result = assign_observers(
        observer, category, n_observers=8, n_classes=2, rules=rules_for(Preset.INAT2018), rng=np.random.default_rng(0)
    )
    assert result.class_kept.tolist() == [True, False]
    assert result.drop_reason[1] == "too few val images under isolation"


def _sequential_splits(observer, category, n_observers, n_classes, rules, rng):
    """The observer splits of the greedy loop that assign_observers vectorises, one observer at a time."""
    counts = collections.Counter(zip(observer.tolist(), category.tolist()))
    pairs = collections.defaultdict(list)
    for (o, c), n in sorted(counts.items()):
        pairs[o].append((c, n))
    total = np.bincount(category, minlength=n_classes)
    quota = rules.val_per_class or 0
    alive = (total >= rules.min_train + max(quota, 1)).tolist()
    train_left, need = total.tolist(), [quota if a else 0 for a in alive]
    split = [0] * n_observers
    tie = rng.random(n_observers)

    def safe(o, floor):
        return all(not alive[c] or train_left[c] - n >= floor[c] for c, n in pairs[o])

    def move(o, to):
        split[o] = to
        for c, n in pairs[o]:
            train_left[c] -= n
            need[c] = max(0, need[c] - n)

    def fill_quota(to, passes=(True, False)):
        for strict in passes:
            for o in np.lexsort((tie, np.bincount(observer, minlength=n_observers))).tolist():
                gain = sum(min(n, need[c]) for c, n in pairs[o] if alive[c])
                waste = sum(n for _, n in pairs[o]) - gain
                if (
                    split[o] == 0
                    and gain
                    and not (strict and waste > 2 * gain)
                    and safe(o, [rules.min_train] * n_classes)
                ):
                    move(o, to)

    if rules.val_per_class is not None:
        fill_quota(1)
    else:
        target, taken = rules.val_fraction * float(total[np.asarray(alive, bool)].sum()), 0
        for o in np.argsort(tie, kind="stable").tolist():
            if taken >= target:
                break
            if safe(o, [rules.min_train] * n_classes):
                taken += sum(n for _, n in pairs[o])
                move(o, 1)
    if rules.test_per_class is not None:
        need = [rules.test_per_class if a and n == 0 else 0 for a, n in zip(alive, need)]
        fill_quota(2, passes=(True,))
        return np.asarray(split)
    capped = [min(t, rules.max_train) if rules.max_train else t for t in train_left]
    target = rules.test_fraction / (1 + rules.test_fraction) * sum(t for t, a in zip(capped, alive) if a)
    floor, held = [max(rules.min_train, (t + 1) // 2) for t in train_left], 0
    for o in np.argsort(-tie, kind="stable").tolist():
        if held >= target:
            break
        if split[o] == 0 and safe(o, floor):
            held += sum(n for c, n in pairs[o] if alive[c])
            move(o, 2)
    return np.asarray(split)


@pytest.mark.parametrize("seed", range(24))
def test_assign_observers_matches_the_one_at_a_time_greedy(seed):
    # The vectorised rounds must decide every observer exactly as the loop over them one by one does.
    rng = np.random.default_rng(seed)
    n_observers, n_classes, n = int(rng.integers(5, 300)), int(rng.integers(1, 40)), int(rng.integers(20, 4000))
    activity, frequency = rng.pareto(1.0, n_observers) + 0.01, rng.pareto(1.0, n_classes) + 0.01
    observer = rng.choice(n_observers, n, p=activity / activity.sum())
    category = rng.choice(n_classes, n, p=frequency / frequency.sum())
    observer = np.unique(observer, return_inverse=True)[1]
    preset = list(Preset)[seed % 4]
    overrides = {"min_train": int(rng.integers(1, 6)), "test_fraction": float(rng.random())}
    if preset is Preset.INAT2021:
        overrides |= {"train_mini_per_class": 1}
    if seed % 3 == 0:
        overrides |= {"test_per_class": int(rng.integers(1, 6))}
    rules = rules_for(preset, **overrides)
    n_observers = int(observer.max()) + 1
    result = assign_observers(
        observer, category, n_observers=n_observers, n_classes=n_classes, rules=rules, rng=np.random.default_rng(seed)
    )
    expected = _sequential_splits(observer, category, n_observers, n_classes, rules, np.random.default_rng(seed))
    assert result.observer_split.tolist() == expected.tolist()


@pytest.mark.parametrize("preset", list(Preset))
def test_every_output_passes_validation(tmp_path, preset):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=60, photos=12000, seed=4, images=False))
    out = tmp_path / preset.value
    overrides = (
        {"min_observations": 20, "min_research_observations": 10, "min_photos": 40}
        if preset is Preset.PRODUCTION
        else {}
    )
    result = build_dataset(folder, out, rules=rules_for(preset, **overrides), images=False)
    assert result.classes > 5
    names = release_names(rules_for(preset))
    files = [out / names[k] for k in names if not k.endswith("_dir")] + [out / "categories.json"]
    files += [out / "solution.csv", out / "sample_submission.csv"]
    for path in files:
        assert validate_file(path) == [], path
    # One format per preset from the years' table: the sample, the scorer and the kit's own submissions agree,
    # so a leaderboard ranks them on one metric (production: 2021's Id,Predicted scored by top-1).
    fmt = format_of_preset(preset)
    assert (out / "sample_submission.csv").read_text().split("\n", 1)[0] == fmt.header
    assert score_file(out / "sample_submission.csv", out / "solution.csv").format is fmt
    assert find_release(out, preset=preset).submission_format == fmt.value
    if preset is Preset.INAT2021:
        mini = json.loads((out / "train_mini.json").read_text())
        counts = pd.Series([a["category_id"] for a in mini["annotations"]]).value_counts()
        assert (counts == 50).all()
        val = json.loads((out / "val.json").read_text())
        assert (pd.Series([a["category_id"] for a in val["annotations"]]).value_counts() == 10).all()
        assert {"latitude", "longitude", "date", "location_uncertainty"} <= set(val["images"][0])
    solution = pd.read_csv(out / "solution.csv")
    assert set(solution["usage"]) == {"Public", "Private"}


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_builds_are_deterministic_and_resample_keeps_categories(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=40, photos=2500, seed=5, image_size=48))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    rules = rules_for(Preset.INAT2018, max_train=10)  # caps engage, so a resample draws other photos
    for out in (a, b):
        build_dataset(folder, out, rules=rules, seed=3, workers=2)
    assert _digests(a) == _digests(b)
    assert any(name.startswith("train_val2018/") for name in _digests(a))
    build_dataset(folder, c, rules=rules, seed=3, resample_seed=9, images=False)
    assert (a / "categories.json").read_bytes() == (c / "categories.json").read_bytes()
    assert (a / "train2018.json").read_bytes() != (c / "train2018.json").read_bytes()
    # Images are resized into the release layout with the sizes the JSON lists.
    train = json.loads((a / "train2018.json").read_text())
    image = train["images"][0]
    with Image.open(a / image["file_name"]) as handle:
        assert handle.size == (image["width"], image["height"])


def test_missing_and_corrupt_images_are_skipped_and_counted(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=30, photos=2000, seed=6, image_size=48))
    rules = rules_for(Preset.INAT2018)
    build_dataset(folder, tmp_path / "clean", rules=rules, images=False)
    train_photos = _provenance(tmp_path / "clean").query("split == 'train'")["photo_id"].tolist()
    damaged = train_photos[:3]  # photos the build selects for train: their damage must be noticed
    (folder / "photos" / str(damaged[0]) / "medium.jpg").unlink()
    (folder / "photos" / str(damaged[1]) / "medium.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "photos" / str(damaged[2]) / "medium.jpg").write_bytes(b"")
    result = build_dataset(folder, tmp_path / "out", rules=rules)
    assert result.audit["removed"]["missing or corrupt source image"] == {"photos": 3}
    assert not set(_provenance(tmp_path / "out")["photo_id"]) & set(damaged)
    for name in ("train2018.json", "val2018.json", "test2018.json"):
        assert validate_file(tmp_path / "out" / name) == []
    train = json.loads((tmp_path / "out" / "train2018.json").read_text())
    assert all((tmp_path / "out" / image["file_name"]).is_file() for image in train["images"])
    assert check_leakage(tmp_path / "out", release_names(rules))["observers_in_two_splits"] == 0


def test_a_finished_release_is_refused_unless_overwritten(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=20, photos=800, seed=2, image_size=48))
    out = tmp_path / "out"
    build_dataset(folder, out, rules=rules_for(Preset.INAT2018, max_image_side=40), seed=0)
    with pytest.raises(ValueError, match="--overwrite"):
        build_dataset(folder, out, rules=rules_for(Preset.INAT2018), seed=1)
    build_dataset(folder, out, rules=rules_for(Preset.INAT2018), seed=1, overwrite=True)
    fresh = tmp_path / "fresh"
    build_dataset(folder, fresh, rules=rules_for(Preset.INAT2018), seed=1)
    assert _digests(out) == _digests(fresh)  # no stale image or file survives the rebuild


def test_split_val_isolates_observers(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=60, photos=8000, seed=7, images=False))
    out = tmp_path / "out"
    build_dataset(folder, out, rules=rules_for(Preset.INAT2021, min_train=20, train_mini_per_class=20), images=False)
    sizes = split_val(out / "val.json", tmp_path / "minival", minival_frac=0.2, per_class=3)
    val = json.loads((tmp_path / "minival" / "val.json").read_text())
    mini = json.loads((tmp_path / "minival" / "minival.json").read_text())
    holders = lambda d: {i["rights_holder"] for i in d["images"]}  # noqa: E731
    assert not holders(val) & holders(mini)
    assert sizes["minival"] == len(mini["images"]) > 0
    assert pd.Series([a["category_id"] for a in mini["annotations"]]).value_counts().max() <= 3
    assert validate_file(tmp_path / "minival" / "minival.json") == []


@pytest.mark.parametrize(
    ("table", "mangle", "expected"),
    [
        ("observations", lambda t: t.replace("quality_grade", "grade"), "quality_grade"),
        ("taxa", lambda t: t.replace("\t", ","), "taxa"),
        ("photos", lambda t: t.replace("\t400\t", "\tfour hundred\t", 1), "line 2"),
        ("observations", lambda t: t + "broken\trow\n", "line"),
    ],
)
def test_malformed_tables_name_file_line_and_column(hand, tmp_path, caplog, table, mangle, expected):
    _, folder = hand
    path = folder / f"{table}.csv"
    path.write_text(mangle(path.read_text(encoding="utf-8")), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["build", str(folder), str(out), "--preset", "inat2018", "--no-images"]) == 2
    assert str(path) in caplog.text
    assert expected in caplog.text
    assert not (out / "train2018.json").exists()


def test_missing_table_and_bad_rules_are_one_line_errors(hand, tmp_path, caplog):
    _, folder = hand
    assert main(["build", str(folder), str(tmp_path / "o"), "--preset", "inat2018", "--max-train", "1"]) == 2
    assert "max_train" in caplog.text
    (folder / "observers.csv").unlink()
    assert main(["build", str(folder), str(tmp_path / "o"), "--preset", "inat2018", "--no-images"]) == 2
    assert "no observers table" in caplog.text


def test_parquet_and_gzip_tables_build_the_same(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=30, photos=2000, seed=8, images=False))
    gz = tmp_path / "gz"
    write_export(gz, SynthConfig(species=30, photos=2000, seed=8, images=False, gzip=True))
    pq = tmp_path / "pq"
    pq.mkdir()
    for name in ("taxa", "observations", "photos", "observers"):
        frame = pd.read_csv(folder / f"{name}.csv", sep="\t", dtype=str, keep_default_na=False, quoting=3)
        frame.to_parquet(pq / f"{name}.parquet")
    outs = []
    for source in (folder, gz, pq):
        out = tmp_path / f"out_{source.name}"
        build_dataset(source, out, rules=rules_for(Preset.INAT2018), images=False)
        outs.append((out / "train2018.json").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_uuid_join_matches_arrow_index_in():
    import pyarrow as pa
    import pyarrow.compute as pc

    from inatcomp.build.arrays import _index_in

    def uuid(i: int) -> str:
        return f"{i:08x}-1f3d-4a8b-9c2d-{i:012x}"

    rng = np.random.default_rng(0)
    observations = [uuid(i) for i in rng.permutation(500)]
    in_order = [u for u in observations for _ in range(int(rng.integers(1, 4)))]
    shuffled = [observations[i] for i in rng.integers(0, 500, 900)] + [uuid(10_000), "not-a-uuid"]
    cases = [
        (in_order, observations),  # photos listed in the observations' order
        (shuffled, observations),  # any order, with orphans and a value of another length
        (shuffled[:-1], observations + observations[:3]),  # duplicated observations: the first occurrence wins
        (in_order, observations[:-1] + [uuid(10_000).upper()]),  # not lowercase, one missing
        (in_order[:3], [*observations[:2], None, observations[2]]),  # a null in the value set
    ]
    for values, value_set in cases:
        values = pa.chunked_array([pa.array(values[:7], pa.string()), pa.array(values[7:], pa.string())])
        value_set = pa.chunked_array([pa.array(value_set, pa.string())])
        expected = pc.index_in(values, value_set=value_set).fill_null(-1).to_numpy()
        assert _index_in(values, value_set).tolist() == expected.tolist()


def test_release_json_escapes_text_and_leakage_check_reads_it(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=30, photos=3000, seed=4, images=False))
    observers = (folder / "observers.csv").read_text(encoding="utf-8").splitlines()
    tricky = ['quote " here', "back\\slash", 'x}],"licenses":[{"id":5,', "Ünïcödé ✓"]
    for k in range(1, len(observers)):
        observer_id, login, _ = observers[k].split("\t")
        observers[k] = f"{observer_id}\t{login}\t{tricky[k % len(tricky)]}"
    (folder / "observers.csv").write_text("\n".join(observers) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = build_dataset(folder, out, rules=rules_for(Preset.INAT2018), images=False)
    names = release_names(rules_for(Preset.INAT2018))
    train = json.loads((out / "train2018.json").read_text(encoding="utf-8"))
    assert {image["rights_holder"] for image in train["images"]} <= set(tricky)
    assert validate_file(out / "train2018.json") == []
    assert result.audit["leakage"]["json_images_not_in_provenance_split"] == 0
    # The leakage check reads the written files: an image moved to another split is caught.
    provenance = _provenance(out)
    train_id = int(provenance.loc[provenance["split"] == "train", "image_id"].iloc[0])
    provenance.loc[provenance["image_id"] == train_id, "split"] = "test"
    provenance.to_csv(out / "provenance.csv", index=False)
    leakage = check_leakage(out, names)
    assert leakage["json_images_not_in_provenance_split"] == 1
    assert leakage["observers_in_two_splits"] == 1
    # A JSON file in another layout is parsed whole, with the same answer.
    (out / names["train"]).write_text(json.dumps(train, indent=1), encoding="utf-8")
    assert check_leakage(out, names) == leakage


@pytest.mark.parametrize("top", [2, 1000, 1 << 20, 1 << 40, 1 << 62, (1 << 64) - 1])
@pytest.mark.parametrize("n", [1, 2, 9, 5000])
def test_sorting_helpers_equal_numpy(top, n):
    from inatcomp.build.arrays import first_within_groups, lexsort_by_group, rank_within_groups, sort_with_order

    rng = np.random.default_rng(n)
    values = rng.integers(0, top, n, dtype=np.uint64, endpoint=True)
    signed = values.astype(np.int64) if top < 1 << 63 else values
    for v in (values, signed, values.astype(np.uint32) % 7, np.tile(values, 2)):  # tiled: every value twice
        ordered, order = sort_with_order(v)
        assert order.tolist() == np.argsort(v, kind="stable").tolist()
        assert ordered.dtype == v.dtype and ordered.tolist() == np.sort(v).tolist()
    groups = rng.integers(0, max(2, n // 3), n)
    for keys in (rng.integers(0, 4, n), rng.integers(0, 1 << 40, n), rng.random(n), rng.integers(-3, 3, n)):
        order = np.lexsort((keys, groups))
        assert lexsort_by_group(groups, keys).tolist() == order.tolist()
        expected = np.empty(n, dtype=np.int64)
        run_start = {}
        for position, row in enumerate(order):
            expected[row] = position - run_start.setdefault(groups[row], position)
        assert rank_within_groups(groups, keys).tolist() == expected.tolist()
        assert first_within_groups(groups, keys).tolist() == (expected == 0).tolist()
        in_order = np.sort(groups)  # the already-in-order path
        assert (
            first_within_groups(in_order, np.zeros(n)).tolist() == np.r_[True, in_order[1:] != in_order[:-1]].tolist()
        )


@pytest.mark.parametrize("top", [50, 1 << 30, 1 << 50])
def test_unique_inverse_and_is_in_equal_numpy_for_small_and_large_ids(top):
    from inatcomp.build.arrays import _is_in, _unique_inverse

    rng = np.random.default_rng(top % 97)
    values = rng.integers(0, top, 20_000)
    unique, inverse = _unique_inverse(values)
    expected_unique, expected_inverse = np.unique(values, return_inverse=True)
    assert unique.tolist() == expected_unique.tolist() and inverse.tolist() == expected_inverse.tolist()
    known = rng.integers(0, top, 300)
    asked = np.r_[values[:500], known[:50], -1]
    assert _is_in(asked, known).tolist() == np.isin(asked, known).tolist()


@pytest.mark.parametrize("quota", [1, 3, 40])
def test_within_quota_ranks_few_and_equals_ranking_all(quota):
    from inatcomp.build.arrays import random_keys, rank_within_groups
    from inatcomp.build.sampling import _within_quota

    rng = np.random.default_rng(quota)
    n, n_groups = 60_000, 30
    groups = rng.integers(0, n_groups, n) ** 2 % n_groups  # some groups large, some small
    mask = rng.random(n) < 0.8
    for keys in (
        random_keys(rng, n).astype(np.int64),  # uniform: most items are never ranked
        (rng.integers(0, 3, n) << 32) | random_keys(rng, n).astype(np.int64),  # spread over observations
        (rng.integers(0, 5, n) + 1) << 33,  # above every limit: each group is short of its quota there, ranked whole
    ):
        expected = mask.copy()
        rows = np.flatnonzero(mask)
        expected[rows] = rank_within_groups(groups[rows], keys[rows]) < quota
        assert _within_quota(groups, mask, keys, quota, n_groups).tolist() == expected.tolist()


def test_observation_classes_by_dense_table_equal_binary_search(hand, monkeypatch):
    import inatcomp.build.inclusion as inclusion
    from inatcomp.build.export import ancestry_parents, read_export
    from inatcomp.formats.taxonomy import TaxonIndex

    t = read_export(hand[1]).taxa
    taxa = TaxonIndex(
        taxon_ids=t["taxon_id"].to_numpy(),
        parent_ids=ancestry_parents(t["ancestry"]),
        ranks=np.asarray([r.lower() for r in t["rank"].to_pylist()], dtype=object),
        rank_levels=t["rank_level"].fill_null(0).to_numpy(),
        names=t["name"].to_numpy(zero_copy_only=False),
        active=t["active"].fill_null(True).to_numpy(zero_copy_only=False),
    )
    ids = np.r_[taxa.taxon_ids, -1, -5, int(taxa.taxon_ids.max()) + 1, 10**12, 0]
    valid = np.ones(len(ids), dtype=bool)
    valid[-1] = False  # no taxon
    rules = rules_for(Preset.INAT2018)
    dense = inclusion._observation_classes(taxa, ids, valid, rules)
    monkeypatch.setattr(inclusion, "_dense", lambda top, n: False)  # every lookup by binary search
    searched = inclusion._observation_classes(taxa, ids, valid, rules)
    assert dense[0].tolist() == searched[0].tolist() and dense[1].tolist() == searched[1].tolist()
    assert dense[1][-1] == inclusion._REASONS.index("no taxon")
    assert (dense[1][len(taxa.taxon_ids) : -1] == inclusion._REASONS.index("unknown taxon")).all()


def test_rule_overrides_are_the_numeric_rules_and_rules_for_takes_each():
    import dataclasses
    import typing

    from inatcomp.build.rules import BuildRules, rule_overrides

    overrides = rule_overrides()
    hints = typing.get_type_hints(BuildRules)
    numbers = (int, float, int | None, float | None)
    numeric = [f.name for f in dataclasses.fields(BuildRules) if hints[f.name] in numbers]
    assert [o.name for o in overrides] == [name for name in numeric if name != "year"]  # the year stays the preset's
    assert not {"preset", "photo_choice", "research_only", "leaf_genera", "year"} & {o.name for o in overrides}
    by_name = {o.name: o for o in overrides}
    assert by_name["val_fraction"].type is float and by_name["max_train"].type is int
    assert by_name["test_per_class"].help.endswith("(and so follows train's long tail).")  # continuation lines joined
    for override in overrides:
        assert override.help, override.name
        preset_value = getattr(rules_for(Preset.INAT2018), override.name)
        value = override.type("1" if preset_value is None else str(preset_value))  # as the command line parses it
        assert getattr(rules_for(Preset.INAT2018, **{override.name: value}), override.name) == value
