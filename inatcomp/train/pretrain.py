"""Backbones pretrained on a synthetic world that no competition export shares a taxon with.

``inatcomp pretrain`` (``make pretrain``) generates a pretraining world (:attr:`inatcomp.world.taxa.World.PRETRAIN`:
its own taxon ids, its own names, see :class:`~inatcomp.world.taxa.World`), builds it into a release with the
inat2018 rules, every grade and every photo kept (:data:`PRETRAIN_RULES`: most species stay), trains a timm
model on it from scratch (random batches, plain cross-entropy, cosine schedule), and writes the trained
backbone, classifier removed and stored as float16, as ``OUT/<model>-synth.safetensors`` with an entry in
``OUT/manifest.json``: what it was trained on, how, how well (the last epoch's val errors), the file's sha256
and size, the command, the date, the machine and the wall time. ``--install`` copies both into the package's
weights folder (:func:`inatcomp.models.pretrained.synth_weights_dir`), where ``--pretrained synth`` finds them.

The defaults (:data:`PRETRAIN_DEFAULTS`, the one place they are set; the command line and the Makefile take
them from here) are the shipped run's: 11 minutes on a 2-core CPU at 64 px. A rerun with the same data options
reuses the world and the release already written under ``OUT``; the training runs again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from inatcomp.build.release import build_dataset
from inatcomp.build.releases import Release, find_release
from inatcomp.build.rules import Preset, rules_for
from inatcomp.fileio import read_json, write_atomic, write_json
from inatcomp.models.checkpoints import file_sha256, load_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.pretrained import SYNTH_MANIFEST, backbone_state, read_synth_manifest, synth_weights_dir
from inatcomp.train.loop import TrainResult
from inatcomp.train.runs import train_run
from inatcomp.world.synth import SynthConfig, write_export
from inatcomp.world.taxa import World

__all__ = [
    "PRETRAIN_DEFAULTS",
    "PRETRAIN_PRESET",
    "PRETRAIN_RULES",
    "PretrainConfig",
    "manifest_markdown",
    "pretrain",
    "weights_name",
]

_logger = logging.getLogger(__name__)

#: The build rules of the pretraining release: inat2018's (at least 2 train images, 3 val images per class) …
PRETRAIN_PRESET = Preset.INAT2018
#: … keeping every quality grade (a synthetic identification is the true taxon), every photo of an observation,
#: and a small test split: most species and half the photos (the shipped run, 500 species and 36,000 photos:
#: 433 classes, 16,977 train images; 400 species and 24,000 photos give 346 classes, 12,044 train images, against
#: 198 classes and 3,641 with inat2018's own rules).
PRETRAIN_RULES: dict[str, Any] = {"research_only": False, "photos_per_observation": 4, "test_fraction": 0.05}
#: The file in the world and release folders that records the options they were made with (for a rerun).
_KEY_FILE = "pretrain_key.json"


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Options of a pretraining run.

    Attributes:
        out: Folder for the world (``world/``), the release (``release/``), the run (``run/<model>/``), the
            weights and the manifest.
        species: Species of the pretraining world.
        photos: Photos of the pretraining world.
        model: The timm architecture pretrained.
        img_size: Training crop in pixels; the world's photos are rendered at twice it (long side).
        epochs: Training epochs.
        batch_size: Images per batch.
        lr: Peak learning rate (SGD, cosine schedule, half an epoch of warm-up).
        seed: Seed of the world, its build and the training (not a competition export's seed: the worlds
            differ anyway, see :class:`~inatcomp.world.taxa.World`).
        workers: Loader processes while training (0: in the training process, best on a small CPU).
        install: Also write the weights and the manifest entry into the package's weights folder.
    """

    out: str
    species: int = 500
    photos: int = 36000
    model: str = "resnet10t"
    img_size: int = 64
    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.05
    seed: int = 1000
    workers: int = 0
    install: bool = False

    @property
    def image_size(self) -> int:
        """Long side of the world's rendered photos: twice the training crop (at least 16 px)."""
        return max(16, 2 * self.img_size)

    def check(self) -> None:
        """Reject impossible options before anything is written.

        Raises:
            ValueError: With a one-line explanation.
        """
        if not self.out:
            raise ValueError("--out is required")
        if self.epochs < 1 or self.batch_size < 1 or self.img_size < 8 or self.lr <= 0:
            raise ValueError("--epochs and --batch-size must be ≥ 1, --img-size ≥ 8 and --lr > 0")


#: The defaults of :class:`PretrainConfig` (``out`` aside): what ``inatcomp pretrain`` and ``make pretrain`` use.
PRETRAIN_DEFAULTS = PretrainConfig(out="runs/pretrain")


def weights_name(model: str) -> str:
    """The weights file of a model's synthetic-world backbone: ``<model>-synth.safetensors``."""
    return f"{model}-synth.safetensors"


def _world_key(config: PretrainConfig) -> dict[str, Any]:
    return {
        "species": config.species, "photos": config.photos, "seed": config.seed,
        "namespace": World.PRETRAIN.value, "image_size": config.image_size,
    }  # fmt: skip


def _recorded(folder: Path) -> dict[str, Any] | None:
    """The options a world or release folder was made with, or ``None``."""
    path = folder / _KEY_FILE
    return read_json(path) if path.is_file() else None


def _world(config: PretrainConfig, folder: Path) -> None:
    """Write the pretraining world under ``folder``, unless one with the same options is there."""
    key = _world_key(config)
    recorded = _recorded(folder)
    if recorded is not None and recorded.get("world") == key:
        _logger.info("pretraining world in %s reused (%s)", folder, recorded["counts"])
        return
    (folder / _KEY_FILE).unlink(missing_ok=True)
    _logger.info("writing the pretraining world in %s: %d species, %d photos", folder, config.species, config.photos)
    synth = SynthConfig(species=config.species, photos=config.photos, seed=config.seed,
                        image_size=config.image_size, namespace=World.PRETRAIN)  # fmt: skip
    counts = write_export(folder, synth)
    write_json(folder / _KEY_FILE, {"world": key, "counts": counts}, indent=2)


def _release(config: PretrainConfig, world: Path, folder: Path) -> tuple[Release, dict[str, Any]]:
    """Build the world into a release under ``folder`` (reused when built from the same world and rules).

    Returns:
        The :class:`~inatcomp.build.releases.Release` and ``{"classes": …, "images": {split: count}}``.
    """
    key = {"world": _world_key(config), "preset": PRETRAIN_PRESET.value, "rules": PRETRAIN_RULES, "seed": config.seed}
    recorded = _recorded(folder)
    if recorded is not None and recorded.get("release") == key:
        _logger.info("pretraining release in %s reused: %d classes", folder, recorded["built"]["classes"])
        return find_release(folder, preset=PRETRAIN_PRESET), recorded["built"]
    _logger.info("building the pretraining release in %s (%s rules)", folder, PRETRAIN_PRESET.value)
    rules = rules_for(PRETRAIN_PRESET, **PRETRAIN_RULES)
    result = build_dataset(world, folder, rules=rules, seed=config.seed, overwrite=True)
    built = {"classes": int(result.classes), "images": {k: int(v) for k, v in result.images.items()}}
    write_json(folder / _KEY_FILE, {"release": key, "built": built}, indent=2)
    _logger.info("pretraining release: %d classes, images %s", built["classes"], built["images"])
    return find_release(folder, preset=PRETRAIN_PRESET), built


def _train(config: PretrainConfig, release: Release, run_dir: Path) -> TrainResult:
    """Train the model on the release from scratch: random batches, plain cross-entropy, cosine."""
    _logger.info("pretraining %s: %d epochs at %d px, batch %d, lr %g", config.model, config.epochs,
                 config.img_size, config.batch_size, config.lr)  # fmt: skip
    return train_run(
        release, run_dir, model=config.model, pretrained=None, img_size=config.img_size, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, optimizer="sgd", schedule="cosine", warmup_epochs=0.5,
        sampler="random", loss="ce", crop_scale=[0.35, 1.0], workers=config.workers, seed=config.seed,
    )  # fmt: skip


def _backbone_bytes(checkpoint: Path, model_name: str) -> tuple[bytes, dict[str, Any]]:
    """The checkpoint's backbone (classifier removed, floating tensors as float16) as safetensors bytes.

    Returns:
        The file's bytes and the checkpoint's metadata.
    """
    state, metadata, _ = load_checkpoint(checkpoint)
    model = create_model(model_name, num_classes=int(metadata["num_classes"]))
    model.load_state_dict(state)
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in backbone_state(model).items()}
    header = {"format": "inatcomp-synth-backbone-1", "model": model_name, "dtype": "float16"}
    return save(tensors, metadata=header), metadata


def _manifest_entry(config: PretrainConfig, *, weights: Path, metadata: dict, built: dict, final: dict,
                    command: str | None, seconds: float) -> dict[str, Any]:  # fmt: skip
    """The manifest entry of a pretrained backbone: data, training, result, file, provenance."""
    data_config = metadata["data_config"]
    return {
        "model": config.model,
        "file": weights.name,
        "sha256": file_sha256(weights),
        "bytes": weights.stat().st_size,
        "dtype": "float16",
        "img_size": config.img_size,
        "mean": list(data_config["mean"]),
        "std": list(data_config["std"]),
        "data": {
            "species": config.species,
            "photos": config.photos,
            "world_seed": config.seed,
            "namespace": World.PRETRAIN.value,
            "image_size": config.image_size,
            "preset": PRETRAIN_PRESET.value,
            "rules": PRETRAIN_RULES,
            "classes": built["classes"],
            "images": built["images"],
        },
        "training": {
            "epochs": config.epochs,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "optimizer": "sgd",
            "schedule": "cosine",
            "sampler": "random",
            "loss": "ce",
            "pretrained": None,
        },
        "result": {
            "val_top1_error": final.get("val_top1_error"),
            "val_top3_error": final.get("val_top3_error"),
            "epochs_run": int(metadata["epoch"]) + 1,
        },
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "seconds": round(seconds, 1),
    }


def _merge_manifest(folder: Path, entry: dict[str, Any]) -> Path:
    """Add (or replace) ``entry`` under its model in ``folder/manifest.json``, atomically."""
    manifest = read_synth_manifest(folder)
    manifest[entry["model"]] = entry
    path = folder / SYNTH_MANIFEST
    write_atomic(path, json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return path


def manifest_markdown(entry: dict[str, Any]) -> str:
    """A manifest entry as the README's ``pretrain`` block: what was trained on what, how well, how long, where."""
    data, machine = entry["data"], entry["machine"]
    minutes, rest = divmod(round(entry["seconds"]), 60)
    top1, top3 = entry["result"]["val_top1_error"], entry["result"]["val_top3_error"]
    return (
        f"Shipped: `{entry['file']}`, {entry['bytes'] / 1e6:.1f} MB ({entry['dtype']}, sha256 "
        f"`{entry['sha256'][:16]}…`), {entry['model']} at {entry['img_size']} px trained "
        f"{entry['training']['epochs']} epochs on {data['species']} species and {data['photos']:,} photos "
        f"({data['classes']} classes, {data['images']['train']:,} train images); val top-1 error {top1:.3f}, "
        f"top-3 {top3:.3f} on its own world; {minutes} min {rest} s on {machine['machine']}, {machine['cpus']} CPUs, "
        f"Python {machine['python']}, {entry['date'][:10]}: `{entry['command']}`.\n"
    )


def pretrain(config: PretrainConfig, *, command: str | None = None) -> dict[str, Any]:
    """Generate the pretraining world, build it, train on it, write the backbone and its manifest entry.

    Args:
        config: What to pretrain and on how much.
        command: The command line that asked for it, recorded in the manifest (``None``: a library call).

    Returns:
        The manifest entry (``weights`` and ``manifest`` add where they were written; ``installed`` where
        ``install`` copied them).

    Raises:
        ValueError: Impossible options, or what a stage refuses (e.g. an unknown ``model``).
    """
    config.check()
    started = time.perf_counter()
    out = Path(config.out)
    _world(config, out / "world")
    release, built = _release(config, out / "world", out / "release")
    result = _train(config, release, out / "run" / config.model)
    final = result.metrics[-1] if result.metrics else {}
    payload, metadata = _backbone_bytes(result.last_checkpoint, config.model)
    weights = write_atomic(out / weights_name(config.model), payload)
    entry = _manifest_entry(config, weights=weights, metadata=metadata, built=built, final=final, command=command,
                            seconds=time.perf_counter() - started)  # fmt: skip
    manifest = _merge_manifest(out, entry)
    _logger.info("wrote %s (%.1f MB, sha256 %s) and %s; val top-1 error %s", weights, entry["bytes"] / 1e6,
                 entry["sha256"], manifest, entry["result"]["val_top1_error"])  # fmt: skip
    written = {"weights": str(weights), "manifest": str(manifest)}
    if config.install:
        folder = synth_weights_dir()
        folder.mkdir(parents=True, exist_ok=True)
        installed = write_atomic(folder / weights.name, payload)
        written["installed"] = str(_merge_manifest(folder, entry))
        _logger.info("installed %s and its entry in %s", installed, written["installed"])
    return {**entry, **written}
