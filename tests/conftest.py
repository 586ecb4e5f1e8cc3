"""Shared helpers of the tests: tiny hand-made competition datasets, models with trained-looking statistics."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_tiny_dataset(
    root: Path,
    *,
    names: Sequence[str],
    ids: Sequence[int] | None = None,
    per_class: int = 8,
    size: int = 32,
    file: str = "train.json",
    seed: int = 0,
) -> Path:
    """A 2018-style JSON over small JPEGs under ``root`` (class = a colour and a stripe density, plus noise).

    Args:
        root: Folder of the JSON and the images (``images/<name>/<i>.jpg``).
        names: Scientific name of each category (the taxon); images of one name look alike across datasets.
        ids: Category id of each name (default 0..C-1: positions, as in the competition releases).
        per_class: Images per category.
        size: Side of the images in pixels.
        file: Name of the JSON file.
        seed: Seed of the noise.

    Returns:
        The JSON file.
    """
    ids = list(range(len(names))) if ids is None else list(ids)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for category, name in zip(ids, names):
        taxon = sum(name.encode())  # the look depends on the taxon, not on its id
        colour = np.array([taxon * 37 % 200, taxon * 91 % 200, taxon * 53 % 200]) + 30
        stripes = 2 + taxon % 5
        for i in range(per_class):
            pixels = np.empty((size, size, 3))
            pixels[:] = colour
            pixels[:, (np.arange(size) * stripes // size) % 2 == 0] *= 0.5
            pixels += rng.normal(0, 12, pixels.shape)
            file_name = f"images/{name.replace(' ', '_')}/{seed}_{i}.jpg"
            (root / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / file_name, quality=92)
            image_id = 1000 * (len(images) // per_class + 1) + i + 100_000 * seed
            images.append({"id": image_id, "width": size, "height": size, "file_name": file_name})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": category})
    categories = [
        {"id": c, "name": n, "genus": n.split()[0], "family": "Tinyidae", "supercategory": "Insecta"}
        for c, n in zip(ids, names)
    ]
    path = root / file
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def tiny_train_config(train_json: Path, out: Path, **overrides):
    """A resolved config of a one-epoch resnet10t run at 32 px over a :func:`write_tiny_dataset` JSON."""
    from inatcomp.train import resolve_config

    values = dict(
        train=str(train_json), images=str(train_json.parent), out=str(out), model="resnet10t", img_size=32,
        epochs=1, batch_size=16, workers=0, lr=0.05, log_every=0, schedule="step",
    )  # fmt: skip
    values.update(overrides)
    return resolve_config(overrides=values)


@pytest.fixture
def tiny_dataset():
    """:func:`write_tiny_dataset` as a fixture."""
    return write_tiny_dataset


def set_trained_statistics(model):
    """Random BatchNorm statistics and affine weights, as after training (fresh ones leave the layer near identity)."""
    import torch

    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="session")
def trained_statistics():
    """:func:`set_trained_statistics` as a fixture."""
    return set_trained_statistics
