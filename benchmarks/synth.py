"""Synthetic export speed: metadata for 1,000,000 photos in under 30 s; images at ≥ 500/s at 128 px.

The image rate is measured with all CPUs and, side by side in the same run, with one process, so the
parallel speed-up is a ratio on the same machine at the same moment.
"""

from __future__ import annotations

import tempfile
import time

from benchmarks.common import Result, run_script
from inatcomp.world.synth import SynthConfig, write_export


def run(*, quick: bool = False) -> list[Result]:
    """Measure both goals; ``quick`` uses smaller sizes (for smoke runs, not for the record)."""
    photos = 100_000 if quick else 1_000_000
    images = 600 if quick else 4000
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_export(tmp, SynthConfig(species=5000, photos=photos, seed=0, images=False))
        metadata_seconds = time.perf_counter() - start
    rates = {}
    for workers in (None, 1):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_export(tmp, SynthConfig(species=500, photos=images, seed=0, image_size=128, workers=workers))
            rates[workers] = images / (time.perf_counter() - start)
    bound = 30.0 * photos / 1_000_000
    return [
        Result(
            goal=f"synth metadata for {photos:,} photos in under {bound:.0f} s",
            figure=f"{metadata_seconds:.1f} s ({photos / metadata_seconds:,.0f} photos/s)",
            ratio=metadata_seconds / bound,
            met=metadata_seconds <= bound,
        ),
        Result(
            goal="synth images at 128 px at ≥ 500 images/s (all CPUs)",
            figure=f"{rates[None]:.0f} images/s; one process {rates[1]:.0f}/s (speed-up {rates[None] / rates[1]:.2f}×)",
            ratio=rates[None] / 500.0,
            met=rates[None] >= 500.0,
        ),
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
