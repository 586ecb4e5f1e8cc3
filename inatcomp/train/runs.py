"""A training run on a release: :func:`train_run`, the step the kernels, the demo and pretraining share."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from inatcomp.build.releases import Release
from inatcomp.train.config import resolve_config
from inatcomp.train.loop import train

__all__ = ["train_run"]


def train_run(
    release: Release, out: str | os.PathLike, *, config_file: str | os.PathLike | None = None, **options: Any
) -> Any:
    """Train on a release's train split, validating on its val split.

    Args:
        release: The release (its train, val and image root are the defaults of ``train``, ``val``, ``images``).
        out: The run folder.
        config_file: A YAML recipe (``kernels/configs/*.yaml``); ``options`` override it.
        **options: :class:`inatcomp.train.TrainConfig` fields.

    Returns:
        The :class:`inatcomp.train.TrainResult`.
    """
    overrides = {"train": str(release.train), "val": str(release.val), "images": str(release.root), "out": str(out)}
    overrides.update({k: str(v) if isinstance(v, Path) else v for k, v in options.items()})
    return train(resolve_config(config_file=config_file, overrides=overrides))
