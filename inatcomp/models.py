"""timm models with a head over the competition's categories, and checkpoints as safetensors plus JSON.

A checkpoint is two files side by side: ``NAME.safetensors`` (tensors only, safe to load from strangers)
and ``NAME.json`` (model name, category ids in head order, data config, training config, metrics).
Training state for an exact resume (optimizer, scheduler, EMA, RNG states) is stored the same way:
tensors in safetensors, the rest in JSON. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file

from inatcomp.formats import write_atomic

__all__ = [
    "create_model",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "flatten_state",
    "unflatten_state",
]

_logger = logging.getLogger(__name__)


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: str | os.PathLike | None = None,
    drop_rate: float | None = None,
    channels_last: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """A timm model with a ``num_classes`` head.

    Args:
        name: Any timm architecture name.
        num_classes: Number of categories.
        pretrained: A local weights file (``.safetensors`` or ``.pth`` from timm) for the backbone; the head
            is re-initialised. Nothing is downloaded.
        drop_rate: Dropout before the classifier, or ``None`` for the model's default.
        channels_last: Put the weights in channels-last memory format (faster convolutions).
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        ValueError: An unknown architecture or a missing weights file.
    """
    if name not in timm.list_models() and not timm.is_model(name):
        raise ValueError(f"--model {name}: not a timm architecture (see timm.list_models())")
    if drop_rate is not None:
        kwargs["drop_rate"] = drop_rate
    if pretrained:
        path = Path(pretrained)
        if not path.is_file():
            raise ValueError(f"--pretrained {path}: no such weights file (nothing is downloaded here)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path), "num_classes": 0})
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def flatten_state(state: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state (dicts, lists, tensors, numbers, strings) into tensors and a JSON skeleton.

    Each tensor is replaced in the skeleton by ``{"__tensor__": key}``; the keys index the returned dict.
    """
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, Mapping):
            return {
                "__dict__": [
                    [walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")] for i, (k, v) in enumerate(value.items())
                ]
            }
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, bool | int | float | str):
            return value
        raise TypeError(f"cannot store a {type(value).__name__} at {path} in a checkpoint")

    return tensors, walk(state, prefix or "s")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__dict__" in skeleton:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__dict__"]}
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # safetensors refuses tensors that share memory; clone those few (e.g. tied weights).
    seen: set[int] = set()
    safe = {}
    for key, tensor in tensors.items():
        pointer = tensor.untyped_storage().data_ptr() if tensor.numel() else -1
        safe[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    save_file(safe, str(tmp))
    os.replace(tmp, path)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    metadata: dict[str, Any],
    *,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``PATH.safetensors`` (weights), ``PATH.json`` (metadata) and, for resuming, ``PATH.state.*``.

    Args:
        path: Checkpoint path without suffix (a ``.safetensors`` suffix is stripped).
        model: The model (its ``state_dict`` is saved; a DDP/compiled wrapper is unwrapped).
        metadata: JSON-serialisable facts: model name, category ids in head order, configs, metrics.
        training_state: Optimizer, scheduler, EMA and RNG states for an exact resume.

    Returns:
        The weights file.
    """
    stem = Path(path)
    if stem.suffix == ".safetensors":
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    weights = stem.with_name(stem.name + ".safetensors")
    _save_tensors(weights, {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    if training_state is not None:
        tensors, skeleton = flatten_state(training_state)
        _save_tensors(stem.with_name(stem.name + ".state.safetensors"), tensors)
        write_atomic(stem.with_name(stem.name + ".state.json"), json.dumps(skeleton))
    # Metadata last: a checkpoint is complete when its JSON exists.
    write_atomic(stem.with_name(stem.name + ".json"), json.dumps(metadata, indent=2, sort_keys=True))
    return weights


def resolve_checkpoint(path: str | os.PathLike, *, prefer: str = "best") -> Path:
    """The weights file of a checkpoint path, a checkpoint stem, or a run folder (its ``best`` or ``last``).

    Raises:
        ValueError: Nothing loadable there.
    """
    path = Path(path)
    candidates = []
    if path.is_dir():
        other = "last" if prefer == "best" else "best"
        candidates = [path / f"{prefer}.safetensors", path / f"{other}.safetensors"]
    elif path.suffix == ".safetensors":
        candidates = [path]
    else:
        candidates = [path.with_name(path.name + ".safetensors")]
    for candidate in candidates:
        if candidate.is_file() and candidate.with_suffix(".json").is_file():
            return candidate
    raise ValueError(f"{path}: no checkpoint (expected NAME.safetensors with NAME.json beside it)")


def load_checkpoint(
    path: str | os.PathLike, *, with_training_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Load weights, metadata and (optionally) the training state of a checkpoint, a stem or a run folder.

    Returns:
        (state_dict, metadata, training_state or None).

    Raises:
        ValueError: Missing or unreadable files.
    """
    weights = resolve_checkpoint(path, prefer="last" if with_training_state else "best")
    try:
        state_dict = load_file(str(weights))
        metadata = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{weights}: unreadable checkpoint ({error})") from error
    training_state = None
    if with_training_state:
        state_file = weights.with_name(weights.stem + ".state.safetensors")
        skeleton_file = weights.with_name(weights.stem + ".state.json")
        if not (state_file.is_file() and skeleton_file.is_file()):
            raise ValueError(f"{weights}: no training state beside it (.state.safetensors/.state.json)")
        training_state = unflatten_state(
            json.loads(skeleton_file.read_text(encoding="utf-8")), load_file(str(state_file))
        )
    return state_dict, metadata, training_state
