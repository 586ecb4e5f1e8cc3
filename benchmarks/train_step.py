"""Training epoch speed against what its parts allow.

Measured side by side on one tiny generated release: the loader alone (decode + augment + collate), the
model's forward + backward + optimizer step alone on preloaded tensors, and whole epochs of
``inatcomp.train.train`` (sampler, logging, metrics and the best checkpoint included: its ``epoch_seconds``
metric; the first epoch is left out as warm-up). Parts and epochs alternate over rounds and the best round
of each counts, so a busy shared machine slows them alike. The loader runs in the training
process (``workers=0``), so the parts share the cores and allow 1 / (1/loader + 1/compute) images/s.
Goal: the epoch reaches ≥ 90 % of that, i.e. the trainer's own overhead stays under 10 %.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import Result, run_script
from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.data import CompetitionDataset, create_loader, create_sampler, create_transform, resolve_data_config
from inatcomp.data.samplers import SamplerType
from inatcomp.models.factory import create_model
from inatcomp.train import resolve_config, train
from inatcomp.world.synth import SynthConfig, write_export

_logger = logging.getLogger(__name__)


def run(*, quick: bool = False) -> list[Result]:
    """Measure loader, compute and epoch rates; returns the epoch-efficiency result."""
    torch.set_num_threads(2)
    photos, img_size, batch = (1500, 64, 32) if quick else (3000, 112, 32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_export(root / "export", SynthConfig(species=20, photos=photos, seed=0, image_size=256))
        build_dataset(root / "export", root / "release", rules=rules_for(Preset.INAT2018), seed=0)
        base = dict(
            train=str(root / "release" / "train2018.json"), images=str(root / "release"), model="resnet10t",
            img_size=img_size, batch_size=batch, workers=0, log_every=0, lr=0.01,
        )  # fmt: skip

        model = create_model("resnet10t", num_classes=20)
        data_config = resolve_data_config(model, input_size=img_size)
        transform = create_transform(config=data_config, training=True, seed=0)
        dataset = CompetitionDataset(base["train"], base["images"], transform=transform)
        sampler = create_sampler(sampler_type=SamplerType.RANDOM, labels=dataset.labels, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        criterion = torch.nn.CrossEntropyLoss()
        loader_rate = compute_rate = epoch_rate = 0.0
        for round_ in range(2 if quick else 3):
            loader = create_loader(dataset=dataset, batch_size=batch, sampler=sampler, drop_last=True)
            start = time.perf_counter()
            batches = [(b.image, b.label) for b in loader]
            loader_rate = max(loader_rate, len(batches) * batch / (time.perf_counter() - start))
            model.train()
            start = time.perf_counter()
            for inputs, targets in batches:
                loss = criterion(model(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            compute_rate = max(compute_rate, len(batches) * batch / (time.perf_counter() - start))
            result = train(resolve_config(overrides={**base, "epochs": 2, "out": str(root / f"run{round_}")}))
            epoch = result.metrics[-1]
            epoch_rate = max(epoch_rate, len(batches) * batch / epoch["epoch_seconds"])
    allowed = 1 / (1 / loader_rate + 1 / compute_rate)
    ratio = epoch_rate / allowed
    _logger.info("loader %.0f img/s, compute %.0f img/s, allowed %.0f img/s, epoch %.0f img/s", loader_rate,
                 compute_rate, allowed, epoch_rate)  # fmt: skip
    return [
        Result(
            goal="training epoch images/s ≥ 90 % of 1/(1/loader + 1/compute) (CPU, shared cores)",
            figure=f"epoch {epoch_rate:.0f} img/s; loader {loader_rate:.0f}, compute {compute_rate:.0f}, "
            f"allowed {allowed:.0f}",
            ratio=ratio,
            met=ratio >= 0.9,
        )
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
