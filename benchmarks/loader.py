"""Loader speed: our train pipeline at ≥ 2.5× the classic one, images/s per core at 224 px.

Ours: :class:`inatcomp.data.CompetitionDataset` with :class:`inatcomp.data.TrainPreset` (the crop is
sampled before decoding, the JPEG decoded at the smallest DCT scale that keeps 224 source pixels across
the crop, then OpenCV/albumentations resize, flip, colour jitter and normalisation). Classic: PIL full
decode + torchvision ``RandomResizedCrop(224)`` + flip + ``ColorJitter(0.4, 0.4, 0.4)`` + ``ToTensor`` +
``Normalize``, as in the 2018 baseline. Both read the same 800 px-long-side synthetic JPEGs in the same
process, one thread each, in alternating rounds so that both see the same machine state; the best round
of each counts.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import torch
from PIL import Image
from torchvision import transforms

from benchmarks.common import Result, run_script
from inatcomp.data import CompetitionDataset, TrainPreset
from inatcomp.world.synth import SynthConfig, write_export

_GOAL = 2.5


def _write_json(export: Path) -> Path:
    """A competition JSON listing the export's photos (one class: only the reading speed matters)."""
    files = sorted(export.glob("photos/*/medium.jpg"))
    images, annotations = [], []
    for i, path in enumerate(files):
        with Image.open(path) as im:
            width, height = im.size
        images.append({"id": i, "width": width, "height": height, "file_name": str(path.relative_to(export))})
        annotations.append({"id": i, "image_id": i, "category_id": 0})
    out = export / "bench.json"
    out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 0}]}))
    return out


def _rate(step: Callable[[int], object], count: int) -> float:
    start = time.perf_counter()
    for i in range(count):
        step(i)
    return count / (time.perf_counter() - start)


def run(*, quick: bool = False) -> list[Result]:
    """Measure both pipelines side by side; ``quick`` uses fewer images and rounds (smoke runs only)."""
    photos, rounds = (80, 2) if quick else (300, 3)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        write_export(export, SynthConfig(species=30, photos=photos, seed=0, image_size=800))
        json_path = _write_json(export)
        ours = CompetitionDataset(json_path, export, transform=TrainPreset(img_size=224, seed=0))
        paths = [ours.path(i) for i in range(len(ours))]
        classic = transforms.Compose(
            [
                transforms.RandomResizedCrop(224),
                transforms.RandomHorizontalFlip(),
                transforms.ColorJitter(0.4, 0.4, 0.4),
                transforms.ToTensor(),
                transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ]
        )

        def classic_step(i: int) -> torch.Tensor:
            with Image.open(paths[i]) as im:
                return classic(im.convert("RGB"))

        def ours_step(i: int) -> object:
            return ours[i]

        count = len(ours)
        ours_step(0), classic_step(0)  # warm the page cache and the libraries
        best = {"ours": 0.0, "classic": 0.0}
        for _ in range(rounds):
            best["classic"] = max(best["classic"], _rate(classic_step, count))
            best["ours"] = max(best["ours"], _rate(ours_step, count))
    ratio = best["ours"] / best["classic"]
    return [
        Result(
            goal=f"train loader at 224 px from 800 px JPEGs ≥ {_GOAL}× the classic PIL + torchvision pipeline",
            figure=(
                f"{best['ours']:.0f} images/s vs {best['classic']:.0f} images/s per core "
                f"({count} images, best of {rounds} rounds)"
            ),
            ratio=ratio,
            met=ratio >= _GOAL,
        )
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
