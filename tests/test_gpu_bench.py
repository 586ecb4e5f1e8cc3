"""The GPU benchmark (benchmarks/gpu.py): skipped cleanly without CUDA, and its code path alive on the CPU."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the real benchmark")
def test_without_cuda_it_says_so_and_measures_nothing(caplog):
    caplog.set_level("INFO")
    assert gpu.main([]) == []
    assert "no CUDA device" in caplog.text


@pytest.mark.slow
def test_the_same_code_runs_on_the_cpu():
    results = gpu.main(["--device", "cpu", "--quick"])
    assert [r.goal for r in results] == [
        "training images/s ≥ 0.95 of the compute floor", "training images/s ≥ timm's train.py loop",
        "centre-crop prediction images/s ≥ 0.7 of the compute floor",
        "prediction images/s ≥ 1.5× timm's validate.py loop",
        "ten-crop prediction images/s ≥ 0.7 of the floor / 10",
    ]  # fmt: skip
    for result in results:
        assert result.ratio > 0 and result.met == (result.ratio >= 1.0)
        assert "images/s" in result.figure and "on cpu" in result.figure
    assert "floor" in results[0].figure and "loader alone" in results[0].figure and "timm" in results[2].figure


def test_imagefolder_view_links_each_image_under_its_category(tmp_path, tiny_dataset):
    train_json = tiny_dataset(tmp_path / "data", names=["Aa aa", "Bb bb"], per_class=3)
    folder = gpu.imagefolder_view(train_json, train_json.parent, tmp_path / "folder")
    classes = sorted(p.name for p in folder.iterdir())
    assert len(classes) == 2 and all(len(list((folder / c).iterdir())) == 3 for c in classes)
    assert all(p.is_symlink() and p.resolve().is_file() for p in folder.glob("*/*"))
