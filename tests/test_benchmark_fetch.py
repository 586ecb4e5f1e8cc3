"""The fetch benchmark (benchmarks/fetch.py) at a tiny size: a loopback server in another process, every photo
fetched into an empty cache, the rate and the client's CPU reported."""

from __future__ import annotations

from benchmarks import fetch


def test_measure_fetches_every_photo_and_reports_rate_and_cpu():
    (figures,) = fetch.measure(120, workers=8, image_size=32)
    assert figures["photos"] == 120
    assert figures["rate"] > 0 and figures["seconds"] > 0
    assert 0 < figures["cpu_per_1000"] < 1000 and figures["megabytes"] > 0
