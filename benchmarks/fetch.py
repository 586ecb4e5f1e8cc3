"""Photo fetch speed: ≥ 1,000 photos/s with 64 workers from a loopback server, and the client's CPU per 1,000 photos.

A synthetic export's photos are served from memory by ``benchmarks.photo_server`` in another process (so the
server's CPU is not the client's), and :class:`inatcomp.build.fetch.PhotoFetcher` fetches every one into an
empty cache: the requests, the Content-Length check, the decode check and the atomic writes, as a build does.
On a real link the rate is bound by the network and the bucket; here it measures the client's own cost.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Result, cpu_seconds, run_script
from inatcomp.build.export import read_columns
from inatcomp.build.fetch import FetchSettings, PhotoFetcher
from inatcomp.world.synth import SynthConfig, write_export

ROOT = Path(__file__).resolve().parents[1]
#: The goal's rate and worker count.
GOAL_RATE = 1000.0
WORKERS = 64


def measure(
    photos: int, *, workers: int = WORKERS, image_size: int = 128, cache_roots: tuple[str | None, ...] = (None,)
) -> list[dict[str, float]]:
    """Fetch ``photos`` synthetic photos from a loopback server in another process, once per cache root.

    Args:
        photos: How many photos.
        workers: Concurrent requests.
        image_size: Long side of the synthetic photos.
        cache_roots: Folders an empty cache goes under, one fetch each (None: the temporary folder, on disk).

    Returns:
        Per cache root: ``photos``, ``seconds``, ``rate`` (photos/s), ``cpu_per_1000`` (the client's CPU
        seconds per 1,000 photos, all threads) and ``megabytes``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        write_export(export, SynthConfig(species=max(1, photos // 20), photos=photos, seed=0, image_size=image_size))
        table = read_columns(next(export.glob("photos.*")), "photos", ["photo_id", "extension"])
        wanted = list(zip(table["photo_id"].to_pylist(), table["extension"].to_pylist()))
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.photo_server", str(export / "photos")],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,  # `-m benchmarks.photo_server` is found from the repository root, as `make bench` runs it
        )
        try:
            url = server.stdout.readline().strip()
            return [_fetch_all(url, wanted, workers, root) for root in cache_roots]
        finally:
            server.kill()
            server.wait()


def _fetch_all(url: str, wanted: list[tuple[int, str]], workers: int, cache_root: str | None) -> dict[str, float]:
    """Fetch every photo into an empty cache under ``cache_root``; the figures of :func:`measure`."""
    with tempfile.TemporaryDirectory(dir=cache_root) as cache:
        settings = FetchSettings(url=url, cache=Path(cache) / "cache", workers=workers, max_rps=0, max_attempts=3)
        fetcher = PhotoFetcher(settings)
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        failed = fetcher.fetch(wanted)
        seconds = time.perf_counter() - start
        cpu = cpu_seconds(cpu_before)["cpu"]
        fetcher.close()
    if failed or fetcher.report.fetched != len(wanted):
        raise RuntimeError(f"the benchmark's fetch failed for {len(failed)} photos: {fetcher.report.as_dict()}")
    return {
        "photos": len(wanted),
        "seconds": seconds,
        "rate": len(wanted) / seconds,
        "cpu_per_1000": cpu / len(wanted) * 1000,
        "megabytes": fetcher.report.bytes / 1e6,
    }


def run(*, quick: bool = False) -> list[Result]:
    """Measure the goal; ``quick`` uses fewer photos (for smoke runs, not for the record)."""
    photos = 600 if quick else 6000
    # The same again in memory (tmpfs), when there is one: the client's own cost without the file system's.
    figures, *rest = measure(photos, cache_roots=(None, "/dev/shm") if os.path.isdir("/dev/shm") else (None,))
    memory = rest[0] if rest else None
    in_memory = (
        f"; cache in memory: {memory['rate']:,.0f} photos/s, {memory['cpu_per_1000']:.2f} CPU s per 1,000"
        if memory
        else ""
    )
    return [
        Result(
            goal=f"fetch ≥ {GOAL_RATE:,.0f} photos/s with {WORKERS} workers from a loopback server",
            figure=(
                f"{figures['rate']:,.0f} photos/s ({figures['photos']:,} photos, {figures['megabytes']:.1f} MB); "
                f"client CPU {figures['cpu_per_1000']:.2f} s per 1,000 photos (cache on disk){in_memory}"
            ),
            ratio=figures["rate"] / GOAL_RATE,
            met=figures["rate"] >= GOAL_RATE,
        )
    ]


def main() -> None:
    """Print the result."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
