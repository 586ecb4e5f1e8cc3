"""Loader speed: our train pipeline at ≥ 2.5× the classic one, images/s per core at 224 px.

Ours: :class:`inatcomp.data.CompetitionDataset` with :class:`inatcomp.data.TrainPreset` (the crop is
sampled before decoding, the JPEG decoded at the smallest DCT scale that keeps 224 source pixels across
the crop, then OpenCV/albumentations resize, flip, colour jitter and normalisation). Classic: PIL full
decode + torchvision ``RandomResizedCrop(224)`` + flip + ``ColorJitter(0.4, 0.4, 0.4)`` + ``ToTensor`` +
``Normalize``, as in the 2018 baseline. Both read the same 800 px-long-side synthetic JPEGs in the same
process, one thread each, in alternating rounds so that both see the same machine state; the median round (by
the ratio of the two) counts.

The pipeline's own figures (issue 32), on the same files and transform (uint8 crops where the code has them):
its efficiency, the DataLoader's images/s with W workers over W × one core's in-process images/s (goal ≥ 0.8
with 2 workers: the loader's hand-over costs little); the bytes per image crossing from the workers to the main
process (goal: the uint8 crop, 224 × 224 × 3); and the transform's cost per image over PIL's reduced-scale
decode of the same file (goal ≤ 3×); and the same efficiency for prediction's loader (centre-crop and ten-crop views,
uint8, one decode per image). Each efficiency is measured beside torch's own hand-over (a fresh shared-memory block
per batch) in the same rounds. Run against another checkout (``PYTHONPATH=/other/tree python -m
benchmarks.loader``) it measures that tree's code, e.g. main's float32 crops before the uint8 path.
"""

from __future__ import annotations

import inspect
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import torch
from PIL import Image
from torchvision import transforms

from benchmarks.common import Result, run_script
from inatcomp.data import CompetitionDataset, TrainPreset, create_loader
from inatcomp.predict.tta import TTAMode, _collate, _ViewDataset
from inatcomp.world.synth import SynthConfig, write_export

_GOAL = 2.5
#: Pipeline efficiency goal with :data:`_WORKERS` loader workers.
_EFFICIENCY_GOAL = 0.8
_WORKERS = 2
#: The transform's cost over PIL's reduced-scale decode of the same file.
_DECODE_GOAL = 3.0
_CROP_BYTES = 224 * 224 * 3


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


def _train_preset() -> TrainPreset:
    """The train preset, returning uint8 crops where this checkout's preset can (issue 32), else float32."""
    if "uint8" in inspect.signature(TrainPreset).parameters:
        return TrainPreset(img_size=224, seed=0, uint8=True)
    return TrainPreset(img_size=224, seed=0)


def _loader_rate(
    dataset: Any, *, workers: int, batches: int, reuse: bool = True, batch_size: int = 32, collate: Any = None
) -> tuple[float, Any]:
    """Images/s of a DataLoader with ``workers`` over ``batches`` batches (after the first), and the bytes per item
    of the first batch's first tensor (a crop, or a view).

    ``reuse=False``: torch's collate, a fresh shared-memory block per batch (where this checkout can say so).
    """
    indices = [i % len(dataset) for i in range(batch_size * (batches + 1))]
    known = inspect.signature(create_loader).parameters
    options = {"reuse_batch_memory": reuse} if "reuse_batch_memory" in known else {}
    loader = create_loader(dataset=dataset, batch_size=batch_size, sampler=indices, num_workers=workers,  # type: ignore[arg-type]
                           prefetch_factor=4 if workers else None, collate_fn=collate, **options)  # fmt: skip
    iterator = iter(loader)
    first = next(iterator)[0]  # the workers have started
    per_item = first.element_size() * first[0].numel()
    del first  # its slot goes back to its worker for the timed batches
    start, count = time.perf_counter(), 0
    for batch in iterator:
        count += len(batch[1])  # a Sample's labels, or prediction's view counts: one per image
    return count / (time.perf_counter() - start), per_item


def _side_by_side(
    alone: Callable[[], float], loaded: Callable[[bool], tuple[float, int]], rounds: int
) -> tuple[float, float, float, float, float, int]:
    """Efficiency with reused batch memory and with torch's fresh blocks, their images/s, one core's, bytes per item.

    Each round measures one core in process, then the loader both ways, side by side; the median round (by
    efficiency) counts: this machine's speed drifts between rounds.
    """
    measured = []
    for _ in range(rounds):
        one_core = alone()
        (ours, per_item), (fresh, _) = loaded(True), loaded(False)
        measured.append((ours / (_WORKERS * one_core), fresh / (_WORKERS * one_core), ours, fresh, one_core, per_item))
    return sorted(measured, key=lambda row: row[0])[len(measured) // 2]


def _prediction_result(paths: list[str], mode: TTAMode, *, quick: bool) -> Result:
    """The efficiency of prediction's loader (``mode``'s views at 224 px, batches of 16 images) with 2 workers."""
    batches, rounds = (6, 1) if quick else (100, 5)
    views = _ViewDataset(paths, mode=mode, crop_size=224, crop_pct=0.875, interpolation=cv2.INTER_LINEAR, views=None)
    views[0]
    count = len(views)
    efficiency, fresh_efficiency, ours, fresh, one_core, _ = _side_by_side(
        lambda: _rate(lambda i: views[i % count], count),
        lambda reuse: _loader_rate(
            views, workers=_WORKERS, batches=batches, reuse=reuse, batch_size=16, collate=_collate
        ),  # fmt: skip
        rounds,
    )
    return Result(
        goal=f"prediction loader ({mode.value} views) efficiency with {_WORKERS} workers ≥ {_EFFICIENCY_GOAL}",
        figure=(
            f"{ours:.0f} images/s with {_WORKERS} workers vs {one_core:.0f} images/s in process on one core "
            f"({16 * batches} images, median of {rounds} rounds); torch's fresh blocks: {fresh:.0f} images/s "
            f"({fresh_efficiency:.2f})"
        ),
        ratio=efficiency,
        met=efficiency >= _EFFICIENCY_GOAL,
    )


def _reduced_decode_rate(paths: list[str], count: int) -> float:
    """PIL's decode of the files at the reduced scale that keeps a 256 px shorter side (the eval decode)."""

    def step(i: int) -> None:
        with Image.open(paths[i % len(paths)]) as im:
            factor = min(im.size) / 256
            im.draft("RGB", (math.ceil(im.width / factor), math.ceil(im.height / factor)))
            im.load()

    return _rate(step, count)


def pipeline_results(json_path: Path, export: Path, *, quick: bool) -> list[Result]:
    """Pipeline efficiency with 2 workers, bytes per image from the workers, transform cost over a reduced decode."""
    dataset = CompetitionDataset(json_path, export, transform=_train_preset())
    paths = [dataset.path(i) for i in range(len(dataset))]
    count = len(dataset)
    batches, rounds = (6, 1) if quick else (40, 5)
    dataset[0]
    decode = max(_reduced_decode_rate(paths, count) for _ in range(2))
    efficiency, fresh_efficiency, loaded, fresh, in_process, per_image = _side_by_side(
        lambda: _rate(lambda i: dataset[i % count], count),
        lambda reuse: _loader_rate(dataset, workers=_WORKERS, batches=batches, reuse=reuse),
        rounds,
    )
    cost = decode / in_process
    dtype = "uint8" if per_image <= _CROP_BYTES else "float32"
    return [
        Result(
            goal=f"pipeline efficiency with {_WORKERS} workers ≥ {_EFFICIENCY_GOAL}",
            figure=(
                f"DataLoader {loaded:.0f} images/s with {_WORKERS} workers vs {in_process:.0f} images/s in "
                f"process on one core ({32 * batches} images, median of {rounds} rounds); torch's fresh "
                f"shared-memory block per batch in the same rounds: {fresh:.0f} images/s ({fresh_efficiency:.2f})"
            ),  # fmt: skip
            ratio=efficiency,
            met=efficiency >= _EFFICIENCY_GOAL,
        ),
        Result(
            goal="bytes per image from the workers = the uint8 crop (224 × 224 × 3)",
            figure=f"{per_image:,.0f} bytes per image ({dtype}) vs {_CROP_BYTES:,} for the uint8 crop",
            ratio=per_image / _CROP_BYTES,
            met=per_image <= _CROP_BYTES,
        ),
        Result(
            goal=f"train transform per image ≤ {_DECODE_GOAL:g}× PIL's reduced-scale decode of the same file",
            figure=f"{1e3 / in_process:.2f} ms per image vs {1e3 / decode:.2f} ms for the decode alone ({cost:.2f}×)",
            ratio=cost / _DECODE_GOAL,
            met=cost <= _DECODE_GOAL,
        ),
        *(_prediction_result(paths, mode, quick=quick) for mode in (TTAMode.CENTER, TTAMode.TEN_CROP)),
    ]


def run(*, quick: bool = False) -> list[Result]:
    """Measure both pipelines side by side; ``quick`` uses fewer images and rounds (smoke runs only)."""
    photos, rounds = (80, 1) if quick else (300, 5)
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
        # Each round runs both, one after the other; the median round (by ratio) counts, as in the rows below:
        # this machine's speed drifts between rounds, and the best of each alone can come from different ones.
        measured = []
        for _ in range(rounds):
            classic_rate = _rate(classic_step, count)
            ours_rate = _rate(ours_step, count)
            measured.append((ours_rate / classic_rate, ours_rate, classic_rate))
        ratio, ours_rate, classic_rate = sorted(measured)[len(measured) // 2]
        pipeline = pipeline_results(json_path, export, quick=quick)
    return [
        Result(
            goal=f"train loader at 224 px from 800 px JPEGs ≥ {_GOAL}× the classic PIL + torchvision pipeline",
            figure=(
                f"{ours_rate:.0f} images/s vs {classic_rate:.0f} images/s per core "
                f"({count} images, median of {rounds} rounds; rounds' ratios "
                f"{', '.join(f'{row[0]:.2f}' for row in measured)})"
            ),
            ratio=ratio,
            met=ratio >= _GOAL,
        ),
        *pipeline,
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
