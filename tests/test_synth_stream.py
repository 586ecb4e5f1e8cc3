"""A large synthetic export is generated block by block: deterministic, whole, and its memory that of one block."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import pandas as pd

import inatcomp.world.synth as synth
from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.world.synth import SynthConfig, write_export


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)


def test_blocked_export_is_deterministic_whole_and_builds(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "BLOCK_PHOTOS", 3000)
    config = SynthConfig(species=30, photos=10_000, seed=2, images=False, gzip=True)
    counts = write_export(tmp_path / "a", config)
    write_export(tmp_path / "b", config)
    write_export(tmp_path / "plain", SynthConfig(species=30, photos=10_000, seed=2, images=False))
    for name in ("taxa", "observations", "photos", "observers"):
        gz = (tmp_path / "a" / f"{name}.csv.gz").read_bytes()
        assert gz == (tmp_path / "b" / f"{name}.csv.gz").read_bytes()  # same arguments, same bytes
        assert gzip.decompress(gz) == (tmp_path / "plain" / f"{name}.csv").read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))
    obs, photos = _read(tmp_path / "plain/observations.csv"), _read(tmp_path / "plain/photos.csv")
    observers = _read(tmp_path / "plain/observers.csv")
    assert len(photos) == 10_000 == counts["photos"] and len(obs) == counts["observations"]
    assert photos["photo_id"].is_unique and obs["observation_uuid"].is_unique and observers["login"].is_unique
    assert photos["observation_uuid"].isin(obs["observation_uuid"]).all()
    assert obs["observer_id"].isin(observers["observer_id"]).all() and observers["observer_id"].is_unique
    assert len(_read(tmp_path / "plain/synth_truth.csv")) == len(obs)
    rules = rules_for(Preset.INAT2018)
    engine = build_dataset(tmp_path / "a", tmp_path / "e", rules=rules, images=False)
    memory = build_dataset(tmp_path / "a", tmp_path / "m", rules=rules, images=False, in_memory=True)
    assert engine.images == memory.images and engine.images["train"] > 0


def test_an_export_within_one_block_is_the_single_generation(tmp_path, monkeypatch):
    config = SynthConfig(species=20, photos=3000, seed=7, images=False)
    write_export(tmp_path / "one", config)
    monkeypatch.setattr(synth, "BLOCK_PHOTOS", 3000)  # exactly one block: the same code path and bytes
    write_export(tmp_path / "edge", config)
    for name in ("taxa", "observations", "photos", "observers", "synth_truth"):
        assert (tmp_path / "one" / f"{name}.csv").read_bytes() == (tmp_path / "edge" / f"{name}.csv").read_bytes()


_SYNTH_PEAK = """
import sys
import inatcomp.world.synth as synth
synth.BLOCK_PHOTOS = 50_000
config = synth.SynthConfig(species=100, photos=int(sys.argv[2]), seed=1, images=False, gzip=True)
synth.write_export(sys.argv[1], config)
print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')][0])
"""


def test_synth_peak_memory_does_not_grow_with_the_photos(tmp_path):
    peaks = []
    for photos in (100_000, 400_000):
        done = subprocess.run(
            [sys.executable, "-c", _SYNTH_PEAK, str(tmp_path / str(photos)), str(photos)],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks.append(int(done.stdout.split()[-1]))
    assert peaks[1] < peaks[0] * 1.15, peaks  # four times the photos, about the same peak
