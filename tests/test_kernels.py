"""Each kernel's ``--smoke`` run on one tiny synthetic release, the make targets' argument checks, pipeline steps."""

from __future__ import annotations

import importlib.util
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from inatcomp.pipeline import find_release, synthetic_release
from inatcomp.predict.submission import validate_submission

ROOT = Path(__file__).resolve().parents[1]
KERNELS = sorted(p.stem for p in (ROOT / "kernels").glob("*.py"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"kernel_{name}", ROOT / "kernels" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return synthetic_release(tmp_path_factory.mktemp("smoke"), species=12, photos=900, image_size=80, workers=1)


def test_every_kernel_is_a_parser_and_a_main():
    assert {"baseline", "runner_up_2018"} <= set(KERNELS)
    for name in KERNELS:
        module = _load(name)
        args = module.get_args_parser().parse_args(["--smoke"])
        assert args.smoke is True
        assert callable(module.main)


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_smoke_runs_end_to_end(name, release, tmp_path):
    module = _load(name)
    summary = module.main(
        module.get_args_parser().parse_args(["--smoke", "--data", str(release.root), "--out", str(tmp_path)])
    )
    errors = {k: v for k, v in summary.items() if k.endswith("_error") and not k.startswith("published")}
    assert errors and all(0.0 <= v <= 1.0 and math.isfinite(v) for v in errors.values()), errors
    if "submission" in summary:
        submission = Path(summary["submission"])
        assert submission.is_file()
        assert validate_submission(submission, release.test, format="inat2018") == []
    assert (tmp_path / "summary.json").is_file()
    # Every model a smoke run trains from timm's architecture starts from the shipped synthetic-world backbone
    # (runs started from another run, --init, say init: instead).
    configs = [yaml.safe_load(path.read_text()) for path in tmp_path.rglob("config.yaml")]
    assert configs and all(c.get("pretrained") == "synth" for c in configs if not c.get("init")), configs


def test_kernel_without_data_or_smoke_says_what_is_missing(tmp_path):
    module = _load("baseline")
    with pytest.raises(ValueError, match="--data is required"):
        module.main(module.get_args_parser().parse_args(["--out", str(tmp_path)]))


def test_find_release_names_the_missing_file(release, tmp_path):
    assert find_release(release.root, preset="inat2018").solution == release.root / "solution.csv"
    with pytest.raises(ValueError, match="not a folder"):
        find_release(tmp_path / "nowhere", preset="inat2018")
    (tmp_path / "train.json").write_text("{}")
    with pytest.raises(ValueError, match=r"val\.json: missing; a inat2021 release folder holds val\.json"):
        find_release(tmp_path, preset="inat2021")


@pytest.mark.parametrize("year", ["2017", "2018", "2021"])
def test_baseline_make_targets_check_data(year, tmp_path):
    target = f"baseline-inat{year}"
    missing = subprocess.run(["make", "-s", target], cwd=ROOT, capture_output=True, text=True)
    assert missing.returncode != 0
    assert f"set DATA to the downloaded iNat{year} release folder" in missing.stderr
    absent = subprocess.run(
        ["make", "-s", target, f"DATA={tmp_path / 'absent'}"], cwd=ROOT, capture_output=True, text=True
    )
    assert absent.returncode != 0 and "is not a folder" in absent.stderr
    dry = subprocess.run(["make", "-n", target, f"DATA={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert f'kernels/baseline.py --data "{tmp_path}" --year {year}' in dry.stdout
