"""The out-of-core builder (DuckDB): the in-memory builder's files, its memory limit, bad tables, informal names."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from inatcomp.build import build_dataset
from inatcomp.build.audit import _Audit
from inatcomp.build.layout import release_names
from inatcomp.build.release import _choose, _Laps
from inatcomp.build.rules import PhotoChoice, Preset, rules_for
from inatcomp.build.source import ExportSource
from inatcomp.cli import main
from inatcomp.world.synth import SynthConfig, write_export
from tests.test_build import hand  # noqa: F401  (the hand-made export's fixture)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    write_export(folder, SynthConfig(species=60, photos=9000, seed=4, images=False, gzip=True))
    # Photos of no observation and an observation of an unknown taxon: rules the synthetic export never exercises.
    with gzip.open(folder / "photos.csv.gz", "at", encoding="utf-8") as photos:
        photos.write(
            "10000000-0000-4000-8000-999999999999\t99999999\t00000000-0000-4000-8000-999999999999\t1\tjpg\tcc-by\t100\t80\t1\n"
        )
    return folder


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        (Preset.INAT2017, {}),
        (Preset.INAT2018, {}),
        (Preset.INAT2018, {"photo_choice": PhotoChoice.RANDOM, "research_only": False}),
        (Preset.INAT2018, {"min_observations": 30, "min_research_observations": 10}),  # thresholds, then grade
        (Preset.INAT2021, {}),
        (Preset.INAT2021, {"photos_per_observation": 2}),
        (Preset.PRODUCTION, {}),
    ],
)
def test_engine_writes_the_in_memory_builders_files(generated, tmp_path, preset, overrides):
    rules = rules_for(preset, **overrides)
    engine = build_dataset(generated, tmp_path / "engine", rules=rules, seed=3, images=False)
    memory = build_dataset(generated, tmp_path / "memory", rules=rules, seed=3, images=False, in_memory=True)
    assert engine.images == memory.images and engine.images["train"] > 0
    assert _files(tmp_path / "engine") == _files(tmp_path / "memory")


@pytest.mark.parametrize("keys", ["uniform", "high"])
def test_quotas_in_the_engine_rank_as_the_in_memory_phases(generated, tmp_path, monkeypatch, keys):
    """A train cap far below the classes' sizes, so the engine ranks only keys below a limit; with every key in
    the upper half (``high``), no group has its quota below the limit and each is ranked whole: the same files."""
    if keys == "high":
        from inatcomp.build import engine_sampling, sampling

        def high(rng, n):
            return rng.integers(1 << 31, 1 << 32, n, dtype=np.uint32)

        monkeypatch.setattr(sampling, "random_keys", high)
        monkeypatch.setattr(engine_sampling, "random_keys", high)
    rules = rules_for(Preset.INAT2018, max_train=5, val_per_class=2, photos_per_observation=2)
    engine = build_dataset(generated, tmp_path / "engine", rules=rules, seed=5, images=False)
    build_dataset(generated, tmp_path / "memory", rules=rules, seed=5, images=False, in_memory=True)
    assert engine.images["train"] == 5 * engine.classes
    assert _files(tmp_path / "engine") == _files(tmp_path / "memory")


def test_licences_and_gone_photos_leave_the_same_release_both_ways(generated, tmp_path):
    """--licenses and a fetch's gone photos are left out of the engine's rounds as of the in-memory tables."""
    rules = rules_for(Preset.INAT2018)
    names = release_names(rules)

    def select(source: ExportSource, gone: set[int], audit: _Audit) -> list[int]:
        selection = _choose(source, gone, rules, 3, 3, audit, _Laps(), images=False, names=names)
        return selection.photo_id.tolist()

    built = {}
    for name, in_memory in (("engine", False), ("memory", True)):
        with ExportSource(generated, in_memory=in_memory, memory_limit=None, temp_dir=None, lap=lambda _: None) as s:
            audit = _Audit()
            s.keep_licenses(["cc-by", " CC0"], audit)
            first = select(s, set(), audit)
            gone = set(first[::40])
            assert s.known(gone | {-5}) == gone
            again = select(s, gone, _Audit())
            assert again and not gone & set(again) and again != first
            built[name] = (audit.as_dict(), first, again, len(s.observation_uuids(gone)))
    assert built["engine"] == built["memory"]
    assert built["engine"][0]["licence not in --licenses"]["photos"] > 0


def test_engine_equals_in_memory_on_the_hand_made_export(hand, tmp_path):  # noqa: F811
    _, folder = hand
    for preset in (Preset.INAT2017, Preset.INAT2018, Preset.PRODUCTION):
        rules = rules_for(preset, min_train=1, val_per_class=1)
        build_dataset(folder, tmp_path / f"e{preset.value}", rules=rules, images=False)
        build_dataset(folder, tmp_path / f"m{preset.value}", rules=rules, images=False, in_memory=True)
        assert _files(tmp_path / f"e{preset.value}") == _files(tmp_path / f"m{preset.value}")


def _mangle_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("table", "mangle", "expected"),
    [
        ("photos", _mangle_gzip, "photos"),
        ("observations", lambda p: _rewrite(p, lambda t: t.replace("quality_grade", "grade", 1)), "quality_grade"),
        ("taxa", lambda p: _rewrite(p, lambda t: t.replace("\t", ",")), "line 1"),
    ],
)
def test_bad_tables_fail_with_file_and_line_before_anything_is_written(tmp_path, caplog, table, mangle, expected):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=20, photos=3000, seed=2, images=False, gzip=True))
    path = folder / f"{table}.csv.gz"
    mangle(path)
    out = tmp_path / "out"
    assert main(["build", str(folder), str(out), "--preset", "inat2018", "--no-images"]) == 2
    message = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message and str(path) in message[-1] and expected in message[-1] and "\n" not in message[-1]
    assert "line" in message[-1]
    assert not out.exists()


def _rewrite(path: Path, edit) -> None:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(edit(text))


_INFORMAL = ["Mycena sp. 'acicula-CA01'", "Dactylocnemis poor knights", "Hydnocristella sp. 'PNW01' /x"]


def test_informal_names_are_left_out_counted_and_never_reach_a_folder_name(tmp_path):
    folder = tmp_path / "export"
    write_export(folder, SynthConfig(species=30, photos=4000, seed=5, images=False))
    taxa = pd.read_csv(folder / "taxa.csv", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    obs = pd.read_csv(folder / "observations.csv", sep="\t", dtype=str, keep_default_na=False, quoting=3)
    common = obs["taxon_id"].value_counts().index[: len(_INFORMAL)]
    species = taxa["taxon_id"].isin(common) & (taxa["rank"] == "species")
    taxa.loc[species, "name"] = _INFORMAL[: int(species.sum())]
    taxa.to_csv(folder / "taxa.csv", sep="\t", index=False, quoting=3)
    default = build_dataset(folder, tmp_path / "default", rules=rules_for(Preset.INAT2021), images=False)
    assert default.audit["removed"]["informal name"]["observations"] > 0
    names = {c["name"] for c in json.loads((tmp_path / "default" / "train.json").read_text())["categories"]}
    assert not names & set(_INFORMAL)
    rules = rules_for(Preset.INAT2021, allow_informal_names=True)
    kept = build_dataset(folder, tmp_path / "kept", rules=rules, images=False)
    assert "informal name" not in kept.audit["removed"] and kept.classes > default.classes
    for preset in (Preset.INAT2017, Preset.INAT2021):
        out = tmp_path / f"kept{preset.value}"
        build_dataset(folder, out, rules=rules_for(preset, allow_informal_names=True), images=False)
        release = json.loads(next(out.glob("train*.json")).read_text())
        assert {c["name"] for c in release["categories"]} & set(_INFORMAL)
        folders = {c.get("image_dir_name", "") for c in release["categories"]}
        folders |= {part for image in release["images"] for part in image["file_name"].split("/")[1:-1]}
        assert all(not any(ch.isspace() or ch in "'\"/\\" for ch in name) for name in folders)


# Peak resident memory from VmHWM (ru_maxrss survives exec: a child would report its parent's size as a floor).
_PEAK = "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0])"


def _peak_rss_kb(args: list[str]) -> int:
    """Peak RSS (KiB) of a child Python running the command line ``args``."""
    code = (
        "import runpy, sys; sys.argv = ['inatcomp'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('inatcomp.cli', run_name='__main__')\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n" + _PEAK
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_a_tight_memory_limit_is_honoured(tmp_path):
    """A 100 MB limit on an export whose tables hold more: the build's growth over its own baseline (the same
    build of a tiny export: interpreter, libraries, DuckDB started) stays below the limit."""
    big, tiny = tmp_path / "big", tmp_path / "tiny"
    write_export(big, SynthConfig(species=200, photos=600_000, seed=1, images=False))
    write_export(tiny, SynthConfig(species=20, photos=2000, seed=1, images=False))
    table_bytes = sum(p.stat().st_size for p in big.glob("*.csv"))
    assert table_bytes > 100e6
    options = ["--preset", "inat2018", "--no-images", "--max-train", "20", "--temp-dir", str(tmp_path)]
    baseline = _peak_rss_kb(["build", str(tiny), str(tmp_path / "tiny_out"), *options, "--memory-limit", "100MB"])
    peak = _peak_rss_kb(["build", str(big), str(tmp_path / "out"), *options, "--memory-limit", "100MB"])
    assert (tmp_path / "out" / "train2018.json").exists()
    print(f"tables {table_bytes / 1e6:.0f} MB, peak RSS {peak / 1024:.0f} MiB, baseline {baseline / 1024:.0f} MiB")
    assert (peak - baseline) * 1024 < 100e6, (peak, baseline)
