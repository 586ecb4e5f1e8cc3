"""Batches from loader workers in shared memory that each worker reuses, not a fresh block per batch.

torch's default collate, in a loader worker, stacks each batch into a new shared-memory block and sends its file
descriptor to the main process, a block per tensor (the labels, indices and counts too). On a VM the first touch
of a new block's pages costs far more than the stack itself (for the 4.8 MB of 32 uint8 crops of 224 px, 3.5 ms
against 0.08 ms into pages touched before, measured here on 2026-12-04), and each descriptor is a round trip to
the worker's resource-sharer thread: the workers spend more CPU per image than the same transform in one process
(``benchmarks/loader.py`` measures both hand-overs side by side).

:class:`SharedBatchCollate` gives each worker a few *slots*: shared-memory blocks the worker allocates once (sized
by its first batch, grown if a batch needs more), sends to the main process once, and writes every later batch
into. All of a batch's tensors go into one slot; the worker sends only the slot's number and the tensors' places.
The main process rebuilds the same structure (a collated :class:`~inatcomp.data.dataset.Sample`, or whatever the
wrapped collate returns) with tensors that are views of the slot, and the slot is handed back to its worker when
the last of those tensors (and every view of them) is gone: a batch the caller keeps is never overwritten. A
worker takes its lowest free slot, so while the caller keeps up it cycles through the few it needs and the rest
are never allocated. When all of a worker's slots are held, the worker collates the usual way (a fresh block), so
holding batches costs speed, never correctness.

Which slots are held is kept in a small shared table per set of workers (:class:`SharedBatchLoader` makes a new
one while each set starts, seen by no other workers): a worker marks a free slot taken before writing into it and
the main process marks it free when the batch is gone, so each entry has one writer at a time and needs no lock.
Batches a finished set of workers never delivered (a loop left early) take their table with them when the
iterator is gone. Only plain tensors in tuples, named tuples, lists and dicts travel in slots; anything else (a
tensor subclass, other strides, another container) keeps torch's own way.

The price is shared memory held while the loader's workers run: ``slots`` blocks per worker, each the size of
its largest batch, where torch's blocks live only while a batch is in flight (:func:`create_loader` gives a
worker its prefetch plus the batches alive outside it; with 3 or more workers, its prefetch plus one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import itertools
import logging
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info
from torch.utils.data._utils.collate import collate, default_collate_fn_map

__all__ = ["SharedBatchCollate", "SharedBatchLoader"]

_logger = logging.getLogger(__name__)

#: Byte alignment of each tensor in a slot (any dtype's element, and a cache line).
_ALIGN = 64
#: A slot that grows is allocated with this much room over the batch that needs it (when the number of views
#: per image varies, batches do).
_HEADROOM = 1.25

#: The collates of this process's loaders, by token (the main process's rebuild finds its slots here).
_OWNERS: weakref.WeakValueDictionary[str, SharedBatchCollate] = weakref.WeakValueDictionary()


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


@dataclasses.dataclass(frozen=True)
class _Placed:
    """Where a tensor of the batch lies in its slot."""

    offset: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _view_at(
    memory: torch.Tensor | np.ndarray, offset: int, shape: tuple[int, ...], dtype: torch.dtype
) -> torch.Tensor:
    """The tensor of ``shape`` and ``dtype`` at byte ``offset`` of a slot's flat uint8 memory."""
    return memory[offset : offset + _nbytes(shape, dtype)].view(dtype).view(shape)


def _parameters(function: Callable[..., Any]) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return set()


def _in_slot(tensor: Any) -> bool:
    """A tensor that can travel in a slot: a plain, contiguous tensor (a subclass, or other strides, keeps torch's
    own pickling, which keeps them)."""
    return type(tensor) is torch.Tensor and tensor.is_contiguous() and not tensor.requires_grad


def _map(value: Any, leaf: Callable[[Any], Any], test: Callable[[Any], bool]) -> Any:
    """``value`` with each item ``test`` accepts replaced by ``leaf(item)``.

    Only plain tuples, named tuples, lists and dicts are walked: anything else travels as it is (a slot's tensor
    found nowhere in the walk is caught by the caller).
    """
    if test(value):
        return leaf(value)
    kind = type(value)
    if kind is tuple or (isinstance(value, tuple) and hasattr(value, "_fields")):
        items = (_map(v, leaf, test) for v in value)
        return kind(*items) if kind is not tuple else tuple(items)
    if kind is list:
        return [_map(v, leaf, test) for v in value]
    if kind is dict:
        return {k: _map(v, leaf, test) for k, v in value.items()}
    return value


class _SlotWriter:
    """Lays a batch's tensors one after another into a worker's slot (``memory``: flat uint8, or ``None``)."""

    def __init__(self, memory: torch.Tensor | None) -> None:
        self.memory = memory
        self.used = 0
        # id → (offset, tensor) of the tensors stacked straight into the slot; holding them keeps their ids unique.
        self.placed: dict[int, tuple[int, torch.Tensor]] = {}

    def view(self, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        assert self.memory is not None
        return _view_at(self.memory, offset, shape, dtype)

    def stack(self, batch: list[torch.Tensor], *, collate_fn_map: Any = None) -> torch.Tensor:
        """``torch.stack(batch)`` written into the slot where it fits (no copy later), else in ordinary memory."""
        del collate_fn_map
        elem = batch[0]
        out = self._place_next((len(batch), *elem.shape), elem.dtype) if type(elem) is torch.Tensor else None
        return torch.stack(batch) if out is None else torch.stack(batch, out=out)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor in the slot where it fits (a collate fills it: no copy later), else ordinary."""
        out = self._place_next(tuple(shape), dtype)
        return torch.empty(shape, dtype=dtype) if out is None else out

    def _place_next(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """A tensor at the slot's next free place, remembered as placed; ``None`` when it does not fit."""
        nbytes = _aligned(_nbytes(shape, dtype))
        if self.memory is None or self.used + nbytes > self.memory.numel():
            return None
        out = self.view(self.used, shape, dtype)
        self.placed[id(out)] = (self.used, out)
        self.used += nbytes
        return out

    def offset(self, tensor: torch.Tensor) -> int | None:
        """Where ``tensor`` already lies in the slot, if it was stacked there."""
        placed = self.placed.get(id(tensor))
        return placed[0] if placed is not None and placed[1] is tensor else None


class SharedBatchCollate:
    """A loader's collate that hands batches from its workers over in reused shared-memory slots.

    Args:
        collate: The collate to wrap; ``None``: torch's default collate, its tensors stacked straight into the
            slot. A collate taking an ``empty`` keyword is given one (``empty(shape, dtype)``, like
            ``torch.empty``) that makes the tensor in the slot, to be filled there (no copy afterwards).
        workers: The loader's worker processes.
        slots: Slots per worker: the batches a worker may have in flight or held by the caller before it falls
            back to a fresh block (the loader's prefetch factor plus the batches a caller holds).
    """

    def __init__(self, collate: Callable[[list[Any]], Any] | None = None, *, workers: int, slots: int) -> None:
        if workers < 1 or slots < 1:
            raise ValueError(f"SharedBatchCollate needs at least one worker and one slot, got {workers} and {slots}")
        self.collate = collate
        # A collate with an ``empty`` keyword (``empty(shape, dtype)``, as torch.empty) makes its big tensors
        # with it, so they are made in the slot and filled there.
        self._collate_allocates = collate is not None and "empty" in _parameters(collate)
        self.workers = workers
        self.slots = slots
        self.token = uuid.uuid4().hex
        # The table of held slots of the set of workers being started (set only while they start, so workers of
        # any other loader never see it), and its number.
        self._claims: torch.Tensor | None = None
        self._table = 0
        # In the main process: each running set's table, and its (worker, slot) memories as received.
        self._tables: dict[int, np.ndarray] = {}
        self._received: dict[int, dict[tuple[int, int], tuple[int, np.ndarray]]] = {}
        self._held: set[tuple[int, int, int]] = set()
        #: Batches this process received in a slot (the others came the usual way).
        self.batches_in_slots = 0
        #: Slot memories this process received (each worker sends a slot's memory once, again when it grows).
        self.memories_received = 0
        self._worker_state()
        _OWNERS[self.token] = self

    def _worker_state(self) -> None:
        # In a worker: each slot's memory, whether the main process has it, and the slots' generation counter.
        self._memory: dict[int, tuple[int, torch.Tensor]] = {}
        self._sent: set[int] = set()
        self._counter = itertools.count(1)
        self._room = 0

    def __getstate__(self) -> dict[str, Any]:
        """The state a spawned worker needs (its set's table, the collate), not the main process's."""
        skip = {"_tables", "_received", "_held", "_memory", "_sent", "_counter"}
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tables, self._received, self._held = {}, {}, set()
        self._worker_state()

    @contextlib.contextmanager
    def starting_workers(self) -> Iterator[int]:
        """A new table of held slots for the set of workers started inside (main process); yields its number."""
        self._table += 1
        self._claims = torch.zeros((self.workers, self.slots), dtype=torch.int64).share_memory_()
        self._tables[self._table] = self._claims.numpy()
        self._received[self._table] = {}
        try:
            yield self._table
        except BaseException:
            self.end_workers(self._table)
            raise
        finally:
            self._claims = None  # the started workers have their copy (forked, or pickled by start())

    def end_workers(self, table: int) -> None:
        """Forget a finished set of workers' table and slot memories (batches still held keep their own)."""
        self._tables.pop(table, None)
        self._received.pop(table, None)

    def slots_in_use(self) -> int:
        """Slots held by batches this process has received and not yet dropped."""
        return len(self._held)

    # -- in a worker -------------------------------------------------------------------------------------------

    def __call__(self, items: list[Any]) -> Any:
        """The batch: in a worker, in one of its slots when one is free; in the main process, the plain collate."""
        info = get_worker_info()
        slot = None if info is None or self._claims is None else self._claim(info.id)
        if slot is None:  # in the main process, outside a SharedBatchLoader, or every slot held
            return (self.collate or default_collate)(items)
        try:
            return self._fill(info.id, slot, items)
        except BaseException:
            self._claims[info.id, slot] = 0
            raise

    def _claim(self, worker: int) -> int | None:
        """A free slot of this worker, marked held; ``None`` when all are held."""
        claims = self._claims[worker].numpy()
        # The lowest free slot: while the caller keeps up, a worker cycles through the few slots it needs, their
        # pages already touched (and in cache); the others are touched only when batches pile up.
        for slot in range(self.slots):
            if claims[slot] == 0:
                claims[slot] = 1
                return slot
        _logger.debug("loader worker %d: all %d batch slots held; a fresh block for this batch", worker, self.slots)
        return None

    def _fill(self, worker: int, slot: int, items: list[Any]) -> Any:
        generation, memory = self._memory.get(slot, (0, None))
        if memory is not None and memory.numel() < self._room:
            memory = None  # smaller than a batch seen since: allocate again
        writer = _SlotWriter(memory)
        if self.collate is None:
            batch = collate(items, collate_fn_map={**default_collate_fn_map, torch.Tensor: writer.stack})
        elif self._collate_allocates:
            batch = self.collate(items, empty=writer.empty)
        else:
            batch = self.collate(items)
        tensors: list[torch.Tensor] = []
        _map(batch, tensors.append, _in_slot)
        reached = {id(t) for t in tensors}
        if any(key not in reached for key in writer.placed):
            # A tensor stacked into the slot sits in a container the walk does not enter: it would reach the
            # main process untracked, so this batch goes the usual way.
            self._claims[worker, slot] = 0
            _logger.debug("loader worker %d: a batch in an unknown container; a fresh block for it", worker)
            return (self.collate or default_collate)(items)
        need = writer.used + sum(_aligned(t.numel() * t.element_size()) for t in tensors if writer.offset(t) is None)
        self._room = max(self._room, need)
        if memory is None or need > memory.numel():
            # First batch of this slot (its size exactly: most batches are the same size), or one larger than the
            # slot (with room to spare: sizes that vary keep growing): a new block, every tensor copied into it.
            size = need if memory is None and slot not in self._memory else int(need * _HEADROOM)
            memory = _new_shared(_aligned(size))
            generation = next(self._counter)
            self._memory[slot] = (generation, memory)
            self._sent.discard(slot)
            writer = _SlotWriter(memory)

        def place(tensor: torch.Tensor) -> _Placed:
            offset = writer.offset(tensor)
            if offset is None:
                offset = writer.used
                writer.view(offset, tuple(tensor.shape), tensor.dtype).copy_(tensor)
                writer.used += _aligned(tensor.numel() * tensor.element_size())
            return _Placed(offset, tuple(tensor.shape), tensor.dtype)

        skeleton = _map(batch, place, _in_slot)
        first = slot not in self._sent
        self._sent.add(slot)
        return _SlotBatch(self.token, self._table, worker, slot, generation, memory if first else None, skeleton)

    # -- in the main process -----------------------------------------------------------------------------------

    def _receive(
        self, table: int, worker: int, slot: int, generation: int, memory: torch.Tensor | None, skeleton: Any
    ) -> Any:
        """The batch rebuilt on the slot's memory; the slot is released when its last tensor is gone."""
        received, claims = self._received.get(table), self._tables.get(table)
        if received is None or claims is None:
            # The iterator of these workers is gone (collected while its pin thread still read): nobody takes it.
            _logger.debug("a batch from loader workers that have ended: dropped")
            return None
        if memory is not None:
            received[worker, slot] = (generation, memory.numpy())
            self.memories_received += 1
        known = received.get((worker, slot))
        if known is None or known[0] != generation:
            raise RuntimeError(f"loader worker {worker}'s batch in slot {slot} arrived before the slot's memory")
        view = known[1][:]  # an array object of this batch's own: its end releases the slot
        key = (table, worker, slot)
        self._held.add(key)
        weakref.finalize(view, _release, claims, self._held, key)
        base = torch.from_numpy(view)
        self.batches_in_slots += 1

        return _map(skeleton, lambda placed: _view_at(base, placed.offset, placed.shape, placed.dtype), _is_placed)


def _new_shared(nbytes: int) -> torch.Tensor:
    """A flat uint8 tensor in a new shared-memory block, its pages untouched.

    ``torch.empty(n).share_memory_()`` copies ordinary memory into the block, touching every page of both (about
    20 ms for 24 MB here); a block made shared from the start (as torch's own collate does in a worker) costs
    its pages only when the batch is written into them.
    """
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(nbytes))


def _is_placed(value: Any) -> bool:
    return isinstance(value, _Placed)


def _release(claims: np.ndarray, held: set[tuple[int, int, int]], key: tuple[int, int, int]) -> None:
    held.discard(key)
    claims[key[1], key[2]] = 0


@dataclasses.dataclass
class _SlotBatch:
    """What a worker sends: its set's table, the slot, the slot's memory the first time, the tensors' places."""

    owner: str
    table: int
    worker: int
    slot: int
    generation: int
    memory: torch.Tensor | None
    skeleton: Any

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Unpickled in the main process straight into the batch itself: the loader's pin thread and the caller
        # see an ordinary collated batch.
        return _rebuild, (self.owner, self.table, self.worker, self.slot, self.generation, self.memory, self.skeleton)


def _rebuild(
    owner: str, table: int, worker: int, slot: int, generation: int, memory: torch.Tensor | None, skeleton: Any
) -> Any:
    collate_ = _OWNERS.get(owner)
    if collate_ is None:
        raise RuntimeError("a loader batch arrived for a SharedBatchCollate this process no longer has")
    return collate_._receive(table, worker, slot, generation, memory, skeleton)


class SharedBatchLoader(DataLoader):
    """A DataLoader that gives each set of workers it starts a fresh table of held slots (see the module).

    Its ``collate_fn`` is a :class:`SharedBatchCollate`; with kept workers (``persistent_workers``) one set serves
    every epoch.
    """

    def _get_iterator(self) -> Any:
        collate_ = self.collate_fn
        if self.num_workers == 0 or not isinstance(collate_, SharedBatchCollate):
            return super()._get_iterator()
        if collate_.workers != self.num_workers:
            raise ValueError(
                f"SharedBatchLoader: {self.num_workers} worker(s), its SharedBatchCollate made for {collate_.workers}"
            )
        with collate_.starting_workers() as table:  # the workers take this table with them
            iterator = super()._get_iterator()
        weakref.finalize(iterator, collate_.end_workers, table)
        return iterator
