"""Tests of submissions: writing from prediction files, the round trip through validate and score, every problem."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from inatcomp.cli import main
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.formats.predictions import PredictionWriter
from inatcomp.predict.submission import validate_submission, write_submission
from inatcomp.score.scoring import score_file

CATEGORIES = [3, 8, 15, 21, 40, 41, 57]
IMAGE_IDS = [500, 501, 502, 503, 504, 505, 506, 507]


@pytest.fixture
def files(tmp_path):
    """A test JSON, its solution, and predictions right for the first six images (second choice for the rest)."""
    images = [{"id": i, "width": 1, "height": 1, "file_name": f"test/{i}.jpg"} for i in IMAGE_IDS]
    test = tmp_path / "test.json"
    test.write_text(json.dumps({"images": images, "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORIES]}))
    rng = np.random.default_rng(0)
    expected = rng.choice(CATEGORIES, size=len(IMAGE_IDS))
    solution = tmp_path / "solution.csv"
    with solution.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "expected", "usage"])
        writer.writerows([i, e, "Public" if n % 2 else "Private"] for n, (i, e) in enumerate(zip(IMAGE_IDS, expected)))
    scores = rng.dirichlet(np.ones(len(CATEGORIES)), size=len(IMAGE_IDS)) * 0.1
    column = np.searchsorted(CATEGORIES, expected)
    scores[np.arange(len(IMAGE_IDS)), column] += 0.6
    scores[6:, (column[6:] + 1) % len(CATEGORIES)] += 0.8  # a more confident wrong label first
    scores /= scores.sum(axis=1, keepdims=True)
    with PredictionWriter(tmp_path / "p.pred", image_ids=IMAGE_IDS, category_ids=CATEGORIES) as out:
        out.write(scores[:5])
        out.write(scores[5:])
    return {"test": test, "solution": solution, "pred": tmp_path / "p.pred", "scores": scores, "dir": tmp_path}


@pytest.mark.parametrize("format", list(SubmissionFormat))
def test_submission_round_trips_through_validate_and_score(files, format):
    out = write_submission(files["pred"], format=format, out=files["dir"] / "sub" / f"{format.value}.csv", chunk_rows=3)
    lines = out.read_text().splitlines()
    assert lines[0] == format.header and len(lines) == 1 + len(IMAGE_IDS)
    first = lines[1].split(",")
    ranked = np.asarray(CATEGORIES)[np.argsort(-files["scores"][0])][: format.labels]
    assert first[0] == str(IMAGE_IDS[0]) and first[1] == " ".join(map(str, ranked))
    assert validate_submission(out, files["test"], format=format) == []
    assert validate_submission(out, files["test"]) == []  # the year guessed
    result = score_file(out, files["solution"], k=1)
    assert result.error("all", 1) == pytest.approx(2 / 8)


def test_submit_and_validate_through_the_cli(files, capsys):
    out = files["dir"] / "submissions" / "mine.csv"
    assert main(["submit", str(files["pred"]), "--format", "inat2018", "--out", str(out)]) == 0
    assert main(["validate", str(out), "--against", str(files["test"])]) == 0
    assert main(["score", str(out), "--solution", str(files["solution"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["official"]["all"] == pytest.approx(0.0)  # top-3: all found


def test_too_few_categories_for_the_format_are_refused(tmp_path):
    with PredictionWriter(tmp_path / "few.pred", image_ids=[1], category_ids=[1, 2]) as out:
        out.write(np.array([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="needs 3 labels"):
        write_submission(tmp_path / "few.pred", format="inat2018", out=tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


GOOD = ["500,3 8 15", "501,8 3 15", "502,15 3 8", "503,21 3 8", "504,40 3 8", "505,41 3 8", "506,57 3 8", "507,3 8 21"]


def _with(row: int, text: str | None) -> list[str]:
    """The good 2018 rows with data row ``row`` (0-based) replaced by ``text`` (or dropped when None)."""
    rows = list(GOOD)
    if text is None:
        del rows[row]
    else:
        rows[row] = text
    return rows


@pytest.mark.parametrize(
    ("header", "rows", "where", "message"),
    [
        ("id,label", GOOD, "line 1", "header"),
        ("Id,Predicted", GOOD, "line 1", "expected 'id,predicted'"),
        ("id,predicted", _with(3, "501,21 3 8"), "line 5", "duplicate id 501 (first on line 3)"),
        ("id,predicted", [*GOOD, "999,3 8 15"], "line 10", "id 999 is not an image of"),
        ("id,predicted", _with(7, None), "", "1 image id(s) of"),
        ("id,predicted", _with(2, "502,15 3"), "line 4", "expected at least 3"),
        ("id,predicted", _with(2, "502,15 3 8 21"), "line 4", "expected exactly 3"),
        ("id,predicted", _with(4, "504,40 x 8"), "line 6", "label 'x' is not an integer"),
        ("id,predicted", _with(4, "504,40 -3 8"), "line 6", "negative label -3"),
        ("id,predicted", _with(5, "505,41 99 8"), "line 7", "label 99 is not a category id of"),
        ("id,predicted", _with(6, "506,57 3 57"), "line 8", "label 57 repeated"),
        ("id,predicted", _with(0, "abc,3 8 15"), "line 2", "id 'abc' is not an integer"),
        ("id,predicted", _with(1, "501;8 3 15"), "line 3", "expected 2 separated by commas"),
    ],
)
def test_every_malformed_submission_gets_its_message_and_line(files, header, rows, where, message, capsys):
    path = files["dir"] / "bad.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    problems = validate_submission(path, files["test"], format="inat2018")
    assert any(p.where == where and message in p.message for p in problems), problems
    assert main(["validate", str(path), "--against", str(files["test"]), "--kind", "submission_inat2018"]) == 1
    printed = capsys.readouterr().out
    assert f"{path}: {where + ': ' if where else ''}" in printed and message in printed


def test_unreadable_submissions_are_problems_not_tracebacks(files):
    empty = files["dir"] / "empty.csv"
    empty.write_text("")
    assert "empty" in validate_submission(empty, files["test"])[0].message
    binary = files["dir"] / "binary.csv"
    binary.write_bytes(b"id,predicted\n\x00\x01")
    assert "binary" in validate_submission(binary, files["test"])[0].message
    assert validate_submission(files["dir"] / "none.csv", files["test"])[0].message == "no such file"
