"""Checkpoints: safetensors for the tensors, JSON for everything else; nothing is ever unpickled.

A checkpoint is two files side by side: ``NAME.safetensors`` (tensors only, safe to load from strangers)
and ``NAME.json`` (model name, category ids in head order, data config, training config, metrics, the head
when it is not timm's: :func:`head_metadata`, read back by :func:`head_options`). Training state for an exact
resume (optimizer, scheduler, EMA, RNG states) is stored the same way: tensors in safetensors
(``NAME.state.safetensors``), the rest in JSON (``NAME.state.json``, see :func:`flatten_state`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from inatcomp.fileio import read_json, resolve_checkpoint, write_atomic
from inatcomp.models.heads import CovarianceModel, HeadType

__all__ = [
    "file_sha256",
    "flatten_state",
    "head_metadata",
    "head_options",
    "load_checkpoint",
    "load_tensors",
    "read_metadata",
    "save_checkpoint",
    "save_tensors",
    "unflatten_state",
]


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def head_metadata(model: torch.nn.Module) -> dict[str, Any]:
    """The head of a model from :func:`~inatcomp.models.factory.create_model` as checkpoint metadata.

    ``{"type": "avg"}`` for timm's own head.
    """
    module = getattr(model, "module", model)
    module = getattr(module, "_orig_mod", module)
    if isinstance(module, CovarianceModel):
        return module.head_config
    return {"type": HeadType.AVG.value}


def head_options(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :func:`~inatcomp.models.factory.create_model` that rebuild a checkpoint's head.

    Reads the ``head`` entry :func:`save_checkpoint` writes; checkpoints without one have timm's head.

    Raises:
        ValueError: An unknown head type.
    """
    head = metadata.get("head") or {"type": HeadType.AVG.value}
    if isinstance(head, str):
        head = {"type": head}
    try:
        head_type = HeadType(head.get("type", HeadType.AVG.value))
    except ValueError:
        raise ValueError(f"checkpoint head {head!r}: not one of {', '.join(h.value for h in HeadType)}") from None
    if head_type is HeadType.AVG:
        return {}
    return {"head": head_type, "head_dim": int(head["dim"]), "head_iterations": int(head["iterations"])}


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


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on the CPU.

    Raises:
        ValueError: One line naming the file and what is wrong with it: missing or unreadable, or not a whole
            safetensors file (truncated by an interrupted copy or download, or corrupt), rather than
            safetensors' own exception.
    """
    try:
        return load_file(str(path))
    except SafetensorError as error:
        reason = str(error).removeprefix("Error while deserializing header: ")
        raise ValueError(
            f"{path}: not a whole safetensors file ({reason}; {_size(path)}): truncated or corrupt, "
            "copy or write it again"
        ) from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read ({error.strerror or error})") from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object beside a checkpoint's weights (``NAME.json``).

    Raises:
        ValueError: Missing, unreadable or malformed JSON, or JSON that is not an object, naming the file.
    """
    metadata = read_json(path)
    if not isinstance(metadata, dict):
        raise ValueError(
            f"{path}: $: expected a JSON object (the checkpoint's metadata), got {type(metadata).__name__}"
        )
    return metadata


def _size(path: str | os.PathLike) -> str:
    """The size of a file in words, for messages about damaged files."""
    try:
        return f"{os.path.getsize(path):,} bytes"
    except OSError:
        return "size unknown"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file atomically (temporary file, then rename)."""
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
        metadata: JSON-serialisable facts: model name, category ids in head order, configs, metrics. A
            non-default head (iSQRT-COV) is added as ``head`` unless given (see :func:`head_options`).
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
    if isinstance(module, CovarianceModel) and "head" not in metadata:
        metadata = {**metadata, "head": head_metadata(module)}
    weights = stem.with_name(stem.name + ".safetensors")
    save_tensors(weights, {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
    if training_state is not None:
        tensors, skeleton = flatten_state(training_state)
        save_tensors(stem.with_name(stem.name + ".state.safetensors"), tensors)
        write_atomic(stem.with_name(stem.name + ".state.json"), json.dumps(skeleton))
    # Metadata last: a checkpoint is complete when its JSON exists.
    write_atomic(stem.with_name(stem.name + ".json"), json.dumps(metadata, indent=2, sort_keys=True))
    return weights


def load_checkpoint(
    path: str | os.PathLike, *, with_training_state: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any] | None]:
    """Load weights, metadata and (optionally) the training state of a checkpoint, a stem or a run folder.

    Returns:
        (state_dict, metadata, training_state or None).

    Raises:
        ValueError: Missing, unreadable, truncated or corrupt files, or malformed metadata, naming the file.
    """
    weights = resolve_checkpoint(path, prefer="last" if with_training_state else "best")
    # The metadata first: it is small, and its message is the clearer one when both are damaged.
    metadata = read_metadata(weights.with_suffix(".json"))
    state_dict = load_tensors(weights)
    training_state = None
    if with_training_state:
        state_file = weights.with_name(weights.stem + ".state.safetensors")
        skeleton_file = weights.with_name(weights.stem + ".state.json")
        if not (state_file.is_file() and skeleton_file.is_file()):
            raise ValueError(f"{weights}: no training state beside it (.state.safetensors/.state.json)")
        skeleton, tensors = read_json(skeleton_file), load_tensors(state_file)
        try:
            training_state = unflatten_state(skeleton, tensors)
        except KeyError as error:
            raise ValueError(f"{skeleton_file}: names tensor {error.args[0]!r}, which {state_file} lacks") from None
    return state_dict, metadata, training_state
