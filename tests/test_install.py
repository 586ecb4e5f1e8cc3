"""Installing beside a user's environment: ranges in the metadata, a complete wheel, no network at import.

The exact versions ``make install`` uses live in ``constraints.txt``; the package metadata states ranges so that
``pip install`` of the kit never replaces a user's own torch build. Importing any module of the kit opens no
connection (albumentations' update check is switched off for the kit, a user's own setting kept).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _install_requires() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requirements = [line.strip() for line in config["options"]["install_requires"].splitlines() if line.strip()]
    return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower(): r for r in requirements}


def test_metadata_states_ranges_not_pins_for_torch_and_its_neighbours():
    requires = _install_requires()
    for name in ("torch", "torchvision", "timm"):
        assert name in requires, name
        assert "==" not in requires[name] and ">=" in requires[name], requires[name]
    # Nothing in the metadata is pinned exactly; constraints.txt pins everything make install uses.
    assert [r for r in requires.values() if "==" in r] == []
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert {"torch", "torchvision", "timm", "albumentations"} <= set(pins)


def test_albumentations_stays_below_the_first_non_mit_release():
    spec = _install_requires()["albumentations"]
    assert "<2.0.9" in spec.replace(" ", "") or "<=2.0.8" in spec.replace(" ", ""), spec


def test_the_wheel_carries_the_schemas_the_weights_and_their_manifest(tmp_path: Path):
    # Built from a copy, so setuptools' build/ folder never lands in the working tree.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "runs", "build", "dist", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=source, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("inatcomp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    schemas = {p.name for p in (ROOT / "inatcomp" / "formats" / "data_schema").iterdir()}
    assert {f"inatcomp/formats/data_schema/{name}" for name in schemas} <= names
    manifest = json.loads((ROOT / "inatcomp" / "models" / "weights" / "manifest.json").read_text())
    weights = {f"inatcomp/models/weights/{Path(entry['file']).name}" for entry in manifest.values()}
    assert weights and weights | {"inatcomp/models/weights/manifest.json"} <= names
    assert "inatcomp/cli.py" in names and not any(n.startswith(("tests/", "benchmarks/")) for n in names)


#: Imports every module of the kit with connections refused and recorded; prints what was attempted.
_NO_NETWORK = """
import importlib, json, pkgutil, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import inatcomp
for module in pkgutil.walk_packages(inatcomp.__path__, "inatcomp."):
    importlib.import_module(module.name)
import albumentations
print(json.dumps({"attempts": attempts, "modules": len(sys.modules)}))
"""


@pytest.mark.parametrize("user_setting", [None, "0"])
def test_importing_the_kit_opens_no_connection(user_setting: str | None):
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    if user_setting is not None:
        env["NO_ALBUMENTATIONS_UPDATE"] = user_setting
    done = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if user_setting is None:
        assert result["attempts"] == [], result
    else:
        # The check can fail: a user who asks for albumentations' update check gets it (and it is refused here).
        assert result["attempts"] != []
