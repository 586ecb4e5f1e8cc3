"""Weight averaging: the mean of several checkpoints of one architecture and category set.

Two uses, one operation: the last N epochs of a run (``train --keep-epochs N`` keeps them under
``RUN/epochs/``), as timm's ``avg_checkpoints.py`` averages a run's best checkpoints; or the final checkpoints
of several runs fine-tuned from one start, a "model soup" (Wortsman et al., ICML 2022). Floating-point tensors,
BatchNorm running statistics included, are averaged in float64 and stored in their own dtype; integer tensors
(``num_batches_tracked``) must agree or the first's is kept. The result is a checkpoint ``predict`` loads like any
other; its metadata is the first source's with an ``average`` record naming every source.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from inatcomp.fileio import resolve_checkpoint, write_atomic
from inatcomp.models.checkpoints import file_sha256, load_tensors, read_metadata, save_tensors

__all__ = ["average_checkpoints", "epoch_checkpoints"]

_logger = logging.getLogger(__name__)


def epoch_checkpoints(run: str | os.PathLike, last: int) -> list[Path]:
    """The weights files of a run's last ``last`` kept epochs (``RUN/epochs/epochNNN.safetensors``), oldest first.

    Raises:
        ValueError: The run kept fewer epochs (``train --keep-epochs``).
    """
    folder = Path(run) / "epochs"
    kept = sorted(folder.glob("epoch*.safetensors")) if folder.is_dir() else []
    kept = [p for p in kept if p.with_suffix(".json").is_file()]
    if last < 1 or len(kept) < last:
        raise ValueError(
            f"{run}: {len(kept)} epoch checkpoint(s) under epochs/, {last} asked for (train with --keep-epochs N)"
        )
    return kept[-last:]


def average_checkpoints(sources: Sequence[str | os.PathLike], *, out: str | os.PathLike) -> Path:
    """Write the mean of ``sources`` (checkpoint files, stems or run folders: their ``best``) as ``out``.

    Args:
        sources: Two or more checkpoints of one model and category set (one alone is copied).
        out: The checkpoint path to write (``.safetensors`` optional; its ``.json`` is written beside it).

    Returns:
        The written weights file.

    Raises:
        ValueError: No sources, or one whose model, categories, tensor names or shapes differ from the first's
            (naming that checkpoint and what differs).
    """
    if not sources:
        raise ValueError("average: give at least one checkpoint")
    files = [resolve_checkpoint(source) for source in sources]
    first_meta = read_metadata(files[0].with_suffix(".json"))
    first = load_tensors(files[0])
    sums = {k: v.double() if v.is_floating_point() else v.clone() for k, v in first.items()}
    for path in files[1:]:
        meta = read_metadata(path.with_suffix(".json"))
        for key in ("model", "category_ids"):
            if meta.get(key) != first_meta.get(key):
                raise ValueError(f"{path}: its {key} differs from {files[0]}'s: one model and category set only")
        state = load_tensors(path)
        if set(state) != set(first):
            extra = sorted(set(state) ^ set(first))[:3]
            raise ValueError(f"{path}: its tensors differ from {files[0]}'s (e.g. {', '.join(extra)})")
        for key, tensor in state.items():
            if tensor.shape != first[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(tensor.shape)}, {files[0]} {tuple(first[key].shape)}")
            if tensor.is_floating_point():
                sums[key] += tensor.double()
            elif not torch.equal(tensor, first[key]):
                _logger.info("%s: %s differs from the first checkpoint's; the first's is kept", path, key)
    averaged = {
        k: (v / len(files)).to(first[k].dtype).contiguous() if first[k].is_floating_point() else v
        for k, v in sums.items()
    }
    stem = Path(out)
    if stem.suffix == ".safetensors":
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = stem.with_name(stem.name + ".safetensors")
    save_tensors(weights, averaged)
    record: dict[str, Any] = {"checkpoints": [{"path": str(p), "sha256": file_sha256(p)} for p in files]}
    metadata = {**first_meta, "average": record}
    write_atomic(stem.with_name(stem.name + ".json"), json.dumps(metadata, indent=2, sort_keys=True))
    _logger.info("averaged %d checkpoints into %s", len(files), weights)
    return weights
