"""How the synthetic world behaves under training: the numbers that calibrate :mod:`inatcomp.world.render`.

On a demo-sized export (300 species, 20,000 photos, built with the inat2018 preset: its val split is balanced)
a resnet10t at 64 px is trained with the demo's baseline options (plain cross-entropy, random batches), from
scratch and, where the package ships weights for it, fine-tuned from the synthetic pretraining world
(``--pretrained synth``). Their balanced-val errors and the share of their mistakes that stay in the right
genus and family say whether the photos carry what a field guide would use: the body plan tells the
family, the field marks the species. A colour-histogram classifier (softmax regression on 8×8×8 RGB
histograms of the same 64 px images) shows how much colour alone gives; the shape must matter, so it has
to stay far behind.

Goals: the from-scratch CNN's balanced-val top-1 error below the previous world's 0.96 (the ellipse world's
baseline, README's demo before this renderer); at least half its mistakes within the right family; the
colour histogram at least 0.05 worse in top-1 error than the best CNN.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Result, run_script

_logger = logging.getLogger(__name__)

#: The ellipse world's balanced-val (minival) top-1 error of the demo baseline, the figure to beat.
PREVIOUS_WORLD_TOP1 = 0.96
SIZE = 64


def _release(out: Path, *, species: int, photos: int) -> Any:
    from inatcomp.build import build_dataset
    from inatcomp.build.rules import Preset, rules_for
    from inatcomp.pipeline import find_release
    from inatcomp.world.synth import SynthConfig, write_export

    write_export(out / "export", SynthConfig(species=species, photos=photos, seed=0))
    build_dataset(out / "export", out / "release", rules=rules_for(Preset.INAT2018), seed=0, overwrite=True)
    return find_release(out / "release", preset=Preset.INAT2018)


def _cnn(release: Any, out: Path, *, pretrained: str, epochs: int) -> dict[str, Any]:
    """Train with the demo's baseline options, predict val, and score it with the release's analyses."""
    from inatcomp.pipeline import predict_run, train_run
    from inatcomp.score.scoring import score_predictions

    run = train_run(
        release, out / f"run-{pretrained}", model="resnet10t", pretrained=pretrained, img_size=SIZE, epochs=epochs,
        batch_size=64, workers=0, lr=0.05, schedule="cosine", warmup_epochs=0.5, seed=0, log_every=0,
        crop_scale=[0.35, 1.0],
    )  # fmt: skip
    preds, _ = predict_run(run.run_dir, release, out / f"pred-{pretrained}", tta="center", parts=("val",))
    score = score_predictions(preds["val"], release.val, k=3, dataset=release.root)
    mistakes = score["analysis"]["mistakes"]
    return {
        "top1": score["top1_error"], "top3": score["top3_error"],
        "genus": mistakes["same_genus_share"], "family": mistakes["same_family_share"],
    }  # fmt: skip


def _histograms(json_path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Square-rooted 8×8×8 RGB histograms of each image at 64×64, and the category ids."""
    from PIL import Image

    from inatcomp.fileio import read_json

    data = read_json(json_path)
    labels = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    features, targets = [], []
    for image in data["images"]:
        with Image.open(root / image["file_name"]) as photo:
            pixels = np.asarray(photo.convert("RGB").resize((SIZE, SIZE)), dtype=np.int64) // 32
        codes = (pixels[..., 0] * 64 + pixels[..., 1] * 8 + pixels[..., 2]).ravel()
        features.append(np.sqrt(np.bincount(codes, minlength=512) / codes.size))
        targets.append(labels[image["id"]])
    return np.stack(features).astype(np.float32), np.asarray(targets)


def _colour_histogram(release: Any) -> float:
    """Balanced-val top-1 error of softmax regression on colour histograms (trained on train)."""
    import torch

    x_train, y_train = _histograms(release.train, release.root)
    x_val, y_val = _histograms(release.val, release.root)
    classes = np.unique(y_train)
    index = {c: i for i, c in enumerate(classes)}
    target = torch.as_tensor([index[c] for c in y_train])
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    features = torch.as_tensor((x_train - mean) / std)
    torch.manual_seed(0)
    layer = torch.nn.Linear(features.shape[1], len(classes))
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(400):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(layer(features), target).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = classes[layer(torch.as_tensor((x_val - mean) / std)).argmax(1).numpy()]
    return float((predicted != y_val).mean())


def _shipped(model: str) -> bool:
    from inatcomp.models.pretrained import read_synth_manifest

    return model in read_synth_manifest()


def run(*, quick: bool = False) -> list[Result]:
    """Measure the world: from-scratch and pretrained CNN, and the colour-histogram classifier."""
    species, photos, epochs = (60, 3000, 2) if quick else (300, 20000, 12)
    with tempfile.TemporaryDirectory() as tmp:
        release = _release(Path(tmp), species=species, photos=photos)
        cnns = {"none": _cnn(release, Path(tmp), pretrained="none", epochs=epochs)}
        if _shipped("resnet10t"):
            cnns["synth"] = _cnn(release, Path(tmp), pretrained="synth", epochs=epochs)
        histogram = _colour_histogram(release)
    for name, cnn in cnns.items():
        _logger.info("resnet10t --pretrained %s: %s", name, cnn)
    scratch, best = cnns["none"], min(cnns.values(), key=lambda c: c["top1"])
    size = f"{species} species, {photos:,} photos, {epochs} epochs at {SIZE} px"
    results = [
        Result(
            goal=f"resnet10t from scratch, balanced-val top-1 error below the ellipse world's {PREVIOUS_WORLD_TOP1}",
            figure=f"{scratch['top1']:.3f} (top-3 {scratch['top3']:.3f}; {size})",
            ratio=scratch["top1"] / PREVIOUS_WORLD_TOP1,
            met=scratch["top1"] < PREVIOUS_WORLD_TOP1,
        ),
        Result(
            goal="at least half the from-scratch mistakes within the right family",
            figure=f"{scratch['family']:.0%} within the family, {scratch['genus']:.0%} within the genus",
            ratio=scratch["family"] / 0.5,
            met=scratch["family"] >= 0.5,
        ),
        Result(
            goal="colour histogram at least 0.05 worse in top-1 error than the best CNN (the shape matters)",
            figure=f"histogram {histogram:.3f} vs CNN {best['top1']:.3f}",
            ratio=(histogram - best["top1"]) / 0.05,
            met=histogram - best["top1"] >= 0.05,
        ),
    ]
    if "synth" in cnns:
        synth = cnns["synth"]
        results.append(
            Result(
                goal="fine-tuned from the shipped synthetic backbone: below the from-scratch error",
                figure=f"{synth['top1']:.3f} (top-3 {synth['top3']:.3f}; {synth['family']:.0%} of mistakes within "
                f"the family, {synth['genus']:.0%} within the genus)",
                ratio=synth["top1"] / scratch["top1"],
                met=synth["top1"] < scratch["top1"],
            )
        )
    return results


if __name__ == "__main__":
    run_script(run, __doc__)
