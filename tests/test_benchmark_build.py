"""The build benchmark (benchmarks/build.py): the replicated export it measures at 30 M photos, and a measurement
end to end at a tiny size, with the pre-faulted pairs."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.fileio import replace_generated_block
from inatcomp.world.synth import SynthConfig, write_export

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch):
    # The benchmark's children import `benchmarks` from the working folder, as `make bench` runs them.
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.chdir(ROOT)
    sys.modules.pop("benchmarks.build", None)
    import benchmarks.build

    return benchmarks.build


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_replicate_export_gives_each_copy_its_own_ids(bench, tmp_path):
    write_export(tmp_path / "one", SynthConfig(species=12, photos=600, seed=3, images=False))
    bench.replicate_export(str(tmp_path / "one"), str(tmp_path / "three"), 3)
    for name, key in (("observers", "observer_id"), ("observations", "observation_uuid"), ("photos", "photo_id")):
        one, three = _rows(tmp_path / "one" / f"{name}.csv"), _rows(tmp_path / "three" / f"{name}.csv")
        assert len(three) == 3 * len(one)
        assert len({r[key] for r in three}) == 3 * len({r[key] for r in one}), name
    assert _rows(tmp_path / "three" / "taxa.csv") == _rows(tmp_path / "one" / "taxa.csv")
    # A photo of the second copy points at the second copy's observation and observer.
    photos, observations = _rows(tmp_path / "three" / "photos.csv"), _rows(tmp_path / "three" / "observations.csv")
    by_uuid = {r["observation_uuid"]: r for r in observations}
    second = photos[len(photos) // 3]
    assert second["observation_uuid"].startswith("01")
    assert by_uuid[second["observation_uuid"]]["observer_id"] == second["observer_id"]
    # The copies multiply the photos of every species: the build keeps the same classes.
    rules = rules_for(Preset.INAT2018, min_train=2)
    one = build_dataset(tmp_path / "one", tmp_path / "out1", rules=rules, images=False)
    three = build_dataset(tmp_path / "three", tmp_path / "out3", rules=rules, images=False)
    assert three.classes >= one.classes > 0
    assert three.images["train"] > one.images["train"]


def test_measure_reports_time_cpu_memory_and_prefaulted_pairs(bench):
    result = bench.measure(20_000, pairs=1, prefault=True)
    assert result["photos"] == 20_000
    for pairs in (result, result["prefaulted"]):
        assert len(pairs["ratios"]) == 1 and pairs["ratios"][0] > 0
        for run in (pairs["parse"], pairs["build"]):
            assert run["seconds"] > 0 and run["rss_mb"] > 50
            assert 0 <= run["sys"] <= run["cpu"]
        assert pairs["build"]["classes"] > 0 and pairs["build"]["images"]["train"] > 0
    # The pre-faulting child touches more than the first builds' peak.
    assert result["prefaulted"]["mb"] > result["build"]["rss_mb"]


def test_scale_measures_synth_parse_and_build_whole_and_writes_its_block(bench, tmp_path):
    runs = [bench.measure_scale(n, memory_limit="500MB", tmp_root=str(tmp_path)) for n in (3000, 6000)]
    for run, n in zip(runs, (3000, 6000)):
        assert abs(run["observations"] - n) < 0.1 * n
        for stage in ("synth", "parse", "build"):
            assert run[stage]["seconds"] > 0 and run[stage]["rss_mb"] > 10, stage
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# B\n\n{bench.SCALE_BEGIN}\nold\n{bench.SCALE_END}\nafter\n", encoding="utf-8")
    text = bench.scale_markdown(runs, "python -m benchmarks.build --scale 3000 6000")
    replace_generated_block(markdown, "build-scale", text.removeprefix(bench.SCALE_BEGIN).removesuffix(bench.SCALE_END))
    written = markdown.read_text(encoding="utf-8")
    assert "old" not in written and written.endswith("after\n") and "projected at 300 M" in written
    assert written.count(" M | ") >= 2 and "build/parse" in written
    assert list(tmp_path.iterdir()) == [markdown]  # the exports and spills are gone


def test_scale_keeps_an_export_in_exports_and_measures_it_again_without_generating_it(bench, tmp_path):
    exports = tmp_path / "exports"
    exports.mkdir()
    first = bench.measure_scale(3000, memory_limit="500MB", tmp_root=str(tmp_path), exports=str(exports),
                                synth_only=True)  # fmt: skip
    assert "build" not in first and (exports / "3000" / "synth.json").exists()
    made = {p.name: p.stat().st_mtime_ns for p in (exports / "3000").iterdir()}
    again = bench.measure_scale(3000, memory_limit="500MB", tmp_root=str(tmp_path), exports=str(exports))
    assert again["synth"] == first["synth"] and again["build"]["seconds"] > 0
    assert {p.name: p.stat().st_mtime_ns for p in (exports / "3000").iterdir()} == made  # not generated anew
