"""The run folder: ``config.yaml``, ``metrics.csv``/``metrics.json``, checkpoint metadata and training state.

The ``last`` checkpoint carries the training state (optimizer, gradient scaler, sampler, EMA, best error and
the metrics so far) from which :class:`Progress` and the run's parts are restored for an exact resume.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from inatcomp.fileio import write_atomic
from inatcomp.train.config import TrainConfig

if TYPE_CHECKING:
    from inatcomp.train.parts import RunParts

__all__ = ["Progress", "checkpoint_metadata", "config_yaml", "training_state", "write_metrics"]


@dataclasses.dataclass
class Progress:
    """How far a run is: the metrics of the epochs done, the best error so far and the next epoch.

    Attributes:
        history: One metrics row per epoch done.
        best_error: The lowest val top-1 error (train loss without a val set) so far.
        start_epoch: The epoch this call starts at.
    """

    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best_error: float = math.inf
    start_epoch: int = 0

    @classmethod
    def resumed(cls, metadata: dict[str, Any], state: dict[str, Any]) -> Progress:
        """The progress saved in the ``last`` checkpoint's metadata and training state."""
        return cls(history=list(state["history"]), best_error=state["best_error"], start_epoch=metadata["epoch"] + 1)


def training_state(parts: RunParts, progress: Progress) -> dict[str, Any]:
    """What the ``last`` checkpoint carries beside the weights, for an exact resume."""
    state = {
        "optimizer": parts.optimizer.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "best_error": progress.best_error,
        "history": progress.history,
    }
    if parts.ema is not None:
        state["ema"] = parts.ema.module.state_dict()
    return state


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Write ``metrics.json`` and ``metrics.csv`` (one row per epoch; columns in order of first appearance)."""
    write_atomic(run_dir / "metrics.json", json.dumps(history, indent=2))
    buffer = io.StringIO()
    columns = list(dict.fromkeys(key for row in history for key in row))
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_atomic(run_dir / "metrics.csv", buffer.getvalue())


def config_yaml(config: TrainConfig) -> str:
    """The run's ``config.yaml``: every option, choices as the strings a config file writes."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def checkpoint_metadata(
    config: TrainConfig, train_set: Any, data_config: Any, epoch: int, metrics: dict, transfer: dict | None
) -> dict[str, Any]:
    """A checkpoint's JSON metadata: model, head categories and their train counts, data config, training config,
    epoch and metrics."""
    extra = {"transfer": transfer} if transfer is not None else {}
    return {
        **extra,
        "format": "inatcomp-checkpoint-1",
        "model": config.model,
        "num_classes": int(train_set.num_classes),
        "category_ids": [int(c) for c in train_set.category_ids],
        "categories": train_set.categories,
        "class_counts": [int(n) for n in train_set.class_counts()],  # the train prior of post-hoc logit adjustment
        "data_config": {
            "input_size": list(data_config.input_size),
            "mean": list(data_config.mean),
            "std": list(data_config.std),
            "crop_pct": data_config.crop_pct,
            "interpolation": data_config.interpolation.value,
        },
        "train_config": config.to_dict(),
        "epoch": epoch,
        "metrics": metrics,
    }
