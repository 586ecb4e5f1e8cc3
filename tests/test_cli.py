"""The ``inatcomp`` command end to end: synth, validate, demo."""

from __future__ import annotations

import json
import re
import time

import yaml

from inatcomp.cli import main


def test_synth_then_validate_every_table(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["synth", str(out), "--species", "20", "--photos", "120", "--image-size", "32", "--gzip"]) == 0
    tables = [str(out / f"{name}.csv.gz") for name in ("taxa", "observations", "photos", "observers")]
    assert main(["validate", *tables]) == 0
    assert capsys.readouterr().out == ""


def test_validate_reports_each_problem_and_fails(tmp_path, capsys):
    bad = tmp_path / "observations.csv"
    bad.write_text(
        "observation_uuid\tobserver_id\tlatitude\tlongitude\tpositional_accuracy\ttaxon_id\tquality_grade\tobserved_on\n"
        "5f3c2b1a-0000-4000-8000-000000000001\t12\t95.5\t10\t\t3\tresearch\t2020-01-01\n"
        "5f3c2b1a-0000-4000-8000-000000000002\tabc\t10\t10\t\t3\tgreat\t2020-01-01\n",
        encoding="utf-8",
    )
    assert main(["validate", str(bad)]) == 1
    printed = capsys.readouterr().out
    assert "line 2" in printed and "latitude" in printed
    assert "line 3" in printed and "observer_id" in printed and "quality_grade" in printed


def test_validate_never_tracebacks_on_junk(tmp_path, capsys):
    junk = tmp_path / "train2018.json"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage")
    assert main(["validate", str(junk)]) == 1
    assert str(junk) in capsys.readouterr().out


def test_demo_runs_the_stages(tmp_path, caplog):
    caplog.set_level("INFO")
    demo = tmp_path / "demo"
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n<!-- demo:begin (written by make demo) -->\nold figures\n<!-- demo:end -->\nTail.\n")
    assert (
        main(["demo", str(demo), "--species", "20", "--photos", "600", "--epochs", "1", "--readme", str(readme),
              "--started-at", str(time.time() - 100)]) == 0  # as make demo passes it: 100 s of install before
    )  # fmt: skip
    assert (demo / "export" / "photos.csv").is_file()
    assert "0 problems" in caplog.text
    assert (demo / "release" / "train2018.json").is_file()
    assert "0 problems in the release" in caplog.text
    for run in ("baseline", "balanced", "recipe_a", "recipe_a_valft", "recipe_b", "recipe_b_valft"):
        assert (demo / "runs" / run / "best.safetensors").is_file(), run
    # The fine-tuned model trained on the rest of val, and kept the head of the run it started from.
    finetuned = json.loads((demo / "runs" / "recipe_a_valft" / "best.json").read_text())
    base = json.loads((demo / "runs" / "recipe_a" / "best.json").read_text())
    assert finetuned["category_ids"] == base["category_ids"]
    ensemble_header = json.loads((demo / "predictions" / "ensemble" / "test.pred" / "header.json").read_text())
    assert len(ensemble_header["ensemble"]["members"]) == 2
    # The recipe is the ensemble moved from its sampler's prior (π^0.5) to the test's (train's).
    recipe_header = json.loads((demo / "predictions" / "recipe" / "test.pred" / "header.json").read_text())
    (adjustment,) = recipe_header["logit_adjust"]
    assert adjustment["tau"] == -0.5 and adjustment["prior"].endswith("train2018.json")  # square-root batches
    assert recipe_header["ensemble"] == ensemble_header["ensemble"]
    names = ("baseline", "balanced", "balanced_adjusted", "recipe_a", "recipe_b", "ensemble", "recipe")
    for name in (*names, "sample_submission"):
        assert (demo / "submissions" / f"{name}.csv").is_file(), name
    assert (demo / "report" / "score.md").is_file()
    board = (demo / "leaderboard" / "leaderboard.md").read_text()
    assert all(f"| {name} |" in board for name in names)
    # The README block is this run's summary, between the markers, with the rest of the file untouched.
    summary = (demo / "summary.md").read_text()
    assert summary.startswith("Last run: ") and "| recipe |" in summary and "20 species, 600 photos" in summary
    assert "from the shipped synthetic-world backbone" in summary
    # The work, which a busy machine does not change: 4 models × 1 epoch over train and 2 fine-tunings over the
    # rest of val (full batches: a few images fewer), 4 models × 2 flip views of minival and test.
    release = {
        n: len(json.loads((demo / "release" / f"{n}2018.json").read_text())["images"]) for n in ("train", "test")
    }
    rest_of_val, minival = (
        len(json.loads((demo / "minival" / n).read_text())["images"]) for n in ("val.json", "minival.json")
    )
    work = re.search(r"([\d,]+) image-epochs trained, ([\d,]+) image-views predicted", summary)
    trained, predicted = (int(work[i].replace(",", "")) for i in (1, 2))
    assert 0 < trained <= 4 * release["train"] + 2 * rest_of_val  # full batches only: a few fewer
    assert predicted == 4 * 2 * (minival + release["test"])
    took = re.search(r"(\d+) min (\d+) s for `make demo`: (\d+) min (\d+) s install, (\d+) min (\d+) s demo", summary)
    total, install, own = (60 * int(took[i]) + int(took[i + 1]) for i in (1, 3, 5))
    assert install >= 100 and abs(total - install - own) <= 1  # 100 s before main, and the import of the demo
    assert yaml.safe_load((demo / "runs" / "baseline" / "config.yaml").read_text())["pretrained"] == "synth"
    text = readme.read_text()
    assert "old figures" not in text and summary.strip() in text
    assert text.startswith("# Title\n<!-- demo:begin (written by make demo) -->\n") and text.endswith(
        "<!-- demo:end -->\nTail.\n"
    )
