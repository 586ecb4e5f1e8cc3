"""Start-up: the commands that read and write files import no torch, timm or torchvision.

Each command runs in a fresh interpreter (as a user runs it) and reports which heavy packages it imported; an
organizer scoring strangers' files in a loop, or a competitor validating a submission, pays for none of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inatcomp.formats.predictions import PredictionWriter

HEAVY = {"torch", "timm", "torchvision"}

#: Runs ``inatcomp`` with the given arguments, then prints its exit code and the heavy packages imported.
_RUN = """
import json, sys
from inatcomp.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted({name.split(".")[0] for name in sys.modules} & {"torch", "timm", "torchvision"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def run_command(*args: str | Path) -> dict:
    """Run ``inatcomp ARGS`` in a fresh interpreter; its exit code and the heavy packages it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *map(str, args)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_prediction(path: Path, image_ids: list[int], category_ids: list[int], seed: int) -> Path:
    scores = np.random.default_rng(seed).random((len(image_ids), len(category_ids)))
    with PredictionWriter(path, image_ids=image_ids, category_ids=category_ids) as writer:
        writer.write(scores / scores.sum(axis=1, keepdims=True))
    return path


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A metadata-only release, made by ``synth --no-images`` and ``build``, each checked for heavy imports."""
    root = tmp_path_factory.mktemp("startup")
    for args in (
        ("synth", root / "export", "--species", "30", "--photos", "1500", "--no-images"),
        ("build", root / "export", root / "release", "--preset", "inat2018", "--no-images"),
    ):
        assert run_command(*args) == {"code": 0, "heavy": []}, args
    return root / "release"


def _ids(path: Path) -> list[int]:
    return [image["id"] for image in json.loads(path.read_text())["images"]]


def test_file_commands_import_no_torch(release: Path, tmp_path: Path) -> None:
    categories = [c["id"] for c in json.loads((release / "categories.json").read_text())]
    test_pred = [
        write_prediction(tmp_path / f"t{i}.pred", _ids(release / "test2018.json"), categories, i) for i in (0, 1)
    ]
    val_pred = write_prediction(tmp_path / "val.pred", _ids(release / "val2018.json"), categories, 2)
    solution = release / "solution.csv"
    commands = {
        "help": ("--help",),
        "validate": ("validate", release / "train2018.json", solution),
        "validate --against": ("validate", release / "sample_submission.csv", "--against", release / "test2018.json"),
        "score": ("score", release / "sample_submission.csv", "--solution", solution, "--dataset", release),
        "leaderboard": ("leaderboard", release / "sample_submission.csv", "--solution", solution),
        "split-val": ("split-val", release / "val2018.json", "--out", tmp_path / "minival"),
        "ensemble": ("ensemble", *test_pred, "--out", tmp_path / "ensemble.pred"),
        "submit": ("submit", tmp_path / "ensemble.pred", "--format", "inat2018", "--out", tmp_path / "sub.csv"),
        "score-pred": ("score-pred", val_pred, "--labels", release / "val2018.json", "--dataset", release),
    }
    for name, args in commands.items():
        assert run_command(*args) == {"code": 0, "heavy": []}, name
    assert (tmp_path / "sub.csv").read_text().startswith("id,predicted\n")


def test_training_commands_still_load_torch(release: Path) -> None:
    """The check can fail: ``train --help`` builds its options from the config alone, ``predict`` pays for torch."""
    assert run_command("train", "--help")["heavy"] == []
    result = run_command("predict", "--checkpoint", release / "missing", "--data", release / "test2018.json",
                         "--out", release / "x.pred")  # fmt: skip
    assert result["code"] == 2 and "torch" in result["heavy"]
