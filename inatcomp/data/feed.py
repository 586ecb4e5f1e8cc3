"""Feeding batches to the device: uint8 over the bus, normalised there, one batch ahead.

Loader workers return uint8 crops (:class:`~inatcomp.data.transforms.TrainPreset` and
:class:`~inatcomp.data.transforms.EvalPreset` with ``uint8=True``: ``(H, W, 3)`` tensors, so a collated batch
is ``[N, H, W, 3]``): a quarter of the bytes of float32 cross from the workers to the main process and from
the host to the GPU. :func:`device_batches` copies each batch's tensors to the device from pinned memory
without blocking, one batch ahead (on CUDA on a side stream, so the copy overlaps the model's kernels), and
:class:`InputNorm` turns the uint8 images into the normalised float32 ``[N, 3, H, W]`` batch on the device:
``(x / 255 - mean) / std`` per channel, the numbers the float presets computed in the workers.

On the CPU the same code runs with the CPU as the device: no streams, no pinning, the normalisation in the
main process (about a millisecond per 224 px image on one core, the price of the workers' smaller output).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "InputNorm", "device_batches", "device_for_rank", "distributed_context", "to_device"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class InputNorm:
    """How uint8 images become the model's input on the device.

    Attributes:
        mean: Per-channel mean on the 0–1 scale (the data config's).
        std: Per-channel standard deviation on the 0–1 scale.
        channels_last: Hand the model a channels-last batch (the memory order of a ``[N, H, W, 3]`` uint8
            batch: no reordering copy).
    """

    mean: Sequence[float]
    std: Sequence[float]
    channels_last: bool = False

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The model's float32 ``[N, 3, H, W]`` batch from uint8 ``[N, H, W, 3]`` or ``[N, 3, H, W]`` images.

        A floating-point batch (already normalised by a float preset) is only put in the memory format.
        """
        if images.dtype == torch.uint8:
            if images.shape[-1] == 3 and images.shape[1] != 3:
                images = images.permute(0, 3, 1, 2)  # HWC memory seen as NCHW: channels-last strides
            scale, offset = _scale_offset(tuple(self.mean), tuple(self.std), images.device)
            # One multiply-add per value in float32: (x / 255 - mean) / std = x · 1/(255 std) - mean/std, the
            # float presets' convert-scale-add (cv2.addWeighted) to within float32 rounding.
            images = torch.addcmul(offset, images.float(), scale)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=fmt)


@functools.lru_cache(maxsize=16)
def _scale_offset(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[1, 3, 1, 1]`` factors of :class:`InputNorm` on ``device``, made once (no copy to the device per batch)."""
    std_ = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_)).float().view(1, 3, 1, 1)
    offset = (-torch.tensor(mean, dtype=torch.float64) / std_).float().view(1, 3, 1, 1)
    return scale.to(device), offset.to(device)


def to_device(value: Any, device: torch.device, *, pin: bool) -> Any:
    """``value`` (a tensor, or a tuple or list of them and other things) on ``device``, copied without blocking."""
    if isinstance(value, torch.Tensor):
        if pin and value.device.type == "cpu" and not value.is_pinned():  # a tensor made on the device stays
            value = value.pin_memory()
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple (a collated Sample)
        return type(value)(*(to_device(v, device, pin=pin) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(to_device(v, device, pin=pin) for v in value)
    return value


def device_batches(
    batches: Iterable[Any], device: torch.device, *, ahead: int = 1, leading: int | None = None
) -> Iterator[Any]:
    """Each batch with its tensors on ``device``, the copies of the next ``ahead`` batches already started.

    On CUDA the copies run on a side stream from pinned host memory (the loader's ``pin_memory`` pins them
    in its thread; a batch not yet pinned is pinned here), and the consuming stream waits for a batch's copy
    only when it takes that batch; each tensor is marked as used by the consuming stream, so its memory is
    not reused while the model still reads it. Elsewhere the same loop runs with the copies done in order
    (on the CPU they are no-ops).

    Args:
        batches: The loader (tuples or named tuples of tensors and other values).
        device: Where the model runs.
        ahead: Batches whose copies are started before the current one is handed out.
        leading: Move only the first ``leading`` items of each (tuple) batch; the rest stay where they are (e.g.
            counts the host reads). ``None``: all of them.
    """
    cuda = device.type == "cuda" and torch.cuda.is_available()
    stream = torch.cuda.Stream(device=device) if cuda else None
    pending: list[tuple[Any, Any]] = []
    iterator = iter(batches)
    exhausted = False
    while True:
        while not exhausted and len(pending) <= ahead:
            try:
                batch = next(iterator)
            except StopIteration:
                exhausted = True
                break
            if stream is None:
                pending.append((_move(batch, device, pin=False, leading=leading), None))
                continue
            with torch.cuda.stream(stream):
                moved = _move(batch, device, pin=True, leading=leading)
                event = torch.cuda.Event()
                event.record(stream)
            pending.append((moved, event))
        if not pending:
            return
        moved, event = pending.pop(0)
        if event is not None:
            current = torch.cuda.current_stream(device)
            current.wait_event(event)
            _record_stream(moved, current)
        yield moved


def _move(batch: Any, device: torch.device, *, pin: bool, leading: int | None) -> Any:
    """The batch with (its first ``leading`` items, or all of) its tensors on ``device``."""
    if leading is None or not isinstance(batch, tuple | list):
        return to_device(batch, device, pin=pin)
    return type(batch)((*to_device(tuple(batch[:leading]), device, pin=pin), *batch[leading:]))


def _record_stream(value: Any, stream: Any) -> None:
    """Tell the caching allocator that ``stream`` uses these tensors (they were allocated on the side stream)."""
    if isinstance(value, torch.Tensor):
        value.record_stream(stream)
    elif isinstance(value, tuple | list):
        for item in value:
            _record_stream(item, stream)


def device_for_rank(device: torch.device, local_rank: int, local_world_size: int | None = None) -> torch.device:
    """This torchrun process's device: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``.

    Args:
        device: The resolved device.
        local_rank: This process's rank on its machine (torchrun's ``LOCAL_RANK``).
        local_world_size: Processes on this machine (default: torchrun's ``LOCAL_WORLD_SIZE``, else
            ``local_rank + 1``).

    Raises:
        ValueError: More processes on this machine than it has GPUs (one line naming both counts), instead of
            CUDA's "invalid device ordinal" from deep inside the first GPU call.
    """
    if device.type != "cuda":
        return device
    if local_world_size is None:
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    index = device.index if device.index is not None else local_rank
    count = torch.cuda.device_count()
    if device.index is None and local_world_size > count or index >= count:
        raise ValueError(
            f"{local_world_size} processes on this machine but {count} GPU(s): start at most {count} per machine "
            "(torchrun --nproc_per_node), or give --device cpu"
        )
    return torch.device("cuda", index)


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training or prediction processes (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs progress and writes files."""
        return self.rank == 0


def distributed_context() -> DistributedContext:
    """This process's place: from the running process group, else from torchrun's environment, else rank 0 of 1.

    torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) in each process.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(rank=int(os.environ["RANK"]), world_size=world_size, local_rank=local_rank)
