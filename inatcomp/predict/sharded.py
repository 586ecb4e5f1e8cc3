"""Prediction on many processes: ``torchrun --nproc_per_node N -m inatcomp.cli predict …``.

Each process predicts one contiguous share of the images (:func:`shard_range`) and writes its float16 rows to a
part file beside the output (:class:`PartWriter`, the rows exactly as the prediction file stores them); the
processes then exchange their outcomes (:func:`gather_outcomes`): when every rank succeeded, rank 0 joins the parts
in rank order into the one ``.pred`` folder (:func:`join_parts`, through the ordinary
:class:`~inatcomp.formats.predictions.PredictionWriter`), its header recording ``"world_size": N``; when any rank
failed, every rank fails with the failed ranks named, and no folder is written. The part files are removed either
way. A one-process run writes its folder directly and never comes here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from inatcomp.data.feed import DistributedContext, device_for_rank
from inatcomp.formats.predictions import PredictionWriter

__all__ = ["PartWriter", "gather_outcomes", "join_group", "join_parts", "part_path", "shard_range"]

_logger = logging.getLogger(__name__)

#: Rows copied from the parts into the prediction file at a time.
_JOIN_ROWS = 4096


def join_group(device: torch.device) -> tuple[DistributedContext, torch.device, bool]:
    """Join torchrun's process group when launched under it (gloo on the CPU, NCCL on CUDA).

    Returns:
        The context, this process's device (``cuda:LOCAL_RANK`` for ``cuda``) and whether the group was started
        here (then destroying it is the caller's).

    Raises:
        ValueError: More processes on this machine than GPUs.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistributedContext(), device, False
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_for_rank(device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        # gloo also for CUDA tensors-free exchanges: only Python objects cross between the ranks here.
        dist.init_process_group(backend="gloo")
    context = DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    return context, device, owns


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The rows ``[start, end)`` of ``n`` that ``rank`` predicts: contiguous, sizes differing by at most one."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def part_path(out: str | os.PathLike, rank: int) -> Path:
    """The part file of ``rank`` beside the prediction folder ``out`` (hidden, named by the folder and rank)."""
    out = Path(out)
    return out.with_name(f".{out.name}.part-{rank}")


class PartWriter:
    """Rows of one rank's share as float16, appended to its part file; ``header`` gathers what the rank saw.

    The same :meth:`write` as :class:`~inatcomp.formats.predictions.PredictionWriter`, so the prediction loop
    does not know which it writes to.
    """

    def __init__(self, path: Path, *, rows: int, classes: int) -> None:
        self.path, self.rows, self.classes = path, rows, classes
        self.rows_written = 0
        self.header: dict[str, Any] = {}
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, scores: np.ndarray) -> None:
        """Append rows (stored as float16, as the prediction file stores them)."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != self.classes:
            raise ValueError(f"rows must be [n, {self.classes}], got {scores.shape}")
        np.ascontiguousarray(scores, dtype="<f2").tofile(self._file)
        self.rows_written += len(scores)

    def close(self) -> None:
        """Close the file; raises when the share's rows are not all there."""
        self._file.close()
        if self.rows_written != self.rows:
            raise ValueError(f"{self.path}: {self.rows_written} rows written for {self.rows} images")


def gather_outcomes(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's outcome (``{"error": str | None, "bad_input": bool, ...}``) on every rank, in rank order.

    Raises:
        ValueError: Some rank failed on bad input, naming each failed rank and its error (the same on every rank).
        RuntimeError: Some rank failed otherwise, named likewise.
    """
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, outcome)
    failed = [(rank, o) for rank, o in enumerate(outcomes) if o.get("error")]
    if failed:
        message = "; ".join(f"prediction failed on rank {rank}: {o['error']}" for rank, o in failed)
        # Bad input on a rank (a ValueError there) stays bad input; anything else is an internal error.
        raise (ValueError if all(o.get("bad_input") for _, o in failed) else RuntimeError)(message)
    return outcomes


def join_parts(
    out: str | os.PathLike, *, world_size: int, image_ids: np.ndarray, category_ids: np.ndarray, header: dict[str, Any]
) -> Path:
    """Write the prediction folder from the ranks' part files, in rank order (rank 0 only).

    Args:
        out: The prediction folder.
        world_size: The number of ranks (and of part files).
        image_ids: All the images' ids, in the order of the shares.
        category_ids: The columns' ids.
        header: The header fields (``world_size`` is added).
    """
    classes = len(category_ids)
    with PredictionWriter(out, image_ids=image_ids, category_ids=category_ids,
                          header={**header, "world_size": world_size}) as writer:  # fmt: skip
        for rank in range(world_size):
            part = part_path(out, rank)
            if not classes or part.stat().st_size == 0:  # an empty share (more ranks than images)
                continue
            rows = np.memmap(part, dtype="<f2", mode="r").reshape(-1, classes)
            for start in range(0, len(rows), _JOIN_ROWS):
                writer.write(np.asarray(rows[start : start + _JOIN_ROWS]))
            del rows  # the map closed before the part is removed
    return Path(out)
