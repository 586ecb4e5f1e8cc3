"""Training under ``torchrun``: this process's place among the ranks, the process group, sums over the ranks."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.distributed as dist

from inatcomp.data.feed import DistributedContext, device_for_rank, distributed_context
from inatcomp.options import resolve_device

__all__ = ["DistributedContext", "distributed_context", "init_distributed", "all_reduce_sum", "is_main_process"]

_logger = logging.getLogger(__name__)


def init_distributed(device: str | None = "auto") -> tuple[DistributedContext, torch.device, bool]:
    """Join torchrun's process group when launched under it (gloo on the CPU, NCCL on CUDA).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` … (``cuda`` without an index becomes ``cuda:LOCAL_RANK``).

    Returns:
        The context, this process's device and whether the group was started here (then
        ``torch.distributed.destroy_process_group()`` is the caller's to call).

    Raises:
        ValueError: A device torch does not know, or more processes on this machine than GPUs.
    """
    context = distributed_context()
    target = resolve_device(device)
    if not context.enabled:
        return context, target, False
    if target.type == "cuda":
        target = device_for_rank(target, context.local_rank)
        torch.cuda.set_device(target)
    if dist.is_initialized():
        return context, target, False
    dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
    _logger.debug("rank %d of %d joined the process group on %s", context.rank, context.world_size, target)
    return context, target, True


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Sum numbers over the process group (float64, so counts stay exact)."""
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def is_main_process() -> bool:
    """Rank 0 of the running process group, or a process outside any group."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
