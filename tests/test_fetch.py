"""``inatcomp build --photo-url``: photos fetched from a loopback HTTP server that injects every fault a bucket has.

The server (benchmarks/photo_server.py) is a real HTTP/1.1 server on 127.0.0.1 in a thread of the test; the
builds are the real ones, in this process or in a child killed with SIGKILL.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from benchmarks.photo_server import PhotoServer
from inatcomp.build import build_dataset, check_leakage, release_names
from inatcomp.build.fetch import (
    OPEN_DATA_URL,
    FetchAbortedError,
    FetchSettings,
    PhotoFetcher,
    _retry_after,
    photo_url_template,
)
from inatcomp.build.ledger import FailureLedger
from inatcomp.build.progress import Progress
from inatcomp.build.rules import Preset, rules_for
from inatcomp.cli import main
from inatcomp.formats.validate import validate_file
from inatcomp.world.synth import SynthConfig, write_export

RULES = rules_for(Preset.INAT2017, min_train=2, max_train=8)
#: Short back-offs: a fault costs the test milliseconds, not the defaults' seconds. The timeouts stay generous
#: (a loaded 2-core machine may take a second to answer a good request; a spurious timeout would change the
#: counts the tests compare): the ``slow`` fault waits longer than the read timeout, not the other way round.
QUICK = dict(read_timeout=2.0, connect_timeout=5.0, backoff_base=0.01, backoff_cap=0.05, max_rps=0, workers=8)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fetch") / "export"
    write_export(folder, SynthConfig(species=20, photos=800, seed=2, image_size=48, workers=2))
    return folder


def _provenance(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "provenance.csv")


def _digests(folder: Path, skip: tuple[str, ...] = ("audit.json", "audit.md")) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _audit(out: Path) -> dict:
    return json.loads((out / "audit.json").read_text())


def _local_export_without(export: Path, photos: Path, gone: set[int], folder: Path) -> Path:
    """A local export of the same tables without the ``gone`` photos' rows, reading its photos from ``photos``."""
    folder.mkdir()
    for table in ("taxa", "observations", "observers"):
        (folder / f"{table}.csv").symlink_to(export / f"{table}.csv")
    lines = (export / "photos.csv").read_text().splitlines(keepends=True)
    column = lines[0].rstrip("\n").split("\t").index("photo_id")
    kept = [line for line in lines[1:] if int(line.split("\t")[column]) not in gone]
    (folder / "photos.csv").write_text(lines[0] + "".join(kept))
    (folder / "photos").symlink_to(photos)
    return folder


def _check_release(out: Path, rules=RULES) -> pd.DataFrame:
    names = release_names(rules)
    for part in ("train", "val", "test"):
        assert validate_file(out / names[part]) == []
    assert all(v == 0 for v in check_leakage(out, names).values())
    provenance = _provenance(out)
    # Every JSON image has its file; the caps hold.
    train = json.loads((out / names["train"]).read_text())
    assert all((out / image["file_name"]).is_file() for image in train["images"])
    per_class = provenance.query("split == 'train'").groupby("taxon_id").size()
    assert per_class.max() <= rules.max_train and per_class.min() >= rules.min_train
    return provenance


def test_every_fault_is_survived_and_no_gone_photo_ships(export, tmp_path):
    build_dataset(export, tmp_path / "plan", rules=RULES, images=False)
    planned = sorted(_provenance(tmp_path / "plan")["photo_id"])
    faults = {
        planned[0]: ["404"],
        planned[1]: ["403"],
        planned[2]: ["503"],
        planned[3]: ["429"],
        planned[4]: ["cut"],
        planned[5]: ["slow"],
        planned[6]: ["html", "html"],
        planned[7]: ["reset"],
        planned[8]: ["html"],
    }
    gone = {planned[0], planned[1], planned[6]}
    cache = tmp_path / "cache"
    stale = cache / str(planned[0]) / "medium.jpg.999.1.part"  # a killed run's part of a photo now gone
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a photo")
    with PhotoServer(export / "photos", faults=faults, slow_seconds=6.0) as server:
        settings = FetchSettings(url=server.url, cache=cache, **QUICK)
        result = build_dataset(export, tmp_path / "out", rules=RULES, fetch=settings, workers=2)
        counts, log_length, connections = server.counts(), len(server.log), server.connections
        provenance = _check_release(tmp_path / "out")
        assert not gone & set(provenance["photo_id"])
        fetch = result.audit["fetch"]
        assert fetch["requests"] == log_length
        assert fetch["fetched"] == counts["photo"] == fetch["requested"] - 3
        assert fetch["failed_by_reason"] == {"HTTP 403": 1, "HTTP 404": 1, "not an image": 1}
        assert fetch["retries_by_reason"] == {
            "HTTP 429": 1, "HTTP 503": 1, "connection reset": 1, "not an image": 2, "read timeout": 1,
            "short body": 1,
        }  # fmt: skip
        assert fetch["replaced"] + fetch["dropped"] == 3 and fetch["rounds"] >= 2 and fetch["from_cache"] == 0
        assert connections < fetch["requests"] // 4  # connections are kept alive and reused
        assert fetch["retried"] == fetch["requests"] - fetch["requested"]
        # Retry-After: 1 on the 503 is honoured (a lower bound only: a loaded machine may take longer).
        asked = [t for (photo_id, _), t in zip(server.log, server.times) if photo_id == planned[2]]
        assert len(asked) >= 2 and asked[1] - asked[0] >= 0.95
        assert "## Photos fetched" in (tmp_path / "out" / "audit.md").read_text()
        ledger = (cache / "fetch_failures.tsv").read_text().splitlines()
        assert sorted(int(line.split("\t")[0]) for line in ledger[1:]) == sorted(gone)
        assert not list(cache.rglob("*.part"))
        # A second build fetches nothing: the photos are cached and the ledger answers for the gone ones.
        again = build_dataset(export, tmp_path / "again", rules=RULES, fetch=settings, workers=2)
        assert len(server.log) == log_length
        assert again.audit["fetch"]["requests"] == 0 and again.audit["fetch"]["known_gone"] == 3
        # --retry-failed asks again for the gone photos only (the server now has them): the ledger empties.
        retry = dataclasses.replace(settings, retry_failed=True)
        healed = build_dataset(export, tmp_path / "healed", rules=RULES, fetch=retry, workers=2)
        assert healed.audit["fetch"]["requests"] == 3 and healed.audit["fetch"]["fetched"] == 3
        assert (cache / "fetch_failures.tsv").read_text().count("\n") == 1  # the header alone
        assert set(_provenance(tmp_path / "healed")["photo_id"]) == set(planned)
    assert _digests(tmp_path / "again") == _digests(tmp_path / "out")
    # The release equals the local build of the export without the gone photos, read from the same files.
    local = _local_export_without(export, cache, gone, tmp_path / "local_export")
    build_dataset(local, tmp_path / "local", rules=RULES, workers=2)
    assert _digests(tmp_path / "local") == _digests(tmp_path / "out")
    local_audit, fetched_audit = _audit(tmp_path / "local"), _audit(tmp_path / "out")
    assert fetched_audit.pop("fetch") and local_audit == fetched_audit


def test_a_clean_fetch_equals_the_local_export_build(export, tmp_path):
    with PhotoServer(export / "photos") as server:
        settings = FetchSettings(url=server.url, cache=tmp_path / "cache", **QUICK)
        build_dataset(export, tmp_path / "out", rules=RULES, fetch=settings, workers=2)
    build_dataset(export, tmp_path / "local", rules=RULES, workers=2)
    assert _digests(tmp_path / "out") == _digests(tmp_path / "local")


def test_kill_9_mid_fetch_then_resume_fetches_only_what_is_missing(export, tmp_path):
    cache = tmp_path / "cache"
    with PhotoServer(export / "photos", delay=0.03) as server:
        command = [
            sys.executable, "-m", "inatcomp.cli", "build", str(export), str(tmp_path / "out"), "--preset", "inat2017",
            "--min-train", "2", "--max-train", "8", "--photo-url", server.url, "--photo-cache", str(cache),
            "--fetch-workers", "4", "--max-rps", "0", "--workers", "1",
        ]  # fmt: skip
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while len(list(cache.glob("*/medium.jpg"))) < 30 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        done_before = {int(p.parent.name) for p in cache.glob("*/medium.jpg")}
        for photo_id in done_before:  # every photo the kill left in the cache is whole
            with Image.open(cache / str(photo_id) / "medium.jpg") as image:
                image.load()
        asked_before = len(server.log)
        assert 30 <= len(done_before) < asked_before + 1
        server.delay = 0.0
        assert main([*command[3:], "--overwrite"]) == 0
        asked_again = {photo_id for photo_id, _ in server.log[asked_before:]}
    assert not asked_again & done_before  # nothing fetched twice
    assert not list(cache.rglob("*.part"))  # nothing half-written left
    provenance = _check_release(tmp_path / "out")
    assert set(provenance["photo_id"]) <= done_before | asked_again


def test_licenses_keep_only_the_named_licences(export, tmp_path):
    photos = pd.read_csv(export / "photos.csv", sep="\t")
    result = build_dataset(export, tmp_path / "out", rules=RULES, images=False, licenses=["cc0", "CC-BY"])
    shipped = photos.set_index("photo_id").loc[_provenance(tmp_path / "out")["photo_id"], "license"]
    assert set(shipped) <= {"CC0", "CC-BY"} and len(shipped) > 0
    left_out = int((~photos["license"].isin(["CC0", "CC-BY"])).sum())
    assert result.audit["removed"]["licence not in --licenses"] == {"photos": left_out}


def test_bad_fetch_options_are_one_line_errors(export, tmp_path, caplog):
    assert photo_url_template("open-data") == OPEN_DATA_URL
    bad = {
        "ftp://x/{photo_id}": "http",
        "http://x/a.jpg": "photo_id",
        "http://x/{id}": "only",
        "http:///{photo_id}": "no host",
    }
    for template, words in bad.items():
        with pytest.raises(ValueError, match=words):
            photo_url_template(template)
    code = main(["build", str(export), str(tmp_path / "o"), "--preset", "inat2017", "--photo-url", "s3://bucket"])
    assert code == 2 and "--photo-url" in caplog.text
    caplog.clear()
    code = main(["build", str(export), str(tmp_path / "o"), "--preset", "inat2017", "--photo-cache", str(tmp_path)])
    assert code == 2 and "--photo-cache and --retry-failed go with --photo-url" in caplog.text
    assert _retry_after("3") == 3.0 and _retry_after(None) == 0.0 and _retry_after("soon") == 0.0
    assert _retry_after("nan") == 0.0 and _retry_after("inf") == 0.0 and _retry_after("-5") == 0.0
    for bad in (dict(max_attempts=0), dict(total_timeout=0), dict(read_timeout=float("nan")), dict(workers=0)):
        with pytest.raises(ValueError):
            FetchSettings(url=OPEN_DATA_URL, cache=tmp_path, **bad).check()
    assert 0 < _retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 31


def test_the_ledger_skips_a_line_cut_by_a_kill(tmp_path):
    ledger = FailureLedger(tmp_path)
    ledger.add(7, "medium", "http://x/7", "404", 1, "HTTP 404")
    with open(tmp_path / "fetch_failures.tsv", "a") as handle:
        handle.write("8\tmedium\thttp://x/8\t40")  # cut mid-line
    reread = FailureLedger(tmp_path)
    assert reread.gone("medium") == {7}
    reread.add(9, "medium", "http://x/9", "403", 1, "HTTP 403")  # starts a line of its own after the cut one
    assert FailureLedger(tmp_path).gone("medium") == {7, 9}
    reread.forget([7], "medium")
    assert FailureLedger(tmp_path).gone("medium") == {9}


def test_a_trickle_is_cut_by_the_total_timeout_and_an_endless_body_is_refused(export, tmp_path):
    ids = sorted(int(p.name) for p in (export / "photos").iterdir())[:3]
    with PhotoServer(export / "photos", faults={ids[0]: ["trickle"], ids[1]: ["huge"]}) as server:
        settings = FetchSettings(url=server.url, cache=tmp_path, **{**QUICK, "total_timeout": 3.0}, max_bytes=10**6)
        fetcher = PhotoFetcher(settings)
        failed = fetcher.fetch([(photo_id, "jpg") for photo_id in ids])
        fetcher.close()
    assert failed == {ids[1]}  # the trickled photo came whole on the second request
    assert fetcher.report.retries == {"total timeout": 1}
    assert fetcher.report.failed == {"body over 1,000,000 bytes": 1}
    assert sorted(p.parent.name for p in tmp_path.glob("*/medium.jpg")) == sorted(str(i) for i in (ids[0], ids[2]))


def test_transient_give_ups_are_not_ledgered_and_an_outage_stops_the_fetch(export, tmp_path):
    ids = sorted(int(p.name) for p in (export / "photos").iterdir())[:12]
    quick = {**QUICK, "max_attempts": 2, "max_give_ups_in_a_row": 5, "workers": 2}
    with PhotoServer(export / "photos", faults={ids[0]: ["429", "429"]}) as server:
        fetcher = PhotoFetcher(FetchSettings(url=server.url, cache=tmp_path / "a", **quick))
        assert fetcher.fetch([(photo_id, "jpg") for photo_id in ids[:3]]) == {ids[0]}
        fetcher.close()
    assert fetcher.report.failed == {"gave up after 2 attempts": 1}
    assert not (tmp_path / "a" / "fetch_failures.tsv").exists()  # nothing showed it gone: a rerun asks again
    with PhotoServer(export / "photos", faults={photo_id: ["429", "429"] for photo_id in ids}) as server:
        fetcher = PhotoFetcher(FetchSettings(url=server.url, cache=tmp_path / "b", **quick))
        with pytest.raises(FetchAbortedError, match="photos in a row failed 2 times each .* a rerun continues"):
            fetcher.fetch([(photo_id, "jpg") for photo_id in ids])
        fetcher.close()
        assert len(server.log) < 2 * len(ids)  # it stopped before asking for every photo
    assert not (tmp_path / "b" / "fetch_failures.tsv").exists()


def test_a_failed_write_leaves_no_part_file(tmp_path):
    fetcher = PhotoFetcher(FetchSettings(url=OPEN_DATA_URL, cache=tmp_path))
    (tmp_path / "5" / "medium.jpg").mkdir(parents=True)  # the target is a folder: the rename fails
    with pytest.raises(OSError):
        fetcher._write(fetcher.path(5, "jpg"), b"photo")
    assert not list(tmp_path.rglob("*.part"))
    fetcher.close()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(caplog):
    terminal = _Terminal()
    bar = Progress("fetch", 4, stream=terminal)
    bar.add(done=1, size=2_000_000, retries=2)
    bar.add(done=1, failures=1)
    bar.show(final=True)
    text = terminal.getvalue()
    assert text.startswith("\r[############............] fetch 2/4 (") and text.endswith("\n")
    assert "2.0 MB, 2 retries, 1 failed, ETA" in text
    caplog.set_level("INFO")
    Progress("fetch", 3, stream=io.StringIO()).show(final=True)
    assert "fetch 0/3 (0/s, 0.0 MB, 0 retries, 0 failed, ETA ?)" in caplog.text
