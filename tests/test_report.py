"""Tests for inatcomp.score's reports: safe cells, atomic report files, leaderboard ranks and the leaderboard CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from inatcomp.cli import main
from inatcomp.score.analysis import analyse
from inatcomp.score.leaderboard import (
    build_leaderboard,
    competition_ranks,
    leaderboard_csv,
    leaderboard_markdown,
    team_name,
    write_leaderboard,
)
from inatcomp.score.metric import score_arrays
from inatcomp.score.report import score_markdown, write_score_report
from inatcomp.score.tables import csv_text, markdown_table, sanitize_cell

SOLUTION = "id,expected,usage\n1,10,Public\n2,20,Public\n3,30,Private\n4,40,Private\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=HYPERLINK(1)", "'=HYPERLINK(1)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("team", "team"),
        ("a=b", "a=b"),
    ],
)
def test_sanitize_cell(value: str, safe: str) -> None:
    assert sanitize_cell(value) == safe


def test_tables_are_safe() -> None:
    table = markdown_table(["name", "n"], [["=cmd|x", 3], ["a\nb", -1.5]])
    assert "| '=cmd\\|x | 3 |" in table
    assert "| a b | -1.5 |" in table  # numbers are numbers, not strings
    rows = list(csv.reader(io.StringIO(csv_text(["name", "n"], [["=cmd", -3], ["@x", None]]))))
    assert rows == [["name", "n"], ["'=cmd", "-3"], ["'@x", ""]]


def test_team_name_sanitised() -> None:
    assert team_name("subs/=HYPERLINK(evil).csv") == "'=HYPERLINK(evil)"
    assert team_name("subs/-best.csv.gz") == "'-best"
    assert team_name("a/b/team_one.csv") == "team_one"


def test_competition_ranks() -> None:
    assert competition_ranks([0.1, 0.2, 0.1, None, 0.05]) == [2, 4, 2, None, 1]
    assert competition_ranks([]) == []


def test_leaderboard_hand_made(tmp_path: Path) -> None:
    solution = write(tmp_path / "solution.csv", SOLUTION)
    # iNat2019 format (1 label, top-1). Public ids 1, 2; Private ids 3, 4.
    write(tmp_path / "alpha.csv", "id,predicted\n1,10\n2,20\n3,30\n4,1\n")  # public 0.0, private 0.5
    write(tmp_path / "beta.csv", "id,predicted\n1,10\n2,1\n3,30\n4,40\n")  # public 0.5, private 0.0
    write(tmp_path / "=gamma.csv", "id,predicted\n1,1\n2,20\n3,30\n4,40\n")  # public 0.5, private 0.0
    write(tmp_path / "delta.csv", "id,predicted\n1,1\n2,1\n")  # missing ids
    write(tmp_path / "junk.csv", "\x00\x01garbage")
    paths = [tmp_path / f"{n}.csv" for n in ("alpha", "beta", "=gamma", "delta", "junk")]
    entries = build_leaderboard(paths, solution)
    got = [(e.team, e.public, e.private, e.public_rank, e.private_rank, e.change) for e in entries[:3]]
    assert got == [
        ("'=gamma", 0.5, 0.0, 2, 1, 1),
        ("beta", 0.5, 0.0, 2, 1, 1),
        ("alpha", 0.0, 0.5, 1, 3, -2),
    ]
    assert [e.team for e in entries[3:]] == ["delta", "junk"]
    assert "2 id(s) of the solution missing" in entries[3].error
    assert "binary data" in entries[4].error
    assert entries[3].private_rank is None and entries[3].change is None

    table = leaderboard_markdown(entries)
    assert "| 3 | alpha | 0.50000 | 0.00000 | 1 | ▼ 2 | top-1 error |" in table
    assert "| 1 | '=gamma | 0.00000 | 0.50000 | 2 | ▲ 1 | top-1 error |" in table
    assert "| — | delta | — | — | — | — | error: " in table
    rows = list(csv.DictReader(io.StringIO(leaderboard_csv(entries))))
    assert rows[2]["team"] == "alpha" and rows[2]["change"] == "-2" and rows[2]["private_rank"] == "3"
    assert rows[0]["team"] == "'=gamma"
    assert all(not value.startswith(("=", "+", "@")) for row in rows for value in row.values())
    assert rows[4]["error"].startswith(str(tmp_path / "junk.csv")) and rows[4]["private_score"] == ""

    written = write_leaderboard(entries, tmp_path / "board")
    assert [p.name for p in written] == ["leaderboard.csv", "leaderboard.md"]
    assert sorted(p.name for p in (tmp_path / "board").iterdir()) == ["leaderboard.csv", "leaderboard.md"]


def test_leaderboard_bad_solution(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="solution.csv"):
        build_leaderboard([tmp_path / "a.csv"], write(tmp_path / "solution.csv", "id,expected\n1,2\n"))


def test_cli_leaderboard(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    solution = write(tmp_path / "solution.csv", SOLUTION)
    a = write(tmp_path / "a.csv", "id,predicted\n1,10 2 3\n2,20 1 2\n3,1 2 3\n4,1 2 40\n")
    b = write(tmp_path / "b.csv", "id,predicted\n1,10 2 3\n2,20 1 2\n3,1 2\n4,1 2 40\n")
    out = tmp_path / "out"
    assert main(["leaderboard", str(a), str(b), "--solution", str(solution), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 1 | a | 0.50000 | 0.00000 | 1 | 0 | top-3 error |" in text
    assert "line 4: 2 label(s); expected at least 3" in text
    assert (out / "leaderboard.md").read_text(encoding="utf-8") == text
    assert main(["leaderboard", str(a), "--solution", str(tmp_path / "missing.csv")]) == 2


def test_score_report_files(tmp_path: Path) -> None:
    ranks = {"supercategory": "Aves", "genus": "Parus", "family": "Paridae"}
    cats = [{"id": 0, "name": "=Parus major", **ranks}, {"id": 1, "name": "Parus | minor", **ranks}]
    ranked = np.array([[0, 1], [0, 1], [1, 0]])
    expected = np.array([0, 1, 1])
    result = score_arrays(ranked, expected, np.array([True, False, False]), k=2)
    result.analysis = analyse(ranked[:, 0], expected, cats, {0: 3, 1: 7})
    written = write_score_report(result, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(p.name for p in written)
    assert len(written) == 4  # no temporary files left behind
    for png in written[2:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "report" / "score.json").read_text())["errors"]["top2"]["all"] == 0.0
    markdown = score_markdown(result)
    assert markdown == (tmp_path / "report" / "score.md").read_text(encoding="utf-8")
    assert "| Parus \\| minor (1) | '=Parus major (0) | 1 |" in markdown
    assert "100.0 % stay in the right genus" in markdown
    assert "| Public | 1 | 0.00000 | 0.00000 |" in markdown
