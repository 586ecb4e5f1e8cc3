"""Test-time augmentation speed, and the memory of ensembling and submitting at iNat2018 test size.

Goals:

* ten-crop TTA through :func:`inatcomp.predict.engine.predict` costs at most 1.25× the floor: one reduced-scale decode
  per image plus ten forward passes of a batch of the same size (measured side by side, with the model as
  predict runs it: BatchNorm folded into the convolutions, :func:`inatcomp.models.freezing.fold_batchnorm`; same
  batches);
* and runs at least 1.5× faster than the naive pipeline that opens and decodes the image for each view and
  transforms it with torchvision (``Resize`` of the shorter side, then the ``FiveCrop``-style crop, mirror,
  ``ToTensor``, ``Normalize``) and runs the checkpoint's model as it loads (``model.eval()``). The naive pipeline
  also runs with the folded model, to show how much of the speed-up is decoding once and how much is folding.

resnet10t (random weights, 1000 classes) at 224 px under bf16 autocast (:data:`AMP`) on 500–800 px generated
JPEGs, on the CPU, in one process
(no loader workers for any of the three, so they compare like for like). Each pipeline runs twice, interleaved,
and keeps its faster run.

With ``memory=True`` (``python -m benchmarks.tta --memory``), a 149,394 × 8,142 float16 prediction folder
(2.4 GB) and a row- and column-permuted copy are generated, and the peak resident memory of ``inatcomp
ensemble`` of the two and of ``inatcomp submit`` is measured in child processes (goal: under 4 GB each). It needs
about 5 GB of disk and a few minutes, so ``make bench`` leaves it out.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result

_logger = logging.getLogger(__name__)

CROP = 224
VIEWS = 10
BATCH = 16
#: The model runs under bf16 autocast in all three pipelines (how one predicts on a CPU with bf16 support;
#: float32 forward passes are 2-3x slower and dwarf every difference in decoding).
AMP = "bf16"


def _autocast() -> Any:
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=AMP == "bf16")


def _make_images(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs of 500–800 px (smooth shapes plus noise) and a test JSON listing them."""
    import cv2

    rng = np.random.default_rng(seed)
    images = []
    (root / "test").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        long_side = int(rng.integers(500, 801))
        short_side = int(long_side * rng.uniform(0.6, 1.0))
        width, height = (long_side, short_side) if i % 3 else (short_side, long_side)
        base = cv2.resize(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), (width, height))
        noise = rng.normal(0, 12, (height, width, 3))
        image = np.clip(base + noise, 0, 255).astype(np.uint8)
        name = f"test/{i}.jpg"
        cv2.imwrite(str(root / name), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i, "width": width, "height": height, "file_name": name})
    data = root / "test.json"
    data.write_text(json.dumps({"images": images, "categories": [{"id": c, "name": str(c)} for c in range(1000)]}))
    return data


def _checkpoint(root: Path) -> Path:
    import torch

    from inatcomp.models.checkpoints import save_checkpoint
    from inatcomp.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=1000)
    metadata = {
        "model": "resnet10t",
        "num_classes": 1000,
        "category_ids": list(range(1000)),
        "data_config": {
            "input_size": [3, CROP, CROP],
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "crop_pct": 0.875,
            "interpolation": "bilinear",
        },
    }
    save_checkpoint(root / "run" / "best", model, metadata)
    return root / "run"


def _floor(model: object, paths: list[str]) -> float:
    """One reduced-scale decode per image and ten forward passes of each batch's size: seconds."""
    import torch
    from PIL import Image

    from inatcomp.predict.tta import TTAMode, decode_factor, view_boxes

    x = torch.randn(BATCH * VIEWS, 3, CROP, CROP).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    for first in range(0, len(paths), BATCH):
        batch = paths[first : first + BATCH]
        for path in batch:
            with Image.open(path) as im:
                views = view_boxes(TTAMode.TEN_CROP, *im.size, CROP)
                factor = decode_factor(views, *im.size, CROP)
                if factor >= 2:
                    im.draft("RGB", (math.ceil(im.size[0] / factor), math.ceil(im.size[1] / factor)))
                np.asarray(im.convert("RGB"))
        with torch.inference_mode(), _autocast():
            model(x[: len(batch) * VIEWS])  # type: ignore[operator]
    return time.perf_counter() - start


def _naive(model: object, paths: list[str]) -> float:
    """Decode and transform each view separately (PIL + torchvision), then the same forward passes: seconds."""
    import torch
    import torchvision.transforms.functional as F  # noqa: N812 (torchvision's idiom)
    from PIL import Image

    resize = int(CROP / 0.875)
    start = time.perf_counter()
    for first in range(0, len(paths), BATCH):
        tensors = []
        for path in paths[first : first + BATCH]:
            for view in range(VIEWS):
                with Image.open(path) as im:
                    image = F.resize(im.convert("RGB"), resize, interpolation=F.InterpolationMode.BILINEAR)
                crop = F.five_crop(image, [CROP, CROP])[view % 5]
                if view >= 5:
                    crop = F.hflip(crop)
                tensors.append(F.normalize(F.to_tensor(crop), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        x = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), _autocast():
            model(x).float().softmax(dim=1).view(-1, VIEWS, 1000).mean(dim=1)  # type: ignore[operator]
    return time.perf_counter() - start


def _speed(quick: bool) -> list[Result]:
    import torch

    from inatcomp.data import CompetitionDataset
    from inatcomp.models.freezing import fold_batchnorm
    from inatcomp.predict.engine import load_model, predict

    count = 48 if quick else 200
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = _make_images(root, count)
        run = _checkpoint(root)
        model, _ = load_model(run)
        folded = fold_batchnorm(model)[0].to(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
        dataset = CompetitionDataset(data)
        paths = [dataset.path(i) for i in range(len(dataset))]
        times = dict.fromkeys(("ours", "floor", "naive", "naive, folded"), math.inf)
        _floor(model, paths[:BATCH])  # warm-up (allocator, oneDNN kernels)
        _floor(folded, paths[:BATCH])
        for rep in range(2):
            start = time.perf_counter()
            out = root / f"p{rep}.pred"
            predict(checkpoint=run, data=data, tta="ten-crop", out=out, batch_size=BATCH, device="cpu", amp=AMP)
            times["ours"] = min(times["ours"], time.perf_counter() - start)
            times["floor"] = min(times["floor"], _floor(folded, paths))
            times["naive"] = min(times["naive"], _naive(model, paths))
            times["naive, folded"] = min(times["naive, folded"], _naive(folded, paths))
    over_floor = times["ours"] / times["floor"]
    speedup = times["naive"] / times["ours"]
    figure = (
        f"{count} images × 10 views: ours {times['ours']:.1f} s ({count / times['ours']:.1f} images/s), floor "
        f"{times['floor']:.1f} s, naive {times['naive']:.1f} s, naive with the folded model "
        f"{times['naive, folded']:.1f} s (model under {AMP} autocast)"
    )
    return [
        Result(
            goal="ten-crop TTA ≤ 1.25× the floor (one decode + 10 forward passes)",
            figure=figure,
            ratio=over_floor / 1.25,
            met=over_floor <= 1.25,
        ),  # fmt: skip
        Result(
            goal="ten-crop TTA ≥ 1.5× faster than decoding and transforming each view",
            figure=(
                f"{speedup:.2f}× faster than naive ({times['naive, folded'] / times['ours']:.2f}× from decoding once, "
                f"{times['naive'] / times['naive, folded']:.2f}× from folding BatchNorm); {over_floor:.2f}× the floor"
            ),
            ratio=speedup / 1.5,
            met=speedup >= 1.5,
        ),  # fmt: skip
    ]


def _write_big(path: Path, image_ids: np.ndarray, category_ids: np.ndarray, seed: int) -> None:
    """A prediction folder of random probability rows, written in chunks."""
    from inatcomp.formats.predictions import PredictionWriter

    rng = np.random.default_rng(seed)
    with PredictionWriter(path, image_ids=image_ids, category_ids=category_ids) as writer:
        for start in range(0, len(image_ids), 4096):
            rows = rng.random((min(4096, len(image_ids) - start), len(category_ids)), dtype=np.float32) ** 8
            writer.write(rows / rows.sum(axis=1, keepdims=True))


def _peak_rss_mb(args: list[str]) -> tuple[float, float]:
    """Run ``inatcomp ARGS`` in a child process: (peak resident MB, seconds)."""
    code = (
        "import sys\nfrom benchmarks.common import peak_rss_mb\nfrom inatcomp.cli import main\n"
        "code = main(sys.argv[1:])\nprint(int(peak_rss_mb() * 1024))\nsys.exit(code)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - start


def _memory(n_images: int = 149_394, n_classes: int = 8_142) -> list[Result]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        image_ids, category_ids = rng.permutation(n_images) + 1, np.arange(n_classes) * 3
        start = time.perf_counter()
        _write_big(root / "a.pred", image_ids, category_ids, 1)
        rows, cols = rng.permutation(n_images), rng.permutation(n_classes)
        _write_big(root / "b.pred", image_ids[rows], category_ids[cols], 2)
        _logger.info("generated two %d × %d files in %.0f s", n_images, n_classes, time.perf_counter() - start)
        ens_mb, ens_s = _peak_rss_mb(["ensemble", str(root / "a.pred"), str(root / "b.pred"), "--out",
                                      str(root / "ab.pred"), "--mode", "mean-logit"])  # fmt: skip
        sub_mb, sub_s = _peak_rss_mb(["submit", str(root / "ab.pred"), "--format", "inat2018", "--out",
                                      str(root / "sub.csv")])  # fmt: skip
        val_mb, val_s = _peak_rss_mb(["validate", str(root / "sub.csv"), "--against", str(_test_json(root, image_ids,
                                      category_ids))])  # fmt: skip
        labels = _test_json(root, image_ids, category_ids, labels=rng.choice(category_ids, size=n_images))
        score_mb, score_s = _peak_rss_mb(["score-pred", str(root / "ab.pred"), "--labels", str(labels)])
    size = f"{n_images:,} × {n_classes:,} float16 ({n_images * n_classes * 2 / 1e9:.1f} GB)"
    peak = max(ens_mb, sub_mb, val_mb, score_mb)
    return [
        Result(
            goal=f"ensemble (2 members, one permuted), submit and score-pred of {size} within 4 GB",
            figure=f"peak RSS ensemble {ens_mb:,.0f} MB ({ens_s:.0f} s), submit {sub_mb:,.0f} MB ({sub_s:.0f} s), "
            f"validate --against {val_mb:,.0f} MB ({val_s:.0f} s), score-pred {score_mb:,.0f} MB ({score_s:.0f} s)",
            ratio=peak / 4096,
            met=peak <= 4096,
        ),  # fmt: skip
    ]


def _test_json(
    root: Path, image_ids: np.ndarray, category_ids: np.ndarray, *, labels: np.ndarray | None = None
) -> Path:
    images = [{"id": int(i), "width": 1, "height": 1, "file_name": f"{i}.jpg"} for i in image_ids]
    data: dict = {"images": images, "categories": [{"id": int(c)} for c in category_ids]}
    if labels is not None:
        data["annotations"] = [
            {"id": int(i), "image_id": int(i), "category_id": int(c)} for i, c in zip(image_ids, labels)
        ]
    path = root / ("val.json" if labels is not None else "test.json")
    path.write_text(json.dumps(data))
    return path


def run(*, quick: bool = False, memory: bool = False) -> list[Result]:
    """Measure the speed goals (and, with ``memory``, the memory goal); ``quick`` uses fewer images."""
    results = _speed(quick)
    if memory:
        results += _memory()
    return results


def main() -> None:
    """Print the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", action="store_true", help="also the 2.4 GB ensemble/submit memory check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("inatcomp").setLevel(logging.WARNING)
    for result in run(quick=args.quick, memory=args.memory):
        result.log()


if __name__ == "__main__":
    main()
