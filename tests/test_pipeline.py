"""Tests of inatcomp.pipeline: finding a release, the kernels' options, category subsets, submitting.

Training and prediction runs are tested in tests/test_train.py, tests/test_predict.py and tests/test_kernels.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inatcomp import pipeline
from inatcomp.build.rules import Preset
from inatcomp.formats.predictions import PredictionWriter
from inatcomp.pipeline import (
    YEARS,
    Release,
    add_kernel_arguments,
    find_release,
    kernel_release,
    submit,
    subset_categories,
    synthetic_release,
)


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    """A tiny synthetic iNat2018 release with images, a test split and its solution."""
    return synthetic_release(tmp_path_factory.mktemp("pipeline"), species=12, photos=900, image_size=32, workers=1)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _solution(release: Release) -> dict[int, int]:
    with release.solution.open(newline="") as fh:
        return {int(row["id"]): int(row["expected"]) for row in csv.DictReader(fh)}


def test_synthetic_release_writes_an_export_and_a_release(release):
    assert release.preset is Preset.INAT2018
    assert [p.name for p in (release.train, release.val, release.test)] == [
        "train2018.json",
        "val2018.json",
        "test2018.json",
    ]
    assert (release.root.parent / "export" / "taxa.csv").is_file()
    train = _read_json(release.train)
    assert train["images"] and all((release.root / i["file_name"]).is_file() for i in train["images"][:20])
    test_ids = {i["id"] for i in _read_json(release.test)["images"]}
    assert test_ids and set(_solution(release)) == test_ids


def test_find_release_finds_the_built_files(release):
    assert find_release(release.root, preset=Preset.INAT2018) == release
    assert find_release(str(release.root), preset="inat2018") == release


def test_find_release_without_a_solution(release, tmp_path):
    copy = tmp_path / "downloaded"
    copy.mkdir()
    for path in (release.train, release.val, release.test):
        shutil.copy(path, copy / path.name)
    found = find_release(copy, preset=Preset.INAT2018)
    assert found.solution is None and found.test == copy / "test2018.json"


def test_find_release_names_what_is_missing(release, tmp_path):
    with pytest.raises(ValueError, match=r"not a folder; expected the inat2018 release \(train2018.json"):
        find_release(tmp_path / "nowhere", preset=Preset.INAT2018)
    with pytest.raises(ValueError, match="train2017.json: missing; a inat2017 release folder holds train2017.json"):
        find_release(release.root, preset=Preset.INAT2017)
    with pytest.raises(ValueError, match=r"train.json: missing; a inat2021 release folder holds train.json \(train"):
        find_release(release.root, preset="inat2021")
    partial = tmp_path / "partial"
    partial.mkdir()
    for path in (release.train, release.test):
        shutil.copy(path, partial / path.name)
    with pytest.raises(ValueError, match=r"val2018.json: missing; .* \(val split\)") as error:
        find_release(partial, preset=Preset.INAT2018)
    assert str(partial / "val2018.json") in str(error.value)


@pytest.mark.parametrize(
    ("preset", "expected"),
    [(Preset.INAT2017, "inat2017"), (Preset.INAT2018, "inat2018"), (Preset.INAT2021, "inat2021"),
     (Preset.PRODUCTION, "inat2021")],
)  # fmt: skip
def test_submission_format_of_each_year(preset, expected):
    here = Path(".")
    assert (
        Release(root=here, preset=preset, train=here, val=here, test=here, solution=None).submission_format == expected
    )


def test_kernel_arguments_and_their_defaults():
    parser = argparse.ArgumentParser()
    add_kernel_arguments(parser, out="runs/k")
    args = parser.parse_args([])
    assert (args.data, args.year, args.out, args.workers, args.amp, args.smoke) == (
        None,
        "2018",
        "runs/k",
        8,
        "off",
        False,
    )
    args = parser.parse_args(["--data", "d", "--year", "2021", "--workers", "2", "--amp", "bf16", "--smoke"])
    assert (args.data, YEARS[args.year], args.workers, args.amp, args.smoke) == ("d", Preset.INAT2021, 2, "bf16", True)
    with pytest.raises(SystemExit):
        parser.parse_args(["--year", "2019"])
    fixed = argparse.ArgumentParser()
    add_kernel_arguments(fixed, out="o", year=False)
    assert not hasattr(fixed.parse_args([]), "year")


def test_kernel_release_takes_data_or_smoke(release, tmp_path, monkeypatch):
    data = argparse.Namespace(data=str(release.root), smoke=False, out=str(tmp_path), year="2018")
    assert kernel_release(data) == release
    with pytest.raises(ValueError, match="train.json: missing"):
        kernel_release(data, preset="inat2021")  # a fixed preset beats --year
    with pytest.raises(ValueError, match="--data is required"):
        kernel_release(argparse.Namespace(data=None, smoke=False, out=str(tmp_path)))
    calls = []
    monkeypatch.setattr(pipeline, "synthetic_release", lambda out, **kwargs: calls.append((out, kwargs)) or release)
    smoke = argparse.Namespace(data=None, smoke=True, out=str(tmp_path), year="2021")
    assert kernel_release(smoke, image_size=40) is release
    assert calls == [
        (tmp_path / "data", dict(species=12, photos=900, image_size=40, preset=Preset.INAT2021, workers=1))
    ]


def test_subset_categories_keeps_a_share_with_their_images(release, tmp_path):
    source = _read_json(release.train)
    all_ids = sorted(c["id"] for c in source["categories"])
    out, kept = subset_categories(release.train, tmp_path / "half.json", keep=0.5, seed=3)
    assert out == tmp_path / "half.json"
    assert len(kept) == round(0.5 * len(all_ids)) and set(kept) < set(all_ids) and kept == sorted(kept)
    subset = _read_json(out)
    assert sorted(c["id"] for c in subset["categories"]) == kept
    assert {a["category_id"] for a in subset["annotations"]} == set(kept)
    expected_images = {a["image_id"] for a in source["annotations"] if a["category_id"] in set(kept)}
    assert {i["id"] for i in subset["images"]} == expected_images
    assert subset_categories(release.train, tmp_path / "again.json", keep=0.5, seed=3)[1] == kept
    assert subset_categories(release.train, tmp_path / "other.json", keep=0.5, seed=4)[1] != kept


def test_subset_categories_by_ids(release, tmp_path):
    first_two = sorted(c["id"] for c in _read_json(release.train)["categories"])[:2]
    _, kept = subset_categories(release.train, tmp_path / "two.json", keep=0.9, category_ids=first_two[::-1])
    assert kept == first_two
    assert _read_json(tmp_path / "two.json")["info"] == _read_json(release.train)["info"]  # the rest is copied


def _test_predictions(release: Release, path: Path, *, right: int) -> Path:
    """Predictions over the test images: the solution's label first for the first ``right`` images, second after."""
    test = _read_json(release.test)
    image_ids = [i["id"] for i in test["images"]]
    category_ids = sorted(c["id"] for c in test["categories"])
    expected = _solution(release)
    scores = np.full((len(image_ids), len(category_ids)), 0.01, dtype=np.float32)
    for row, image_id in enumerate(image_ids):
        column = category_ids.index(expected[image_id])
        scores[row, column] = 0.9 if row < right else 0.5
        if row >= right:
            scores[row, (column + 1) % len(category_ids)] = 0.9
    with PredictionWriter(path, image_ids=image_ids, category_ids=category_ids) as writer:
        writer.write(scores)
    return path


def test_submit_writes_a_valid_submission_and_scores_it(release, tmp_path):
    n = len(_read_json(release.test)["images"])
    pred = _test_predictions(release, tmp_path / "test.pred", right=n // 2)
    result = submit(release, pred, tmp_path / "submissions" / "mine.csv")
    assert result["submission"] == tmp_path / "submissions" / "mine.csv"
    lines = result["submission"].read_text().splitlines()
    assert lines[0] == "id,predicted" and len(lines) == n + 1
    assert all(len(line.split(",")[1].split()) == 3 for line in lines[1:])  # 2018: three labels
    assert result["top1_error"] == pytest.approx(1 - (n // 2) / n)
    assert result["top3_error"] == 0.0  # the right label is always second


def test_submit_without_a_solution_only_writes(release, tmp_path):
    pred = _test_predictions(release, tmp_path / "test.pred", right=0)
    bare = Release(root=release.root, preset=release.preset, train=release.train, val=release.val,
                   test=release.test, solution=None)  # fmt: skip
    result = submit(bare, pred, tmp_path / "bare.csv")
    assert set(result) == {"submission"} and result["submission"].is_file()


def test_submit_refuses_predictions_that_miss_test_images(release, tmp_path):
    test = _read_json(release.test)
    category_ids = sorted(c["id"] for c in test["categories"])
    image_ids = [i["id"] for i in test["images"]][1:]
    with PredictionWriter(tmp_path / "short.pred", image_ids=image_ids, category_ids=category_ids) as writer:
        writer.write(np.full((len(image_ids), len(category_ids)), 0.5, dtype=np.float32))
    with pytest.raises(ValueError, match="the submission does not validate"):
        submit(release, tmp_path / "short.pred", tmp_path / "short.csv")
