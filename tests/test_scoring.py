"""Tests for the scorer (inatcomp.score): the metric against scikit-learn, hand-made cases, hostile files, the CLI."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

from inatcomp.cli import main
from inatcomp.formats.competitions import SubmissionFormat
from inatcomp.score.analysis import analyse, load_dataset_info
from inatcomp.score.csvgrid import MAX_REPORTED
from inatcomp.score.metric import rank_labels, score_arrays, top_k_error, top_k_hits
from inatcomp.score.readers import read_solution, read_submission
from inatcomp.score.scoring import score_file

SOLUTION = "id,expected,usage\n1,10,Public\n2,20,Public\n3,30,Private\n4,40,Private\n"


def write(path: Path, content: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path``."""
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


@pytest.fixture
def solution(tmp_path: Path) -> Path:
    return write(tmp_path / "solution.csv", SOLUTION)


# --------------------------------------------------------------------------------------------------------------------
# The metric on arrays


@pytest.mark.parametrize("k", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_error_equals_sklearn(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, classes = 300, 10
    scores = rng.random((n, classes))
    expected = rng.integers(0, classes, n)
    reference = 1.0 - top_k_accuracy_score(expected, scores, k=k, labels=np.arange(classes))
    assert top_k_error(rank_labels(scores), expected, k) == pytest.approx(reference, abs=1e-12)
    assert top_k_error(rank_labels(scores, k=k), expected, k) == pytest.approx(reference, abs=1e-12)


def test_rank_labels_partial_and_label_names() -> None:
    scores = np.array([[0.1, 0.5, 0.2, 0.9], [0.8, 0.1, 0.3, 0.2]])
    np.testing.assert_array_equal(rank_labels(scores, k=2), [[3, 1], [0, 2]])
    np.testing.assert_array_equal(rank_labels(scores, k=2, labels=[10, 11, 12, 13]), [[13, 11], [10, 12]])
    assert rank_labels(scores, k=10).shape == (2, 4)


def test_repeated_labels_count_once() -> None:
    ranked = np.array([[1, 1, 2], [5, 5, 5], [7, 8, 7]])
    expected = np.array([2, 5, 9])
    np.testing.assert_array_equal(top_k_hits(ranked, expected, 2), [False, True, False])
    np.testing.assert_array_equal(top_k_hits(ranked, expected, 3), [True, True, False])
    assert top_k_error(ranked, expected, 3) == pytest.approx(1 / 3)
    assert top_k_error(ranked, expected, 1) == pytest.approx(2 / 3)


def test_k_larger_than_labels_and_classes() -> None:
    ranked = np.array([[1, 2], [2, 1], [0, 1]])
    expected = np.array([2, 0, 0])
    assert top_k_error(ranked, expected, 5) == pytest.approx(1 / 3)  # all 2 labels used
    scores = np.random.default_rng(0).random((20, 3))
    y = np.arange(20) % 3
    with pytest.warns(UserWarning):  # scikit-learn warns that k >= n_classes makes the score perfect
        reference = 1.0 - top_k_accuracy_score(y, scores, k=5, labels=[0, 1, 2])
    assert top_k_error(rank_labels(scores), y, 5) == reference == 0.0


def test_labels_absent_from_solution_are_misses() -> None:
    ranked = np.array([[99, 1], [98, 97], [2, 99]])
    expected = np.array([1, 2, 2])
    assert top_k_error(ranked, expected, 1) == pytest.approx(2 / 3)
    assert top_k_error(ranked, expected, 2) == pytest.approx(1 / 3)


def test_metric_argument_errors() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        top_k_error(np.zeros((2, 3), dtype=int), np.zeros(2, dtype=int), 0)
    with pytest.raises(ValueError, match="must be"):
        top_k_error(np.zeros((2, 3), dtype=int), np.zeros(3, dtype=int), 1)
    with pytest.raises(ValueError, match="no images"):
        top_k_error(np.zeros((0, 3), dtype=int), np.zeros(0, dtype=int), 1)


def test_score_arrays_per_usage() -> None:
    ranked = np.array([[10, 1], [1, 20], [1, 2], [40, 3]])
    result = score_arrays(ranked, np.array([10, 20, 30, 40]), np.array([True, True, False, False]), k=2)
    assert result.errors["top1"] == {"public": 0.5, "private": 0.5, "all": 0.5}
    assert result.errors["top2"] == {"public": 0.0, "private": 0.5, "all": 0.25}
    assert result.images == {"public": 2, "private": 2, "all": 4}
    only_private = score_arrays(ranked, np.array([10, 20, 30, 40]), k=1)
    assert only_private.error("public") is None and only_private.error("private") == 0.5


# --------------------------------------------------------------------------------------------------------------------
# Analyses


def categories() -> list[dict]:
    """Five classes: two Aves in one genus, one Aves of another genus in the same family, two Plantae."""

    def cat(cid: int, name: str, supercategory: str, family: str) -> dict:
        return {"id": cid, "name": name, "supercategory": supercategory, "kingdom": "k", "phylum": "p",
                "class": "c", "order": "o", "family": family, "genus": name.split()[0]}  # fmt: skip

    return [
        cat(0, "Parus major", "Aves", "Paridae"),
        cat(1, "Parus minor", "Aves", "Paridae"),
        cat(2, "Poecile atricapillus", "Aves", "Paridae"),
        cat(3, "Quercus robur", "Plantae", "Fagaceae"),
        cat(4, "Acer rubrum", "Plantae", "Sapindaceae"),
    ]


def test_analyse_hand_made() -> None:
    expected = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 4])
    top1 = np.array([0, 0, 1, 1, 1, 0, 0, 3, 4, 99])
    train = {0: 500, 1: 8, 2: 3, 3: 40, 4: 1500}
    result = analyse(top1, expected, categories(), train)
    # per-class accuracy: 0 -> 0.5, 1 -> 0.5, 2 -> 0, 3 -> 0.5, 4 -> 0
    assert result["classes"] == 5
    assert result["mean_class_accuracy"] == pytest.approx(0.3)
    assert result["top1_accuracy"] == pytest.approx(0.4)
    supers = {row["supercategory"]: row for row in result["supercategories"]}
    assert supers["Aves"] == {"supercategory": "Aves", "classes": 3, "train_images": 511, "images": 7,
                              "accuracy": pytest.approx(1 / 3)}  # fmt: skip
    assert supers["Plantae"] == {"supercategory": "Plantae", "classes": 2, "train_images": 1540, "images": 3,
                                 "accuracy": pytest.approx(0.25)}  # fmt: skip
    assert [row["supercategory"] for row in result["supercategories"]] == ["Aves", "Plantae"]
    bins = {row["bin"]: (row["classes"], row["images"], row["accuracy"]) for row in result["train_count_bins"]}
    assert bins == {"2–5": (1, 1, 0.0), "6–10": (1, 2, 0.5), "21–50": (1, 2, 0.5), "101–1000": (1, 4, 0.5),
                    "1001+": (1, 1, 0.0)}  # fmt: skip
    assert result["confusions"][0] == {
        "expected_id": 0, "expected": "Parus major", "predicted_id": 1, "predicted": "Parus minor", "count": 2,
    }  # fmt: skip
    assert sum(c["count"] for c in result["confusions"]) == 6
    assert result["confusions"][-1]["predicted"] == "(unknown category 99)"
    mistakes = result["mistakes"]
    # mistakes: 0->1 x2 (genus), 1->0 (genus), 2->0 (family), 3->4 (neither), 4->99 (unknown)
    assert mistakes["count"] == 6 and mistakes["unknown_predicted"] == 1
    assert mistakes["same_genus"] == 3 and mistakes["same_genus_share"] == pytest.approx(0.5)
    assert mistakes["same_family"] == 4 and mistakes["same_family_share"] == pytest.approx(4 / 6)


def test_analyse_classes_absent_and_2017_records() -> None:
    cats = [{"id": 0, "name": "Parus major", "supercategory": "Aves"},
            {"id": 1, "name": "Parus minor", "supercategory": "Aves"},
            {"id": 2, "name": "Quercus robur", "supercategory": "Plantae"}]  # fmt: skip
    result = analyse(np.array([1, 0]), np.array([0, 0]), cats, {})
    assert result["classes"] == 1  # classes 1 and 2 have no images: left out of the means
    assert result["supercategories"] == [
        {"supercategory": "Aves", "classes": 1, "train_images": 0, "images": 2, "accuracy": 0.5}
    ]
    assert result["train_count_bins"][0]["bin"] == "0–1"
    assert result["mistakes"]["same_genus"] == 1  # genus from the name's first word
    assert result["mistakes"]["same_family"] is None  # 2017 records have no family


def test_load_dataset_info(tmp_path: Path) -> None:
    write(tmp_path / "categories.json", json.dumps(categories()))
    annotations = [{"id": i, "image_id": i, "category_id": c} for i, c in enumerate([0, 0, 1, 3, 3, 3])]
    write(tmp_path / "train2018.json", json.dumps({"images": [], "annotations": annotations}))
    info = load_dataset_info(tmp_path)
    assert info.train_counts == {0: 2, 1: 1, 3: 3}
    assert len(info.categories) == 5
    with pytest.raises(ValueError, match="not a dataset folder"):
        load_dataset_info(tmp_path / "categories.json")
    (tmp_path / "train2018.json").unlink()
    with pytest.raises(ValueError, match="no train JSON"):
        load_dataset_info(tmp_path)


# --------------------------------------------------------------------------------------------------------------------
# Reading submissions


@pytest.mark.parametrize(
    ("content", "fmt", "k", "official_k"),
    [
        ("id,predicted\n1,10 2 3 4 5\n", SubmissionFormat.INAT2017, 5, 5),
        ("id,predicted\n1,10 2 3\n", SubmissionFormat.INAT2018, 3, 3),
        ("id,predicted\n1,10\n", SubmissionFormat.INAT2019, 1, 1),
        ("Id,Predicted\n1,10 2 3 4 5\n", SubmissionFormat.INAT2021, 5, 1),
    ],
)
def test_format_guessed(tmp_path: Path, content: str, fmt: SubmissionFormat, k: int, official_k: int) -> None:
    sub = read_submission(write(tmp_path / "s.csv", content))
    assert (sub.format, sub.k, sub.official_k) == (fmt, k, official_k)
    np.testing.assert_array_equal(sub.labels[0, :1], [10])


def test_format_forced_and_k(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", "id,predicted\n1,10 2 3 4 5\n2,7 8 9 1 2\n")
    sub = read_submission(path, format=SubmissionFormat.INAT2018)
    assert sub.format is SubmissionFormat.INAT2018 and sub.k == 3
    assert read_submission(path, k=2).k == 2
    odd = write(tmp_path / "odd.csv", "id,predicted\n1,10 2\n")
    with pytest.raises(ValueError, match="cannot tell the competition year from 2 label"):
        read_submission(odd)
    assert read_submission(odd, k=2).format is None


def test_tolerated_bom_crlf_quotes_blank_lines(tmp_path: Path) -> None:
    content = b'\xef\xbb\xbfid,predicted\r\n1,10 2 3\r\n\r\n"2","20 3 4"\r\n3,5  30 6 \r\n'
    sub = read_submission(write(tmp_path / "s.csv", content))
    np.testing.assert_array_equal(sub.ids, [1, 2, 3])
    np.testing.assert_array_equal(sub.labels, [[10, 2, 3], [20, 3, 4], [5, 30, 6]])
    np.testing.assert_array_equal(sub.lines, [2, 4, 5])


HOSTILE = [
    ("duplicate id", "id,predicted\n1,1 2 3\n2,1 2 3\n1,4 5 6\n", 4, "duplicate id 1 (first on line 2)"),
    ("too few labels", "id,predicted\n1,1 2 3\n2,1 2\n", 3, "2 label(s); expected at least 3"),
    ("no labels", "id,predicted\n1,1 2 3\n2,\n", 3, "0 label(s); expected at least 3"),
    ("non-integer label", "id,predicted\n1,1 x 3\n", 2, "label 'x' is not an integer"),
    ("float label", "id,predicted\n1,1 2.5 3\n", 2, "label '2.5' is not an integer"),
    ("non-integer id", "id,predicted\nabc,1 2 3\n", 2, "id 'abc' is not an integer"),
    ("huge label", "id,predicted\n1,1 99999999999999999999 3\n", 2, "label '99999999999999999999' is too large"),
    ("huge id", "id,predicted\n99999999999999999999,1 2 3\n", 2, "id '99999999999999999999' is too large"),
    ("negative label", "id,predicted\n1,1 -2 3\n", 2, "negative label -2"),
    ("negative id", "id,predicted\n1,1 2 3\n-7,1 2 3\n", 3, "negative id -7"),
    ("repeated label", "id,predicted\n1,4 4 5\n", 2, "label 4 repeated"),
    ("too many fields", "id,predicted\n1,1 2 3\n2,1 2 3,9\n", 3, "3 field(s)"),
    ("one field", "id,predicted\n1 2 3 4\n", 2, "1 field(s)"),
    ("wrong header", "image,labels\n1,1 2 3\n", 1, "header 'image,labels'; expected 'id,predicted'"),
    ("wrong separator", "id;predicted\n1;1 2 3\n", 1, "header"),
    ("latin-1", "id,predicted\n1,1 2 3\n2,1 2 é\n".encode("latin-1"), 3, "invalid UTF-8"),
    ("binary junk", b"id,predicted\n1,1 2 3\n\x00\x01\x02\xff", 3, "binary data"),
    ("lone CR", b"id,predicted\r1,1 2 3\r", 1, "carriage return without line feed"),
    ("unicode digits", "id,predicted\n1,1 2 ٣\n", 2, "is not an integer"),
    ("unknown id", "id,predicted\n1,10 2 3\n2,20 2 3\n77,30 1 2\n4,40 1 2\n", 4, "unknown id 77"),
    ("too many rows", "id,predicted\n" + "".join(f"{i},1 2 3\n" for i in range(1, 7)), 6, "more rows (6) than"),
    ("long line", "id,predicted\n1,1 2 3\n2," + "1 " * 600 + "\n", 3, "1,202 bytes long; at most 1024"),
]


@pytest.mark.parametrize(("case", "content", "line", "message"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_submission(tmp_path: Path, solution: Path, case: str, content: str | bytes, line: int, message: str):
    path = write(tmp_path / "hostile.csv", content)
    with pytest.raises(ValueError) as info:
        score_file(path, solution)
    text = str(info.value)
    assert str(path) in text
    assert f"line {line}: " in text
    assert message in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"\n\n  \n", "file is empty"),
        ("id,predicted\n".encode("utf-16"), "UTF-16"),
        (gzip.compress(b"id,predicted\n1,1 2 3\n", mtime=0), "compressed data"),
        (b"id,predicted\n", "no rows after the header"),
        (b"id,predicted\n1,10 2 3\n", "3 id(s) of the solution missing from the submission (e.g. 2, 3, 4)"),
    ],
)
def test_hostile_whole_file(tmp_path: Path, solution: Path, content: bytes, message: str) -> None:
    path = write(tmp_path / "hostile.csv", content)
    with pytest.raises(ValueError, match="hostile.csv") as info:
        score_file(path, solution)
    assert message in str(info.value)


def test_size_limit_and_folder(tmp_path: Path, solution: Path) -> None:
    path = write(tmp_path / "big.csv", "id,predicted\n" + "".join(f"{i},1 2 3\n" for i in range(100)))
    with pytest.raises(ValueError, match=r"903 bytes, over 100 bytes: the size limit \(--max-size-mb"):
        read_submission(path, max_bytes=100)
    with pytest.raises(ValueError, match="is a folder"):
        read_submission(tmp_path)
    with pytest.raises(ValueError, match="cannot read"):
        read_submission(tmp_path / "missing.csv")


def test_many_problems_are_counted(tmp_path: Path) -> None:
    rows = "".join(f"{i},1 x 3\n" for i in range(100))
    with pytest.raises(ValueError) as info:
        read_submission(write(tmp_path / "s.csv", "id,predicted\n" + rows))
    lines = str(info.value).splitlines()
    assert len(lines) == MAX_REPORTED + 1
    assert lines[0].endswith("line 2: label 'x' is not an integer")
    assert lines[-1].endswith(f"... and {100 - MAX_REPORTED} more problem(s)")


def test_every_problem_of_a_file_is_listed(tmp_path: Path) -> None:
    content = "id,predicted\n1,1 2 3\n1,1 2\nx,1 2 3\n4,5 5 6\n"
    with pytest.raises(ValueError) as info:
        read_submission(write(tmp_path / "s.csv", content))
    text = str(info.value)
    for line in (3, 4, 5):
        assert f"line {line}: " in text


@pytest.mark.parametrize(
    ("content", "line", "message"),
    [
        ("id,expected,usage\n1,10,Public\n2,20,Hidden\n", 3, "usage 'Hidden'; expected Public or Private"),
        ("id,expected,usage\n1,10,Public\n1,20,Private\n", 3, "duplicate id 1"),
        ("id,expected,usage\n1,x,Public\n", 2, "expected label 'x' is not an integer"),
        ("id,expected\n1,10\n", 1, "expected the columns id, expected, usage"),
    ],
)
def test_bad_solution(tmp_path: Path, content: str, line: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        read_solution(write(tmp_path / "sol.csv", content))
    assert f"line {line}: " in str(info.value) and message in str(info.value)


def test_solution_any_column_order_and_case(tmp_path: Path) -> None:
    sol = read_solution(write(tmp_path / "sol.csv", "Usage,Id,Expected\nPRIVATE,5,1\npublic,6,2\n"))
    np.testing.assert_array_equal(sol.ids, [5, 6])
    np.testing.assert_array_equal(sol.expected, [1, 2])
    np.testing.assert_array_equal(sol.public, [False, True])


# --------------------------------------------------------------------------------------------------------------------
# Scoring files


def test_score_file_hand_computed(tmp_path: Path, solution: Path) -> None:
    # Public: id 1 top-1 hit, id 2 hit at rank 3. Private: id 3 miss, id 4 hit at rank 2. Rows out of order.
    sub = write(tmp_path / "s.csv", "id,predicted\n4,1 40 2\n3,1 2 3\n2,1 2 20\n1,10 2 3\n")
    result = score_file(sub, solution)
    assert result.format is SubmissionFormat.INAT2018 and result.official_metric == "top-3 error"
    assert result.errors["top1"] == {"public": 0.5, "private": 1.0, "all": 0.75}
    assert result.errors["top3"] == {"public": 0.0, "private": 0.5, "all": 0.25}
    assert result.error("private") == 0.5
    assert score_file(sub, solution, k=2).errors["top2"] == {"public": 0.5, "private": 0.5, "all": 0.5}
    data = result.to_dict()
    assert json.loads(json.dumps(data))["official"] == {"public": 0.0, "private": 0.5, "all": 0.25}


def test_score_2021_reports_top1_and_top5(tmp_path: Path, solution: Path) -> None:
    sub = write(tmp_path / "s.csv", "Id,Predicted\n1,10 1 2 3 4\n2,1 2 3 4 20\n3,1 2 3 4 5\n4,40 1 2 3 4\n")
    result = score_file(sub, solution)
    assert result.official_metric == "top-1 error" and result.k == 5
    assert result.error("all") == 0.5 and result.error("all", 5) == 0.25


# --------------------------------------------------------------------------------------------------------------------
# The CLI


def make_dataset(folder: Path) -> Path:
    """A dataset folder whose categories have the ids 10, 20, 30, 40 of the solution."""
    folder.mkdir()
    cats = [dict(c, id=10 * (c["id"] + 1)) for c in categories()[:4]]
    write(folder / "categories.json", json.dumps(cats))
    annotations = [{"id": i, "image_id": i, "category_id": c} for i, c in enumerate([10, 10, 20, 30, 30, 30, 40])]
    write(folder / "train2018.json", json.dumps({"annotations": annotations}))
    return folder


def test_cli_score(tmp_path: Path, solution: Path, capsys: pytest.CaptureFixture) -> None:
    sub = write(tmp_path / "s.csv", "id,predicted\n4,1 40 2\n3,20 2 3\n2,1 2 20\n1,10 2 3\n")
    assert main(["score", str(sub), "--solution", str(solution)]) == 0
    out = capsys.readouterr().out
    assert "| Private | 2 | 1.00000 | 0.50000 |" in out

    dataset = make_dataset(tmp_path / "dataset")
    report = tmp_path / "report"
    args = ["score", str(sub), "--solution", str(solution), "--dataset", str(dataset), "--json", "--report"]
    assert main([*args, str(report)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["official"]["all"] == 0.25
    assert data["analysis"]["confusions"][0]["expected"] == "Parus minor"
    names = sorted(p.name for p in report.iterdir())
    assert names == ["accuracy_by_supercategory.png", "accuracy_by_train_count.png", "score.json", "score.md"]
    assert json.loads((report / "score.json").read_text()) == data
    assert "## Per supercategory" in (report / "score.md").read_text()


def test_cli_score_errors(tmp_path: Path, solution: Path, caplog: pytest.LogCaptureFixture) -> None:
    sub = write(tmp_path / "s.csv", "id,predicted\n1,10 2\n")
    with caplog.at_level(logging.ERROR):
        assert main(["score", str(sub), "--solution", str(solution), "--format", "inat2018"]) == 2
    assert "line 2: 2 label(s); expected at least 3" in caplog.text
    assert "Traceback" not in caplog.text
    assert main(["score", str(tmp_path / "nope.csv"), "--solution", str(solution)]) == 2
    assert main(["score", str(sub), "--solution", str(solution), "--max-size-mb", "0.000001"]) == 2


def test_max_size_mb_sets_the_limit_and_the_row_bound_says_so(tmp_path: Path) -> None:
    """Left at its default, the limit for a submission is the row bound, and its message says how to lift it;
    given, ``--max-size-mb`` is the limit (it could not raise it before)."""
    rows = 4
    solution = write(tmp_path / "solution.csv", "id,expected,usage\n" + "".join(f"{i},1,Public\n" for i in range(rows)))
    padding = "\n" * 800  # blank lines are legal (skipped) but put the file far over 256 bytes per solution row
    sub = write(tmp_path / "s.csv", "id,predicted\n" + "".join(f"{i},1 2 3\n{padding}" for i in range(rows)))
    assert sub.stat().st_size > 1024 + rows * 256
    with pytest.raises(ValueError, match=r"the bound for a solution of 4 rows .*--max-size-mb sets the limit instead"):
        score_file(sub, solution)
    assert score_file(sub, solution, max_bytes=10_000).error("all") == 0.0  # every row has label 1 first
    assert main(["score", str(sub), "--solution", str(solution)]) == 2
    assert main(["score", str(sub), "--solution", str(solution), "--max-size-mb", "0.01"]) == 0
    assert main(["score", str(sub), "--solution", str(solution), "--max-size-mb", "0.001"]) == 2


def test_quoted_standard_headers_are_read_alike_by_score_and_validate(tmp_path: Path) -> None:
    """Kaggle accepts quoted CSV fields; the scorer and ``validate --against`` give one answer."""
    from inatcomp.predict.submission import validate_submission

    images = [{"id": i, "width": 1, "height": 1, "file_name": f"{i}.jpg"} for i in range(3)]
    categories = [{"id": c, "name": f"c{c}"} for c in range(4)]
    test = tmp_path / "test2018.json"
    test.write_text(json.dumps({"images": images, "categories": categories}))
    solution = write(tmp_path / "solution.csv", "id,expected,usage\n0,1,Public\n1,2,Private\n2,3,Public\n")
    quoted = write(tmp_path / "quoted.csv", '"id","predicted"\n"0","1 2 3"\n1,"2 3 0"\n2,3 0 1\n')
    assert score_file(quoted, solution).error("all") == 0.0
    assert validate_submission(quoted, test) == []
    wrong = write(tmp_path / "wrong.csv", '"Id","Predicted"\n0,1 2 3\n1,2 3 0\n2,3 0 1\n')
    problems = validate_submission(wrong, test, format="inat2018")
    assert [(p.where, p.message) for p in problems] == [
        ("line 1", "header 'Id,Predicted'; expected 'id,predicted' (inat2018)")
    ]


def test_blank_lines_after_the_last_row_are_skipped(tmp_path: Path) -> None:
    """A few trailing blank lines once indexed past the line table (an IndexError traceback)."""
    solution = write(tmp_path / "solution.csv", "id,expected,usage\n0,1,Public\n1,2,Private\n")
    sub = write(tmp_path / "s.csv", "id,predicted\n0,1 2 3\n\n1,3 4 5\n\n\n\n\n")
    result = score_file(sub, solution)
    assert result.error("public") == 0.0 and result.error("private") == 1.0
