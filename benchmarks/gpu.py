"""GPU throughput of training and prediction: ours, timm's own loops, and the compute floor (issue 32).

What it measures, side by side in one process on one built release (on a GPU: ≥ 10,000 train images at the Open
Data's medium size, 500 px; ≥ 60 batches a pass): ``inatcomp train`` (resnet50, 224 px, bf16 autocast,
channels-last, loader workers, its ``train_images_per_s`` over the second epoch) against the loop of timm's
``train.py`` built from timm's own parts (``timm.data.create_dataset`` on an ImageFolder view of the same train
images, ``create_loader`` with its GPU prefetcher and augmentation, the same model, SGD, bf16 and channels-last);
``inatcomp predict --tta center`` (``--decode cpu`` and ``--decode gpu``) against timm's ``validate.py`` loop; and
``--tta ten-crop``. The compute floor is the same model and step on a batch already on the device (training: the
SGD step; prediction: the eval forward; ten-crop's floor is a tenth of the centre crop's images/s). The breakdown
adds our loader alone (uint8 crops to the device, normalised there, no model); compute alone is the floor. timm's
scripts themselves are not in its wheel; these loops are what they run per batch. Goals (issue 32): training ≥ 0.95
of the floor and ≥ timm; centre crop ≥ 0.7 of the floor and ≥ 1.5× timm; ten-crop ≥ 0.7 of the floor / 10.

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


def _floor_train(model_name: str, *, classes: int, size: int, batch: int, steps: int, device: Any) -> float:
    """The compute floor of training: images/s of the same model and step on one batch already on the device."""
    import timm
    import torch

    model = timm.create_model(model_name, num_classes=classes).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    inputs = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, classes, (batch,), device=device)
    model.train()

    def steps_of(n: int) -> None:
        for _ in range(n):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = criterion(model(inputs), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    steps_of(3)
    start = time.perf_counter()
    steps_of(steps)
    return steps * batch / (time.perf_counter() - start)


def _floor_predict(model: Any, *, size: int, batch: int, steps: int, device: Any) -> float:
    """The compute floor of prediction: images (views) per second of the eval forward on a batch on the device."""
    import torch

    model = model.to(device).to(memory_format=torch.channels_last).eval()
    inputs = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(3):
            model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            model(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def _loader_alone(train_json: Path, images: Path, *, size: int, batch: int, steps: int, workers: int,
                  device: Any) -> float:  # fmt: skip
    """Images/s of our train loader alone: uint8 crops to the device, normalised there, no model."""
    from inatcomp.data import CompetitionDataset, create_loader, create_transform, resolve_data_config
    from inatcomp.data.feed import InputNorm, device_batches

    config = resolve_data_config(input_size=size)
    dataset = CompetitionDataset(
        train_json, images, transform=create_transform(config=config, training=True, uint8=True)
    )
    indices = [i % len(dataset) for i in range(batch * (steps + 2))]
    loader = create_loader(dataset=dataset, batch_size=batch, sampler=indices, num_workers=workers,  # type: ignore[arg-type]
                           pin_memory=device.type == "cuda")  # fmt: skip
    norm = InputNorm(config.mean, config.std, channels_last=True)
    seen, start = 0, None
    for step, (inputs, _) in enumerate(device_batches(((b.image, b.label) for b in loader), device)):
        norm(inputs)
        if step == 1:  # the workers have started
            start = time.perf_counter()
        elif step > 1:
            seen += len(inputs)
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    return seen / max(time.perf_counter() - (start or time.perf_counter()), 1e-9)


def _release(root: Path, *, quick: bool, cpu: bool) -> tuple[Path, int, int]:
    """Build the benchmark's release: ≥ 10,000 train images at the Open Data's medium size (500 px) on a GPU."""
    from inatcomp.build import build_dataset
    from inatcomp.build.rules import Preset, rules_for
    from inatcomp.fileio import read_json
    from inatcomp.world.synth import SynthConfig, write_export

    # Every photo of an observation and no test split: about 0.68 train images per photo.
    species, photos, side = (12, 300, 96) if quick or cpu else (100, 16000, 500)
    write_export(root / "export", SynthConfig(species=species, photos=photos, seed=0, image_size=side))
    rules = rules_for(Preset.INAT2018, research_only=False, test_fraction=0.0, photos_per_observation=5, min_train=1)
    built = build_dataset(root / "export", root / "release", rules=rules, seed=0)
    train_json = root / "release" / "train2018.json"
    n_train = len(read_json(train_json)["images"])
    if not (quick or cpu) and n_train < 10_000:
        _logger.warning("benchmarks.gpu: only %d train images (the goal's release has ≥ 10,000)", n_train)
    return train_json, built.classes, n_train


def _measure(root: Path, *, quick: bool, device: str) -> dict[str, Any]:
    """Every figure of the run: ours, timm's and the floor for training, centre crop and ten-crop; the breakdown."""
    import torch

    from inatcomp.predict.engine import load_model, predict
    from inatcomp.train import resolve_config, train

    torch_device = torch.device(device)
    cpu = torch_device.type == "cpu"
    model_name = "resnet10t" if cpu else "resnet50"
    size, batch = (64, 16) if cpu else (224, 128)
    steps = 4 if cpu else 60
    rounds = 1 if quick or cpu else 2
    workers = 0 if cpu else min(12, os.cpu_count() or 1)
    train_json, classes, n_train = _release(root, quick=quick, cpu=cpu)
    images = root / "release"
    folder = imagefolder_view(train_json, images, root / "imagefolder")
    f: dict[str, Any] = {k: 0.0 for k in ("train", "timm_train", "center", "timm_center", "ten", "gpu_center")}
    f.update(n_train=n_train, where=f"{model_name} {size} px, bf16, channels-last, batch {batch}, {workers} workers "
             f"on {device}, {n_train} train images, {steps} batches a pass")  # fmt: skip
    gpu_decode = "gpu" if torch_device.type == "cuda" else "cpu"
    for round_ in range(rounds):
        config = resolve_config(overrides=dict(
            train=str(train_json), images=str(images), out=str(root / f"run{round_}"), model=model_name,
            img_size=size, batch_size=batch, epochs=2, max_steps_per_epoch=steps, workers=workers, lr=0.01,
            amp="bf16", channels_last=True, log_every=0, device=device,
        ))  # fmt: skip
        result = train(config)
        f["train"] = max(f["train"], result.metrics[-1]["train_images_per_s"])  # the second epoch: warm
        f["timm_train"] = max(f["timm_train"], _timm_train(folder, model_name=model_name, classes=classes, size=size,
                              batch=batch, steps=steps, workers=workers, device=torch_device))  # fmt: skip
        checkpoint = result.run_dir / "last.safetensors"
        common = dict(checkpoint=checkpoint, data=train_json, images=images, batch_size=batch, workers=workers,
                      device=device, channels_last=True, amp="bf16")  # fmt: skip
        for key, tta, decode in (("center", "center", "cpu"), ("gpu_center", "center", gpu_decode),
                                 ("ten", "ten-crop", "cpu")):  # fmt: skip
            start = time.perf_counter()
            predict(tta=tta, out=root / f"pred-{key}{round_}", decode=decode, **common)
            f[key] = max(f[key], n_train / (time.perf_counter() - start))
        model, _ = load_model(checkpoint)
        f["timm_center"] = max(f["timm_center"], _timm_validate(folder, model, size=size, batch=batch,
                                                                workers=workers, device=torch_device))  # fmt: skip
        _logger.info("round %d: %s", round_, {k: round(v) for k, v in f.items() if isinstance(v, float)})
    f["floor_train"] = _floor_train(model_name, classes=classes, size=size, batch=batch, steps=steps,
                                    device=torch_device)  # fmt: skip
    f["floor_center"] = _floor_predict(load_model(checkpoint)[0], size=size, batch=batch, steps=steps,
                                       device=torch_device)  # fmt: skip
    f["loader"] = _loader_alone(train_json, images, size=size, batch=batch, steps=steps, workers=workers,
                                device=torch_device)  # fmt: skip
    return f


def run(*, quick: bool = False, device: str | None = None) -> list[Result]:
    """Measure training, centre-crop and ten-crop prediction: ours, timm's, the floor; ``[]`` without CUDA."""
    import torch

    if device is None:
        if not torch.cuda.is_available():
            _logger.info("benchmarks.gpu: no CUDA device on this machine; the GPU benchmark needs one (skipped)")
            return []
        device = "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        f = _measure(Path(tmp), quick=quick, device=device)
    where = f["where"]
    train_figure = (f"ours {f['train']:.0f}, timm {f['timm_train']:.0f}, floor {f['floor_train']:.0f} images/s; "
                    f"loader alone {f['loader']:.0f}, compute alone {f['floor_train']:.0f} ({where})")  # fmt: skip
    center_figure = (f"ours {f['center']:.0f} (--decode {'gpu' if device.startswith('cuda') else 'cpu'}: "
                     f"{f['gpu_center']:.0f}), timm {f['timm_center']:.0f}, floor {f['floor_center']:.0f} images/s "
                     f"({where})")  # fmt: skip
    ten_floor = f["floor_center"] / 10
    return [
        Result(goal="training images/s ≥ 0.95 of the compute floor", figure=train_figure,
               ratio=f["train"] / f["floor_train"] / 0.95, met=f["train"] >= 0.95 * f["floor_train"]),
        Result(goal="training images/s ≥ timm's train.py loop", ratio=f["train"] / f["timm_train"],
               figure=f"{f['train']:.0f} vs {f['timm_train']:.0f} images/s ({where})",
               met=f["train"] >= f["timm_train"]),
        Result(goal="centre-crop prediction images/s ≥ 0.7 of the compute floor", figure=center_figure,
               ratio=f["center"] / f["floor_center"] / 0.7, met=f["center"] >= 0.7 * f["floor_center"]),
        Result(goal="prediction images/s ≥ 1.5× timm's validate.py loop", ratio=f["center"] / f["timm_center"] / 1.5,
               figure=f"{f['center']:.0f} vs {f['timm_center']:.0f} images/s ({where})",
               met=f["center"] >= 1.5 * f["timm_center"]),
        Result(goal="ten-crop prediction images/s ≥ 0.7 of the floor / 10", ratio=f["ten"] / ten_floor / 0.7,
               figure=f"ours {f['ten']:.0f}, floor / 10 {ten_floor:.0f} images/s ({where})",
               met=f["ten"] >= 0.7 * ten_floor),
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
