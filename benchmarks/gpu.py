"""GPU throughput of training and prediction against timm's own training and validation loops.

What it measures, side by side in one process on one built release: ``inatcomp train`` (resnet50, 224 px, bf16
autocast, channels-last, loader workers, its ``train_images_per_s`` over an epoch after a warm-up epoch) against
the loop of timm's ``train.py`` built from timm's own parts (``timm.data.create_dataset`` on an ImageFolder view of
the same train images, ``create_loader`` with its GPU prefetcher and random-resized-crop/flip/colour-jitter
augmentation, the same model, SGD, bf16 autocast and channels-last, one optimizer step per batch; the images/s
of the same number of batches, synchronised at the end); and ``inatcomp predict --tta center`` against the loop of
timm's ``validate.py`` (``create_loader(is_training=False)``, eval mode, bf16, channels-last). timm's scripts
themselves are not in its wheel; these loops are what they run per batch. The rounds alternate (ours, timm's)
and the best round of each counts. Goal: ours ≥ timm's images/s, train and predict.

On a machine without CUDA it says so and exits 0, unless ``--device cpu`` asks for a (tiny) run of the same code
on the CPU, which the tests use to keep the script working.

    python -m benchmarks.gpu                 # on a GPU machine
    python -m benchmarks.gpu --device cpu --quick
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Result

__all__ = ["imagefolder_view", "main", "run"]

_logger = logging.getLogger(__name__)


def imagefolder_view(train_json: Path, images: Path, out: Path) -> Path:
    """``out/<category_id>/<file>``: symbolic links to a competition JSON's images, the layout timm reads."""
    from inatcomp.fileio import read_json

    data = read_json(train_json)
    label = {int(a["image_id"]): int(a["category_id"]) for a in data["annotations"]}
    for image in data["images"]:
        source = (images / image["file_name"]).resolve()
        target = out / f"{label[int(image['id'])]:05d}" / f"{int(image['id'])}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(source)
    return out


def _timm_train(folder: Path, *, model_name: str, classes: int, size: int, batch: int, steps: int, workers: int,
                device: Any) -> float:  # fmt: skip
    """Images/s of timm's train.py step loop over ``steps`` batches (after one warm-up pass of 3 batches)."""
    import timm
    import torch
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(folder), is_training=True)
    cuda = device.type == "cuda"
    loader = create_loader(dataset, input_size=(3, size, size), batch_size=batch, is_training=True,
                           num_workers=workers, use_prefetcher=cuda, device=device, pin_memory=cuda,
                           persistent_workers=workers > 0)  # fmt: skip
    model = timm.create_model(model_name, num_classes=classes).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def one_pass(limit: int) -> int:
        seen = 0
        for step, (inputs, targets) in enumerate(loader):
            if step >= limit:
                break
            inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = criterion(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(targets)
        if cuda:
            torch.cuda.synchronize()
        return seen

    one_pass(3)
    start = time.perf_counter()
    seen = one_pass(steps)
    return seen / (time.perf_counter() - start)


def _timm_validate(folder: Path, checkpoint_model: Any, *, size: int, batch: int, workers: int, device: Any) -> float:
    """Images/s of timm's validate.py loop (centre crop, eval, bf16, channels-last) over the folder."""
    import torch
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(folder))
    cuda = device.type == "cuda"
    loader = create_loader(dataset, input_size=(3, size, size), batch_size=batch, is_training=False,
                           num_workers=workers, use_prefetcher=cuda, device=device, pin_memory=cuda,
                           crop_pct=0.875)  # fmt: skip
    model = checkpoint_model.to(device).to(memory_format=torch.channels_last).eval()
    seen = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for inputs, _ in loader:
            inputs = inputs.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                model(inputs)
            seen += len(inputs)
    if cuda:
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def run(*, quick: bool = False, device: str | None = None) -> list[Result]:
    """Measure ours and timm's train and predict images/s; ``[]`` (and a log line) without CUDA."""
    import torch

    if device is None:
        if not torch.cuda.is_available():
            _logger.info("benchmarks.gpu: no CUDA device on this machine; the GPU benchmark needs one (skipped)")
            return []
        device = "cuda"
    torch_device = torch.device(device)
    from inatcomp.build import build_dataset
    from inatcomp.build.rules import Preset, rules_for
    from inatcomp.predict.engine import load_model, predict
    from inatcomp.train import resolve_config, train
    from inatcomp.world.synth import SynthConfig, write_export

    cpu = torch_device.type == "cpu"
    model_name = "resnet10t" if cpu else "resnet50"
    size, batch = (64, 16) if cpu else (224, 128)
    species, photos = (12, 600) if quick or cpu else (100, 12000)
    steps = 4 if cpu else 60
    rounds = 1 if quick or cpu else 3
    workers = 0 if cpu else min(12, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_export(root / "export", SynthConfig(species=species, photos=photos, seed=0, image_size=320))
        built = build_dataset(root / "export", root / "release", rules=rules_for(Preset.INAT2018), seed=0)
        train_json = root / "release" / "train2018.json"
        folder = imagefolder_view(train_json, root / "release", root / "imagefolder")
        classes = built.classes
        ours_train = timm_train = ours_predict = timm_predict = 0.0
        for round_ in range(rounds):
            config = resolve_config(overrides=dict(
                train=str(train_json), images=str(root / "release"), out=str(root / f"run{round_}"), model=model_name,
                img_size=size, batch_size=batch, epochs=2, max_steps_per_epoch=steps, workers=workers, lr=0.01,
                amp="bf16", channels_last=True, log_every=0, device=device,
            ))  # fmt: skip
            result = train(config)
            ours_train = max(ours_train, result.metrics[-1]["train_images_per_s"])  # the second epoch: warm
            timm_train = max(
                timm_train,
                _timm_train(
                    folder,
                    model_name=model_name,
                    classes=classes,
                    size=size,
                    batch=batch,
                    steps=steps,
                    workers=workers,
                    device=torch_device,
                ),
            )
            start = time.perf_counter()
            predict(checkpoint=result.run_dir / "last.safetensors", data=train_json, images=root / "release",
                          tta="center", out=root / f"pred{round_}", batch_size=batch, workers=workers, device=device,
                          channels_last=True, amp="bf16")  # fmt: skip
            n_images = sum(1 for _ in folder.glob("*/*"))  # the images timm's loop reads too
            ours_predict = max(ours_predict, n_images / (time.perf_counter() - start))
            model, _ = load_model(result.run_dir / "last.safetensors")
            timm_predict = max(
                timm_predict,
                _timm_validate(folder, model, size=size, batch=batch, workers=workers, device=torch_device),
            )
            _logger.info("round %d: train %.0f vs timm %.0f images/s; predict %.0f vs timm %.0f images/s", round_,
                         ours_train, timm_train, ours_predict, timm_predict)  # fmt: skip
    where = f"{model_name} {size} px, bf16, channels-last, batch {batch}, {workers} workers on {device}"
    return [
        Result(goal="training images/s ≥ timm's train.py loop", ratio=ours_train / timm_train,
               figure=f"{ours_train:.0f} vs {timm_train:.0f} images/s ({where})", met=ours_train >= timm_train),
        Result(goal="prediction images/s ≥ timm's validate.py loop", ratio=ours_predict / timm_predict,
               figure=f"{ours_predict:.0f} vs {timm_predict:.0f} images/s ({where})",
               met=ours_predict >= timm_predict),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> list[Result]:
    """The command line: ``--quick``, ``--device``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--device", help="cuda (default when there is one) or cpu (a tiny run of the same code)")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger("inatcomp").setLevel(logging.WARNING)
    results = run(quick=args.quick, device=args.device)
    for result in results:
        result.log()
    return results


if __name__ == "__main__":
    main()
