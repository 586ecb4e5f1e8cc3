"""The loader benchmark (benchmarks/loader.py): every row measured, quick, on real JPEGs and real workers."""

from __future__ import annotations

import pytest

from benchmarks import loader


@pytest.mark.slow
def test_quick_run_measures_every_row():
    results = loader.run(quick=True)
    assert [r.goal for r in results] == [
        "train loader at 224 px from 800 px JPEGs ≥ 2.5× the classic PIL + torchvision pipeline",
        "pipeline efficiency with 2 workers ≥ 0.8",
        "bytes per image from the workers = the uint8 crop (224 × 224 × 3)",
        "train transform per image ≤ 3× PIL's reduced-scale decode of the same file",
        "prediction loader (center views) efficiency with 2 workers ≥ 0.8",
        "prediction loader (ten-crop views) efficiency with 2 workers ≥ 0.8",
    ]
    assert all(r.ratio > 0 for r in results)
    assert results[2].ratio == 1.0 and results[2].met  # the uint8 crop crosses, not a float32 tensor
    for efficiency in (results[1], results[4], results[5]):
        assert "torch's fresh" in efficiency.figure and efficiency.met == (efficiency.ratio >= 0.8)
