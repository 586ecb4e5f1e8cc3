"""Damaged checkpoints and weights files: every command that loads one says which file and what is wrong, exit 2.

A real checkpoint of a tiny run is cut short (to 100 kB, as an interrupted copy leaves it, and to a few bytes) or
its JSON is cut in half, and each loading command is run on it through ``inatcomp.cli.main``. Also: no exception
leaves ``main`` without the README's exit code (2 bad input, 3 internal error).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import tiny_train_config, write_tiny_dataset

from inatcomp import cli
from inatcomp.cli import main
from inatcomp.train import train

NAMES = ["Aa aa", "Bb bb", "Cc cc"]

#: How a file is damaged: cut to 100 kB, cut to 5 bytes, or its JSON cut in half.
DAMAGES = ("cut-100kB", "cut-5B", "json")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run (best, last with its training state, config.yaml) and its train JSON."""
    root = tmp_path_factory.mktemp("damaged")
    train_json = write_tiny_dataset(root / "data", names=NAMES, per_class=4)
    result = train(tiny_train_config(train_json, root / "run"))
    return train_json, Path(result.run_dir)


def _damaged_copy(run_dir: Path, tmp_path: Path, damage: str, stem: str = "best") -> tuple[Path, Path]:
    """A copy of the run with ``stem``'s weights or JSON damaged; returns (the run copy, the damaged file)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights, metadata = copy / f"{stem}.safetensors", copy / f"{stem}.json"
    if damage == "json":
        text = metadata.read_text()
        metadata.write_text(text[: len(text) // 2])
        return copy, metadata
    data = weights.read_bytes()
    size = 100_000 if damage == "cut-100kB" else 5
    assert len(data) > size
    weights.write_bytes(data[:size])
    return copy, weights


def _one_line_naming(caplog, damaged: Path, damage: str) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    message = errors[0]
    assert "\n" not in message and str(damaged) in message, message
    assert ("malformed JSON" if damage == "json" else "truncated or corrupt") in message, message
    assert "Traceback" not in message and "internal error" not in message


def _commands(train_json: Path, run: Path, tmp_path: Path) -> dict[str, list[str]]:
    """Each command that loads ``run``'s best checkpoint, as argv."""
    data = ["--train", str(train_json), "--images", str(train_json.parent), "--model", "resnet10t",
            "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0"]  # fmt: skip
    return {
        "predict": [
            "predict",
            "--checkpoint",
            str(run),
            "--data",
            str(train_json),
            "--out",
            str(tmp_path / "p"),
            "--workers",
            "0",
        ],  # fmt: skip
        "export": ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "model.onnx")],
        "average": ["average", str(run), str(run), "--out", str(tmp_path / "soup")],
        "train --init": ["train", *data, "--out", str(tmp_path / "init"), "--init", str(run / "best.safetensors")],
        "geoprior map": ["geoprior", "map", "--prior", str(run / "best"), "--out", str(tmp_path / "map.png")],
    }


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", ["predict", "export", "average", "train --init", "geoprior map"])
def test_a_damaged_checkpoint_is_one_line_and_exit_2(run, tmp_path, caplog, command, damage):
    train_json, run_dir = run
    copy, damaged = _damaged_copy(run_dir, tmp_path, damage)
    argv = _commands(train_json, copy, tmp_path)[command]
    caplog.clear()
    assert main(argv) == 2
    _one_line_naming(caplog, damaged, damage)


@pytest.mark.parametrize("damage", DAMAGES)
def test_resume_from_a_damaged_last_checkpoint(run, tmp_path, caplog, damage):
    _, run_dir = run
    copy, damaged = _damaged_copy(run_dir, tmp_path, damage, stem="last")
    caplog.clear()
    assert main(["train", "--resume", str(copy), "--epochs", "2"]) == 2
    _one_line_naming(caplog, damaged, damage)


def test_resume_from_a_damaged_training_state(run, tmp_path, caplog):
    _, run_dir = run
    copy, _ = _damaged_copy(run_dir, tmp_path, "json")  # best's JSON: not read by a resume
    state = copy / "last.state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    caplog.clear()
    assert main(["train", "--resume", str(copy), "--epochs", "2"]) == 2
    _one_line_naming(caplog, state, "cut-100B")


@pytest.mark.parametrize("damage", ["cut-100kB", "cut-5B"])
def test_pretrained_file_damaged(run, tmp_path, caplog, damage):
    train_json, run_dir = run
    _, damaged = _damaged_copy(run_dir, tmp_path, damage)
    argv = _commands(train_json, run_dir, tmp_path)["train --init"][:-2]
    caplog.clear()
    assert main([*argv, "--pretrained", str(damaged)]) == 2
    _one_line_naming(caplog, damaged, damage)


@pytest.mark.parametrize(
    ("error", "code", "words"),
    [
        (ValueError("x.json: $.a: expected a number"), 2, "x.json: $.a"),
        (FileNotFoundError(2, "No such file or directory", "missing.csv"), 2, "missing.csv: No such file"),
        (RuntimeError("a check failed"), 3, "internal error: RuntimeError: a check failed"),
        (KeyError("model"), 3, "internal error: KeyError"),
        (TypeError("bad\nsecond line"), 3, "internal error: TypeError: bad"),
    ],
)
def test_no_exception_leaves_main_without_its_exit_code(monkeypatch, caplog, error, code, words):
    # A stand-in command raising each kind of exception: the mapping of main is what is tested, not a command.
    def failing(args):
        raise error

    monkeypatch.setattr(cli, "_COMMANDS", tuple(
        (name, text, options, failing if name == "validate" else run) for name, text, options, run in cli._COMMANDS
    ))  # fmt: skip
    caplog.clear()
    assert main(["validate", "anything.json"]) == code
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0] and "\n" not in errors[0], errors
