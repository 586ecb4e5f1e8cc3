"""Tests for inatcomp.formats: schemas, validation of every file kind, kind guessing, table reading."""

from __future__ import annotations

import copy
import gzip
import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from inatcomp.formats.competitions import COMPETITIONS, SubmissionFormat
from inatcomp.formats.kinds import FileKind, Problem, load_schema
from inatcomp.formats.tables import read_table
from inatcomp.formats.validate import guess_kind, validate_file

TAXA = ["kingdom", "phylum", "class", "order", "family", "genus"]
YEARS = (2017, 2018, 2019, 2021)

# --------------------------------------------------------------------------------------------------------------------
# Good examples


def make_dataset(year: int, test: bool = False) -> dict:
    """A tiny valid competition dataset JSON of the given year and flavour."""
    images = []
    for i in range(3):
        image = {
            "id": i,
            "width": 800,
            "height": 600,
            "file_name": f"train/{i}.jpg",
            "license": 1,
            "rights_holder": "x",
        }
        if year == 2021:
            image |= {"date": "2019-05-01 10:00:00+00:00", "latitude": 45.5, "longitude": -120.0}
            image["location_uncertainty"] = 106807033 if i == 0 else None
            if i == 2:
                image["latitude"] = image["longitude"] = None
        images.append(image)
    categories = []
    for c in range(2):
        cat = {"id": c, "name": f"Genus species{c}"}
        if year == 2017:
            cat["supercategory"] = "Plantae"
        elif year in (2018, 2019):
            cat |= {rank: f"{rank}{c}" for rank in TAXA}
            if year == 2018:
                cat["supercategory"] = "Plantae"
        else:
            cat |= {rank: f"{rank}{c}" for rank in TAXA}
            cat |= {"common_name": "Catchfly", "supercategory": "Plants", "specific_epithet": "vulgaris"}
            cat["image_dir_name"] = f"0000{c}_Plantae_Tracheophyta_Magnoliopsida_Caryophyllales_Viscaria_vulgaris"
        categories.append(cat)
    data = {
        "info": {
            "year": year,
            "version": "1.0",
            "description": "tiny",
            "contributor": "tests",
            "url": "https://example.org",
            "date_created": "2021-01-01",
        },
        "licenses": [{"id": 1, "name": "CC BY", "url": "https://creativecommons.org/licenses/by/4.0/"}],
        "images": images,
        "categories": categories,
    }
    if not test:
        data["annotations"] = [{"id": i, "image_id": i, "category_id": i % 2} for i in range(3)]
        if year == 2017:
            data["annotations"][0] |= {"bbox": [1, 2, 3, 4], "area": 12, "iscrowd": 0}
    return data


LOCATIONS = [
    {"id": 0, "lat": 45.5, "lon": -120.25, "user_id": 7, "date": "2017-05-01"},
    {"id": 1, "lat": None, "lon": None, "user_id": 8, "date_c": "2017-05-02"},
]

TAXA_TSV = (
    "taxon_id\tancestry\trank_level\trank\tname\tactive\n"
    "48460\t\t100\tstateofmatter\tLife\ttrue\n"
    "47126\t48460\t70.0\tkingdom\tPlantae\tt\n"
    "211194\t48460/47126\t60\tphylum\tTracheophyta\tfalse\n"
    '52775\t48460\\47126\\211194\t10.0\tspecies\tBombus "impatiens"\tf\n'
    "999\t48460/47126\t5\tvariety\tX y var. z\tTRUE\n"
)
OBSERVATIONS_HEADER = (
    "observation_uuid\tobserver_id\tlatitude\tlongitude\tpositional_accuracy\ttaxon_id\tquality_grade\tobserved_on"
)
OBSERVATIONS_TSV = (
    OBSERVATIONS_HEADER + "\tanomaly_score\n"
    "5c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t1\t45.5\t-120.25\t10\t52775\tresearch\t2020-05-17\t0.25\n"
    "6c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t2\t\t\t\t\tcasual\t\t\n"
    "7c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t3\t-90\t180\t106807033\t1\tneeds_id\t1999-12-31\t1e-3\n"
)
OBSERVATIONS_OLD_TSV = (
    OBSERVATIONS_HEADER + "\n5c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t1\t45.5\t-120.25\t10\t52775\tresearch\t2020-05-17\n"
)
PHOTOS_TSV = (
    "photo_uuid\tphoto_id\tobservation_uuid\tobserver_id\textension\tlicense\twidth\theight\tposition\n"
    "aaaaaaaa-1f3d-4a8b-9c2d-0123456789ab\t101\t5c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t1\tjpg\tCC-BY-NC\t2048\t1536\t0\n"
    "bbbbbbbb-1f3d-4a8b-9c2d-0123456789ab\t102\t5c7a1b9e-1f3d-4a8b-9c2d-0123456789ab\t1\tpng\tCC0\t500\t375\t1\n"
)
OBSERVERS_TSV = "observer_id\tlogin\tname\n1\talice\tAlice A.\n2\tbob\t\n"
SUBMISSIONS = {
    2017: "id,predicted\n0,1 2 3 4 5\n1,5 4 3 2 1\n",
    2018: "id,predicted\n0,1 2 3\n1,30 20 10\n",
    2019: "id,predicted\n0,1\n1,1\n",
    2021: "Id,Predicted\n0,1 2 3 4 5\n1,9999 0 1 2 3\n",
}
SOLUTION = "id,expected,usage\n0,1,Public\n1,5,Private\n"


def good_files() -> list[tuple[FileKind, str, str | bytes]]:
    """(kind, file name, content) for a valid example of every kind."""
    files: list[tuple[FileKind, str, str | bytes]] = []
    for year in YEARS:
        files.append((FileKind(f"dataset_inat{year}"), f"train{year}.json", json.dumps(make_dataset(year))))
        files.append((FileKind(f"dataset_inat{year}_test"), f"test{year}.json", json.dumps(make_dataset(year, True))))
        files.append((FileKind(f"submission_inat{year}"), f"submission_{year}.csv", SUBMISSIONS[year]))
    files += [
        (FileKind.LOCATIONS, "train2018_locations.json", json.dumps(LOCATIONS)),
        (FileKind.EXPORT_TAXA, "taxa.csv", TAXA_TSV),
        (FileKind.EXPORT_OBSERVATIONS, "observations.csv", OBSERVATIONS_TSV),
        (FileKind.EXPORT_PHOTOS, "photos.csv", PHOTOS_TSV),
        (FileKind.EXPORT_OBSERVERS, "observers.csv", OBSERVERS_TSV),
        (FileKind.SOLUTION, "solution.csv", SOLUTION),
    ]
    return files


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    return path


def assert_problem(problems: list[Problem], where: str, *words: str) -> Problem:
    """Assert that one problem is at ``where`` and its message has every word (case-insensitive)."""
    for problem in problems:
        if problem.where == where and all(w.lower() in problem.message.lower() for w in words):
            return problem
    raise AssertionError(f"no problem at {where!r} with {words}; got:\n" + "\n".join(map(str, problems)))


# --------------------------------------------------------------------------------------------------------------------
# Schemas and good files


@pytest.mark.parametrize("kind", list(FileKind), ids=lambda k: k.value)
def test_schema_loads(kind: FileKind) -> None:
    schema = load_schema(kind)
    if kind.is_table:
        assert schema["dialect"]["delimiter"] == ("\t" if kind.value.startswith("export_") else ",")
        assert schema["fields"] and all({"name", "type", "required"} <= f.keys() for f in schema["fields"])
        types = {f["type"] for f in schema["fields"]}
        assert types <= {"integer", "number", "string", "uuid", "date", "boolean", "enum"}
    else:
        assert schema["$schema"].endswith("2020-12/schema")
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(("year", "labels"), [(2017, 5), (2018, 3), (2019, 1), (2021, 5)])
def test_submission_schema_labels(year: int, labels: int) -> None:
    schema = load_schema(FileKind(f"submission_inat{year}"))
    assert schema["labels"] == labels
    header = ",".join(f["name"] for f in schema["fields"])
    assert header == ("Id,Predicted" if year == 2021 else "id,predicted")


@pytest.mark.parametrize(("kind", "name", "content"), good_files(), ids=[kind.value for kind, _, _ in good_files()])
def test_good_file_accepted(tmp_path: Path, kind: FileKind, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    assert validate_file(path, kind) == []
    assert guess_kind(path) is kind
    assert validate_file(path) == []


@pytest.mark.parametrize("name", ["taxa.csv.gz", "observations.csv.gz", "observations.txt"])
def test_good_export_variants(tmp_path: Path, name: str) -> None:
    content = TAXA_TSV if name.startswith("taxa") else OBSERVATIONS_TSV
    path = write(tmp_path, name, content)
    assert validate_file(path) == []


def test_observations_without_anomaly_score(tmp_path: Path) -> None:
    path = write(tmp_path, "observations.csv", OBSERVATIONS_OLD_TSV)
    assert validate_file(path) == []


def test_crlf_and_bom_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "observers.csv", "\ufeff" + OBSERVERS_TSV.replace("\n", "\r\n"))
    assert validate_file(path) == []


@pytest.mark.parametrize("name", ["taxa.parquet", "photos.parquet"])
def test_parquet_tables(tmp_path: Path, name: str) -> None:
    frame = read_table(write(tmp_path, name.replace(".parquet", ".csv"), TAXA_TSV if "taxa" in name else PHOTOS_TSV))
    path = tmp_path / name
    if "taxa" in name:  # native types, as a real Parquet export would have
        frame["taxon_id"] = frame["taxon_id"].astype("int64")
        frame["rank_level"] = frame["rank_level"].astype(float)
        frame["active"] = frame["active"].str.lower().isin(["t", "true"])
    frame.to_parquet(path)
    assert validate_file(path) == []
    frame.iloc[1:2, 0] = frame.iloc[0, 0]  # fine for taxa: taxon_id is not unique-constrained
    if "taxa" in name:
        frame["rank_level"] = frame["rank_level"].replace(70.0, 71.0)
        frame.to_parquet(path)
        assert_problem(validate_file(path), "row 2, column rank_level", "71", "not one of")
    else:
        frame.drop(columns=["width"]).to_parquet(path)
        assert_problem(validate_file(path), "", "missing column", "width")


# --------------------------------------------------------------------------------------------------------------------
# Broken files: whole-file problems

BINARY = bytes(range(256)) * 4
BAD_UTF8 = OBSERVATIONS_TSV.encode().replace(b"casual", b"cas\xc3ual")
BAD_UTF8_AT = BAD_UTF8.index(b"\xc3")


@pytest.mark.parametrize(
    ("name", "content", "kind", "where", "words"),
    [
        ("train2018.json", '{"images": [1, 2,]}', None, "line 1, column 18", ["malformed JSON"]),
        ("train2018.json", '{\n  "info": {\n  "year": 2018\n', None, "line 4, column 1", ["malformed JSON"]),
        ("train2018.json", "", None, "", ["empty"]),
        ("taxa.csv", "", None, "", ["empty"]),
        ("taxa.csv", BINARY, None, "", ["binary", "byte offset 128"]),
        ("train2018.json", BINARY, None, "", ["binary"]),
        ("observers.csv", b"observer_id\tlogin\tname\n\x00\x01\x02\n", None, "", ["NUL", "binary"]),
        ("observations.csv", BAD_UTF8, FileKind.EXPORT_OBSERVATIONS, "line 3", ["utf-8", f"offset {BAD_UTF8_AT}"]),
        (
            "observers.csv",
            "observer_id\tlogin\tname\n1\tjos\xe9\t\n".encode("latin-1"),
            None,
            "line 2",
            ["utf-8", "offset 28"],
        ),
        ("test2018.json", b'{"images": "caf\xe9"}', None, "line 1", ["invalid utf-8", "byte offset 15"]),
        ("taxa.csv.gz", b"\x1f\x8bnot really gzip", None, "", ["gzip"]),
        ("photos.parquet", b"PAR1 junk", None, "", ["parquet"]),
    ],
    ids=[
        "trailing-comma",
        "truncated-json",
        "empty-json",
        "empty-table",
        "binary-table",
        "binary-json",
        "nul-table",
        "bad-utf8-table",
        "latin1-table",
        "latin1-json",
        "corrupt-gzip",
        "junk-parquet",
    ],
)
def test_broken_file(
    tmp_path: Path, name: str, content: str | bytes, kind: FileKind | None, where: str, words: list[str]
) -> None:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    problems = validate_file(path, kind)
    assert problems, "expected a problem"
    assert_problem(problems, where, *words)
    assert all(p.file == str(path) for p in problems)


def test_missing_file(tmp_path: Path) -> None:
    problems = validate_file(tmp_path / "nope.json")
    assert problems == [Problem(str(tmp_path / "nope.json"), "", "no such file")]


def test_problem_str() -> None:
    assert str(Problem("a.csv", "line 3, column x", "bad")) == "a.csv: line 3, column x: bad"
    assert str(Problem("a.csv", "", "empty")) == "a.csv: empty"


def test_unguessable_file_is_a_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "mystery.csv", "a,b\n1,2\n")
    problems = validate_file(path)
    assert len(problems) == 1 and "cannot tell" in problems[0].message
    with pytest.raises(ValueError, match="mystery.csv"):
        guess_kind(path)


# --------------------------------------------------------------------------------------------------------------------
# Broken tables


@pytest.mark.parametrize(
    ("name", "content", "where", "words"),
    [
        (
            "observations.csv",
            OBSERVATIONS_TSV.replace("\t", ","),
            "line 1",
            ["header has 1 column", "comma-separated", "9 tab-separated", "observation_uuid, observer_id"],
        ),
        ("taxa.csv", TAXA_TSV.replace("\trank\t", "\trnk\t"), "line 1", ["missing column", "rank"]),
        ("observers.csv", OBSERVERS_TSV.replace("name\n", "name\textra\n"), "line 1", ["unexpected column", "extra"]),
        ("observers.csv", OBSERVERS_TSV + "3\tcarol\n", "line 4", ["2 field", "expected 3"]),
        ("observers.csv", OBSERVERS_TSV + "3\tcarol\tC\tx\t\n", "line 4", ["5 field", "expected 3"]),
        ("observers.csv", OBSERVERS_TSV + "\n3\tcarol\t\n", "line 4", ["empty line"]),
        ("observers.csv", OBSERVERS_TSV + "x7\tcarol\t\n", "line 4, column observer_id", ["'x7'", "integer"]),
        ("observers.csv", OBSERVERS_TSV + "\tcarol\t\n", "line 4, column observer_id", ["empty", "integer"]),
        ("observers.csv", OBSERVERS_TSV + "3\t\t\n", "line 4, column login", ["empty"]),
        (
            "observations.csv",
            OBSERVATIONS_TSV.replace("\t45.5\t", "\t95.5\t"),
            "line 2, column latitude",
            ["95.5", "maximum 90"],
        ),
        (
            "observations.csv",
            OBSERVATIONS_TSV.replace("\t-120.25\t", "\tnan\t"),
            "line 2, column longitude",
            ["'nan'", "number"],
        ),
        ("observations.csv", OBSERVATIONS_TSV.replace("\t52775\t", "\t527.5\t"), "line 2, column taxon_id", ["527.5"]),
        ("observations.csv", OBSERVATIONS_TSV.replace("research", "good"), "line 2, column quality_grade", ["good"]),
        (
            "observations.csv",
            OBSERVATIONS_TSV.replace("2020-05-17", "2020-13-45"),
            "line 2, column observed_on",
            ["date"],
        ),
        (
            "observations.csv",
            OBSERVATIONS_TSV.replace("5c7a1b9e-", "5c7a1b9z-"),
            "line 2, column observation_uuid",
            ["UUID"],
        ),
        ("taxa.csv", TAXA_TSV.replace("\t70.0\t", "\t71\t"), "line 3, column rank_level", ["'71'", "not one of"]),
        ("taxa.csv", TAXA_TSV.replace("\tt\n", "\tyes\n"), "line 3, column active", ["'yes'", "boolean"]),
        ("taxa.csv", TAXA_TSV.replace("48460/47126\t60", "48460 47126\t60"), "line 4, column ancestry", ["pattern"]),
        ("photos.csv", PHOTOS_TSV.replace("\t2048\t", "\t0\t"), "line 2, column width", ["'0'", "minimum 1"]),
        ("observers.csv", "observer_id\tlogin\tname\n", "", ["no data rows"]),
    ],
    ids=[
        "wrong-separator",
        "missing-column",
        "extra-column",
        "short-row",
        "long-row",
        "blank-line",
        "non-integer-id",
        "empty-required",
        "empty-required-text",
        "latitude-out-of-range",
        "nan-longitude",
        "float-taxon-id",
        "bad-enum",
        "bad-date",
        "bad-uuid",
        "bad-rank-level",
        "bad-boolean",
        "bad-ancestry",
        "zero-width",
        "header-only",
    ],
)
def test_broken_table(tmp_path: Path, name: str, content: str, where: str, words: list[str]) -> None:
    problems = validate_file(write(tmp_path, name, content))
    assert_problem(problems, where, *words)


def test_ragged_rows_do_not_shift_line_numbers(tmp_path: Path) -> None:
    content = OBSERVERS_TSV + "3\tcarol\tC\textra\n4\tdave\t\n5\t\t\n6\terin\n7\tfrank\t\n"
    problems = validate_file(write(tmp_path, "observers.csv", content))
    assert [p.where for p in problems] == ["line 4", "line 6, column login", "line 7"]


def test_max_problems(tmp_path: Path) -> None:
    content = "observer_id\tlogin\tname\n" + "".join(f"x{i}\tl\t\n" for i in range(50))
    problems = validate_file(write(tmp_path, "observers.csv", content), max_problems=10)
    assert len(problems) == 11
    assert problems[0].where == "line 2, column observer_id"
    assert_problem(problems, "", "40 more", "suppressed")


# --------------------------------------------------------------------------------------------------------------------
# Submissions and solutions


@pytest.mark.parametrize(
    ("year", "content", "where", "words"),
    [
        (2017, "id,predicted\n0,1 2 3 4\n", "line 2, column predicted", ["4 label", "exactly 5"]),
        (2018, "id,predicted\n0,1 2 3\n1,1 2 3 4\n", "line 3, column predicted", ["4 label", "exactly 3"]),
        (2019, "id,predicted\n0,1 2\n", "line 2, column predicted", ["2 label", "exactly 1"]),
        (2021, "Id,Predicted\n0,1 2 3 2 5\n", "line 2, column Predicted", ["repeats a label"]),
        (2018, "id,predicted\n0,1 2 a\n", "line 2, column predicted", ["integer"]),
        (2018, "id,predicted\n0,1  2 3\n", "line 2, column predicted", ["single spaces"]),
        (2018, "id,predicted\n0,1 2 3\n0,4 5 6\n", "line 3, column id", ["duplicate", "first at line 2"]),
        (2018, "id,predicted\nx,1 2 3\n", "line 2, column id", ["'x'", "integer"]),
        (2021, "id,predicted\n0,1 2 3 4 5\n", "line 1", ["expected exactly 'Id,Predicted'"]),
        (2021, "id,predicted\n0,1 2 3 4\n", "line 2, column Predicted", ["exactly 5"]),
        (2017, "image_id,labels\n0,1 2 3 4 5\n", "line 1", ["expected exactly 'id,predicted'"]),
        (2017, "id;predicted\n0;1 2 3 4 5\n", "line 1", ["header has 1 column", "semicolon"]),
        (2018, "id,predicted\n0,1 2 3,4\n", "line 2", ["3 field", "expected 2"]),
    ],
    ids=[
        "too-few-2017",
        "too-many-2018",
        "too-many-2019",
        "repeated-label",
        "non-integer-label",
        "double-space",
        "duplicate-id",
        "non-integer-id",
        "header-case",
        "header-case-rows-still-checked",
        "wrong-header",
        "wrong-separator",
        "extra-field",
    ],
)
def test_broken_submission(tmp_path: Path, year: int, content: str, where: str, words: list[str]) -> None:
    problems = validate_file(write(tmp_path, "sub.csv", content), FileKind(f"submission_inat{year}"))
    assert_problem(problems, where, *words)


@pytest.mark.parametrize(
    ("content", "where", "words"),
    [
        (SOLUTION + "2,3,private\n", "line 4, column usage", ["'private'", "Public, Private"]),
        (SOLUTION + "2,3,\n", "line 4, column usage", ["empty"]),
        (SOLUTION + "1,3,Public\n", "line 4, column id", ["duplicate"]),
        (SOLUTION + "2,3.5,Public\n", "line 4, column expected", ["'3.5'", "integer"]),
        ("id,expected\n0,1\n", "line 1", ["missing column", "usage"]),
    ],
    ids=["bad-usage", "empty-usage", "duplicate-id", "float-expected", "missing-usage"],
)
def test_broken_solution(tmp_path: Path, content: str, where: str, words: list[str]) -> None:
    assert_problem(validate_file(write(tmp_path, "solution.csv", content), FileKind.SOLUTION), where, *words)


# --------------------------------------------------------------------------------------------------------------------
# Broken JSON content


def _broken(year: int, edit, test: bool = False) -> dict:
    data = copy.deepcopy(make_dataset(year, test))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        (_broken(2021, lambda d: d["images"][1].update(latitude=91.0)), "$.images[1].latitude", ["91", "maximum"]),
        (_broken(2021, lambda d: d["images"][1].update(longitude=-181)), "$.images[1].longitude", ["-181"]),
        (_broken(2018, lambda d: d["images"][2].update(id="2")), "$.images[2].id", ["'2'", "integer"]),
        (_broken(2018, lambda d: d["images"][0].update(width=0)), "$.images[0].width", ["minimum"]),
        (_broken(2018, lambda d: d["images"][0].pop("file_name")), "$.images[0]", ["file_name", "required"]),
        (_broken(2018, lambda d: d["categories"][0].pop("kingdom")), "$.categories[0]", ["kingdom", "required"]),
        (_broken(2018, lambda d: d["images"][2].update(id=1)), "$.images[2].id", ["duplicate id 1", "$.images[1]"]),
        (_broken(2018, lambda d: d["categories"][1].update(id=0)), "$.categories[1].id", ["duplicate id 0"]),
        (_broken(2018, lambda d: d["annotations"][1].update(id=0)), "$.annotations[1].id", ["duplicate id 0"]),
        (
            _broken(2017, lambda d: d["annotations"][1].update(category_id=99)),
            "$.annotations[1].category_id",
            ["99", "category"],
        ),
        (
            _broken(2021, lambda d: d["annotations"][0].update(image_id=42)),
            "$.annotations[0].image_id",
            ["42", "image"],
        ),
        (_broken(2021, lambda d: d["annotations"].pop()), "$.images[2]", ["no annotation"]),
        (_broken(2019, lambda d: d["images"][0].update(license=3)), "$.images[0].license", ["license 3"]),
        (_broken(2018, lambda d: d.pop("licenses")), "$", ["licenses", "required"]),
        (_broken(2018, lambda d: d.update(images={})), "$.images", ["array"]),
    ],
    ids=[
        "latitude-out-of-range",
        "longitude-out-of-range",
        "string-image-id",
        "zero-width",
        "missing-file-name",
        "missing-kingdom",
        "duplicate-image-id",
        "duplicate-category-id",
        "duplicate-annotation-id",
        "missing-category",
        "missing-image",
        "unannotated-image",
        "missing-license",
        "no-licenses",
        "images-not-a-list",
    ],
)
def test_broken_dataset(tmp_path: Path, data: dict, where: str, words: list[str]) -> None:
    year = data["info"]["year"]
    path = write(tmp_path, f"train{year}.json", json.dumps(data))
    assert_problem(validate_file(path, FileKind(f"dataset_inat{year}")), where, *words)


def test_test_flavour_rejects_annotations(tmp_path: Path) -> None:
    path = write(tmp_path, "x.json", json.dumps(make_dataset(2018)))
    assert_problem(validate_file(path, FileKind.DATASET_INAT2018_TEST), "$", "annotations")


def test_test_flavour_without_categories(tmp_path: Path) -> None:
    data = make_dataset(2018, test=True)
    del data["categories"]
    path = write(tmp_path, "test2018.json", json.dumps(data))
    assert guess_kind(path) is FileKind.DATASET_INAT2018_TEST
    assert validate_file(path) == []


@pytest.mark.parametrize(
    ("record", "where", "words"),
    [
        ({"id": 2, "lat": -91, "lon": 0, "user_id": 1, "date": None}, "$[2].lat", ["-91", "minimum"]),
        ({"id": 2, "lat": 0, "lon": 0, "user_id": 1}, "$[2]", ["date_c"]),
        ({"id": 1, "lat": 0, "lon": 0, "user_id": 1, "date": "x"}, "$[2].id", ["duplicate id 1"]),
    ],
    ids=["bad-latitude", "no-date", "duplicate-id"],
)
def test_broken_locations(tmp_path: Path, record: dict, where: str, words: list[str]) -> None:
    path = write(tmp_path, "val2018_locations.json", json.dumps([*LOCATIONS, record]))
    assert_problem(validate_file(path), where, *words)


def test_json_problem_limit(tmp_path: Path) -> None:
    data = make_dataset(2018)
    data["images"] = [dict(data["images"][0], id=i, width=-1) for i in range(30)]
    path = write(tmp_path, "train2018.json", json.dumps(data))
    problems = validate_file(path, max_problems=5)
    assert len(problems) == 6
    assert_problem(problems, "", "more problem(s) suppressed")


# --------------------------------------------------------------------------------------------------------------------
# Guessing kinds


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("taxa.csv", FileKind.EXPORT_TAXA),
        ("taxa.csv.gz", FileKind.EXPORT_TAXA),
        ("taxa.parquet", FileKind.EXPORT_TAXA),
        ("observations.csv.gz", FileKind.EXPORT_OBSERVATIONS),
        ("photos.csv", FileKind.EXPORT_PHOTOS),
        ("inat_observers.tsv", FileKind.EXPORT_OBSERVERS),
    ],
)
def test_guess_kind_from_name(tmp_path: Path, name: str, kind: FileKind) -> None:
    assert guess_kind(tmp_path / name) is kind  # the name alone decides: the file need not exist


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("a.json", make_dataset(2017), FileKind.DATASET_INAT2017),
        ("a.json", make_dataset(2018), FileKind.DATASET_INAT2018),
        ("a.json", make_dataset(2019), FileKind.DATASET_INAT2019),
        ("a.json", make_dataset(2021), FileKind.DATASET_INAT2021),
        ("test.json", make_dataset(2018, True), FileKind.DATASET_INAT2018_TEST),
        ("public_test.json", make_dataset(2021, True), FileKind.DATASET_INAT2021_TEST),
        ("train2017_locations.json", LOCATIONS, FileKind.LOCATIONS),
        ("a.json", LOCATIONS, FileKind.LOCATIONS),
        ("a.csv", SUBMISSIONS[2017], FileKind.SUBMISSION_INAT2017),
        ("a.csv", SUBMISSIONS[2018], FileKind.SUBMISSION_INAT2018),
        ("a.csv", SUBMISSIONS[2019], FileKind.SUBMISSION_INAT2019),
        ("a.csv", SUBMISSIONS[2021], FileKind.SUBMISSION_INAT2021),
        ("kaggle_2018.csv", "id,predicted\n", FileKind.SUBMISSION_INAT2018),
        ("a.csv", SOLUTION, FileKind.SOLUTION),
        ("export.tsv", PHOTOS_TSV, FileKind.EXPORT_PHOTOS),
        ("export.tsv", OBSERVATIONS_OLD_TSV, FileKind.EXPORT_OBSERVATIONS),
    ],
)
def test_guess_kind_from_content(tmp_path: Path, name: str, content: object, kind: FileKind) -> None:
    path = write(tmp_path, name, content if isinstance(content, str) else json.dumps(content))
    assert guess_kind(path) is kind


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("a.json", '{"foo": 1}'),
        ("a.json", "[1, 2]"),
        ("a.json", '{"images": [], "categories": []}'),
        ("a.json", "{broken"),
        ("a.csv", "id,predicted\n"),
        ("a.csv", "x\ty\n"),
        ("a.csv", ""),
    ],
)
def test_guess_kind_fails(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(ValueError, match=r"a\.(json|csv)"):
        guess_kind(path)
    assert validate_file(path)  # never raises, reports


# --------------------------------------------------------------------------------------------------------------------
# read_table


@pytest.mark.parametrize("name", ["taxa.csv", "taxa.csv.gz"])
def test_read_table_text(tmp_path: Path, name: str) -> None:
    frame = read_table(write(tmp_path, name, TAXA_TSV))
    assert list(frame.columns) == ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"]
    assert len(frame) == 5
    assert frame.loc[0, "ancestry"] == ""
    assert frame.loc[3, "name"] == 'Bombus "impatiens"'
    assert frame.loc[3, "ancestry"] == "48460\\47126\\211194"
    assert frame.loc[1, "rank_level"] == "70.0"


def test_read_table_parquet(tmp_path: Path) -> None:
    path = tmp_path / "observers.parquet"
    pd.DataFrame({"observer_id": [1, 2], "login": ["a", "b"], "name": ["", "B"]}).to_parquet(path)
    assert read_table(path)["observer_id"].tolist() == [1, 2]


def test_read_table_header_only(tmp_path: Path) -> None:
    frame = read_table(write(tmp_path, "observers.csv", "observer_id\tlogin\tname\n"))
    assert list(frame.columns) == ["observer_id", "login", "name"] and len(frame) == 0


def test_read_table_malformed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"observers\.csv: line 4"):
        read_table(write(tmp_path, "observers.csv", OBSERVERS_TSV + "3\n"))
    with pytest.raises(ValueError, match=r"observers\.csv: line 2.*byte offset"):
        read_table(write(tmp_path, "observers.csv", b"observer_id\tlogin\tname\n1\t\xff\t\n"))


# --------------------------------------------------------------------------------------------------------------------
# Speed


def test_large_observations_table_is_fast(tmp_path: Path) -> None:
    n = 200_000
    rng = np.random.default_rng(0)
    uuids = np.char.add(np.char.mod("%08x", rng.integers(0, 2**32, n)), "-1f3d-4a8b-9c2d-")
    uuids = np.char.add(uuids, np.char.mod("%012x", np.arange(n)))
    frame = pd.DataFrame(
        {
            "observation_uuid": uuids,
            "observer_id": rng.integers(1, 10**6, n),
            "latitude": np.round(rng.uniform(-90, 90, n), 5),
            "longitude": np.round(rng.uniform(-180, 180, n), 5),
            "positional_accuracy": rng.integers(1, 5000, n),
            "taxon_id": rng.integers(1, 10**6, n),
            "quality_grade": rng.choice(["research", "needs_id", "casual"], n),
            "observed_on": (np.datetime64("2000-01-01") + rng.integers(0, 9000, n).astype("timedelta64[D]")).astype(
                str
            ),
            "anomaly_score": rng.random(n).round(4),
        }
    )
    frame = frame.astype(str)
    frame.loc[::5, ["latitude", "longitude", "positional_accuracy"]] = ""
    frame.loc[1234, "latitude"] = "-95"
    frame.loc[150_000, "quality_grade"] = "bogus"
    path = tmp_path / "observations.csv"
    frame.to_csv(path, sep="\t", index=False)
    start = time.perf_counter()
    problems = validate_file(path)
    elapsed = time.perf_counter() - start
    assert [p.where for p in problems] == ["line 1236, column latitude", "line 150002, column quality_grade"]
    assert elapsed < 10, f"validation took {elapsed:.1f} s"


@pytest.mark.parametrize("year", YEARS)
def test_fast_json_path_matches_jsonschema(tmp_path: Path, year: int) -> None:
    data = make_dataset(year)
    data["images"][0]["width"] = 800.0  # an integral float is a JSON Schema integer
    data["images"][1]["height"] = True  # a bool is not
    data["images"][2]["file_name"] = ""
    data["categories"][0]["name"] = 5
    data["annotations"][0]["category_id"] = -1
    data["licenses"].append("not an object")
    kind = FileKind(f"dataset_inat{year}")
    validator = jsonschema.Draft202012Validator(load_schema(kind))
    expected = sorted(
        "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        for e in validator.iter_errors(data)
    )
    problems = validate_file(write(tmp_path, "train.json", json.dumps(data)), kind)
    cross = ("duplicate", "not the id", "no annotation")
    got = sorted(p.where for p in problems if not any(c in p.message for c in cross))
    assert got == expected
    assert "$.images[0].width" not in got and "$.images[1].height" in got


def test_write_atomic_replaces_whole_files_with_ordinary_permissions(tmp_path):
    import os
    import stat

    from inatcomp.fileio import write_atomic

    target = tmp_path / "out.json"
    write_atomic(target, "first")
    write_atomic(target, iter([b"sec", b"ond"]))
    assert target.read_text() == "second"
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600

    def broken():
        yield b"partial"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, broken())
    assert target.read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary file left


@pytest.mark.parametrize("fmt", list(SubmissionFormat))
def test_submission_schemas_follow_the_competition_table(fmt: SubmissionFormat) -> None:
    """Each year's schema file says what the one table of the years' facts says (header, labels per row)."""
    schema = load_schema(FileKind(f"submission_{fmt.value}"))
    competition = COMPETITIONS[fmt]
    assert tuple(field["name"] for field in schema["fields"]) == competition.columns
    assert schema["labels"] == competition.labels
    assert f"exactly {competition.labels} category id" in schema["description"]
    assert f"'{','.join(competition.columns)}'" in schema["description"]
