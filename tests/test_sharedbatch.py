"""Batches from loader workers in reused shared-memory slots (inatcomp.data.sharedbatch)."""

from __future__ import annotations

import gc
from collections import UserDict

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from inatcomp.data import Sample, create_loader
from inatcomp.data.sharedbatch import SharedBatchCollate, SharedBatchLoader
from inatcomp.predict.tta import _collate as _tta_collate

WORKERS = 2
PREFETCH = 2
SLOTS = PREFETCH + 2  # create_loader's slots per worker with 2 workers (3 batches alive outside them, spread)


class _Crops(Dataset):
    """Samples like CompetitionDataset's, each image's values a function of its index (uint8 or float32)."""

    def __init__(self, count: int, *, dtype: torch.dtype = torch.uint8, size: int = 24) -> None:
        self.count, self.dtype, self.size = count, dtype, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> Sample:
        rng = np.random.default_rng(index)
        if self.dtype == torch.uint8:
            image = torch.from_numpy(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8))
        else:
            image = torch.from_numpy(rng.standard_normal((3, self.size, self.size), dtype=np.float32))
        failed = np.full(3, -1, dtype=np.int64)
        failed[0] = index if index % 5 == 0 else -1
        return Sample(image, index % 7, index, int(index % 5 == 0), failed)


class _Views(Dataset):
    """Items with a varying number of views each (as prediction's TTA items), for a custom collate."""

    def __len__(self) -> int:
        return 120

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        views = np.full((index // 8, 8, 8, 3), index, dtype=np.uint8)  # more views further on
        return views, index


def _views_collate(items: list[tuple[np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    views = torch.from_numpy(np.concatenate([item[0] for item in items]))
    counts = torch.tensor([len(item[0]) for item in items], dtype=torch.int64)
    return views, counts, [item[1] for item in items]


class _Nested(Dataset):
    """Items whose default collate puts a tensor in a container the slots do not walk (a UserDict)."""

    def __len__(self) -> int:
        return 160  # enough batches that slots are reused after they grew

    def __getitem__(self, index: int) -> dict:
        return {"inner": UserDict({"value": torch.tensor([index, -index])}), "image": torch.full((16, 16), index)}


def _mixed_collate(items: list[int]) -> dict:
    """A dict batch: a channels-last tensor, an empty one, a float64 one and a string."""
    n = len(items)
    pixels = torch.arange(n * 3 * 4 * 5, dtype=torch.float32).view(n, 3, 4, 5) + items[0]
    return {
        "pixels": pixels.contiguous(memory_format=torch.channels_last),
        "none": torch.empty(0, 7),
        "weights": torch.tensor(items, dtype=torch.float64) / 3,
        "name": f"batch {items[0]}",
    }


class _Indices(Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> int:
        return index


def _loader(dataset: Dataset, **kwargs) -> DataLoader:
    return create_loader(dataset=dataset, batch_size=4, num_workers=WORKERS, prefetch_factor=PREFETCH, **kwargs)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_batches_in_slots_equal_the_plain_collate(dtype):
    dataset = _Crops(50, dtype=dtype)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset)
    seen = 0
    for batch, expected in zip(loader, reference, strict=True):
        assert isinstance(batch, Sample) and _same(batch, expected)
        seen += 1
        del batch
    collate = loader.collate_fn
    assert isinstance(collate, SharedBatchCollate)
    assert collate.batches_in_slots == seen == 13  # every batch came in a slot
    # Each worker sent each slot's memory once at most: the other batches reused it.
    assert collate.memories_received <= WORKERS * SLOTS < seen


def test_released_slots_are_freed_and_kept_batches_never_overwritten():
    dataset = _Crops(120)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset)
    kept = list(loader)  # the caller keeps every batch: once all slots are held the workers fall back
    assert all(_same(b, r) for b, r in zip(kept, reference, strict=True))
    collate = loader.collate_fn
    assert collate.batches_in_slots == WORKERS * SLOTS  # only the first slots' worth came in slots
    assert collate.slots_in_use() == WORKERS * SLOTS
    del kept
    gc.collect()
    assert collate.slots_in_use() == 0  # the last tensor of a batch gone, its slot is free again


def test_a_view_of_a_batch_keeps_its_slot():
    dataset = _Crops(80)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    views = {}
    for i, batch in enumerate(_loader(dataset)):
        if i % 3 == 0:
            views[i] = batch.image.permute(0, 3, 1, 2)[:, 1]  # only a view of the image survives the batch
    assert len(views) == 7
    for i, view in views.items():
        assert torch.equal(view, reference[i].image.permute(0, 3, 1, 2)[:, 1])


def test_a_custom_collate_whose_batches_grow_gets_bigger_slots():
    reference = list(DataLoader(_Views(), batch_size=5, collate_fn=_views_collate))
    loader = create_loader(dataset=_Views(), batch_size=5, num_workers=WORKERS, collate_fn=_views_collate)
    sizes = []
    for batch, expected in zip(loader, reference, strict=True):
        assert _same(batch, expected)
        sizes.append(len(batch[0]))
        del batch
    assert sizes == sorted(sizes) and sizes[-1] > 2 * sizes[2] > 0  # later batches need more room
    collate = loader.collate_fn
    assert collate.batches_in_slots == len(sizes)
    assert collate.memories_received > len(collate._received)  # slots grew: their memory was sent again


class _TTAItems(Dataset):
    """Prediction's items: an image's views (none for an unreadable one), its index, whether it failed."""

    def __len__(self) -> int:
        return 90

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        count = 0 if index % 11 == 3 else 5
        views = np.random.default_rng(index).integers(0, 256, (count, 12, 12, 3), dtype=np.uint8)
        return views, index, int(count == 0)


def test_a_collate_that_takes_empty_fills_the_slot_itself():
    reference = list(DataLoader(_TTAItems(), batch_size=6, collate_fn=_tta_collate))
    loader = create_loader(dataset=_TTAItems(), batch_size=6, num_workers=WORKERS, collate_fn=_tta_collate)
    assert loader.collate_fn._collate_allocates
    for batch, expected in zip(loader, reference, strict=True):
        assert _same(batch, expected)
        del batch
    assert loader.collate_fn.batches_in_slots == len(reference) > loader.collate_fn.memories_received


@pytest.mark.parametrize("persistent", [False, True])
def test_batches_held_across_epochs_stay_intact(persistent):
    dataset = _Crops(40)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset, persistent_workers=persistent)
    held = []
    for _ in range(3):
        for i, batch in enumerate(loader):
            assert _same(batch, reference[i])
            if i in (0, 5):
                held.append((i, batch))
    # Later epochs' workers (new ones, or the kept ones) never wrote into a slot a held batch still has.
    assert all(_same(batch, reference[i]) for i, batch in held)
    collate = loader.collate_fn
    assert collate.batches_in_slots >= 3 * len(reference) - len(held) * 3


def test_loops_left_early_leave_no_slots_held():
    dataset = _Crops(80)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset)
    collate = loader.collate_fn
    for _ in range(6):
        before = collate.batches_in_slots
        for i, batch in enumerate(loader):
            assert _same(batch, reference[i])
            if i == 2:
                break  # the workers had more batches in flight, never delivered
        del batch
        gc.collect()
        # Each epoch's workers start with every slot free, and the ended sets' memories are forgotten.
        assert collate.batches_in_slots - before >= 3  # (and any the main process took ahead of the three)
        assert len(collate._received) <= WORKERS * SLOTS and len(collate._tables) <= 1


def test_spawned_workers_get_the_table_and_send_their_slots():
    # Under spawn (and forkserver, Python 3.14's default) the collate is pickled into the workers.
    dataset = _Crops(40)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    collate = SharedBatchCollate(workers=1, slots=PREFETCH + 3)  # one worker: all 3 batches outside are its
    loader = SharedBatchLoader(
        dataset, batch_size=4, num_workers=1, collate_fn=collate, multiprocessing_context="spawn"
    )
    for batch, expected in zip(loader, reference, strict=True):
        assert _same(batch, expected)
    assert collate.batches_in_slots == len(reference) and collate.memories_received <= PREFETCH + 3


def test_a_tensor_in_an_unknown_container_never_shares_a_slot():
    reference = list(create_loader(dataset=_Nested(), batch_size=4, num_workers=0))
    inner = [batch["inner"]["value"] for batch in _loader(_Nested())]  # only the inner tensors are kept
    assert all(torch.equal(a, r["inner"]["value"]) for a, r in zip(inner, reference, strict=True))


def test_dict_batches_keep_strides_types_and_empty_tensors():
    reference = list(DataLoader(_Indices(), batch_size=5, collate_fn=_mixed_collate))
    loader = create_loader(dataset=_Indices(), batch_size=5, num_workers=WORKERS, collate_fn=_mixed_collate)
    for batch, expected in zip(loader, reference, strict=True):
        assert batch.keys() == expected.keys() and batch["name"] == expected["name"]
        for key in ("pixels", "none", "weights"):
            assert _same(batch[key], expected[key])
        # The channels-last tensor kept its strides (it went torch's way); the others came in the slot.
        assert batch["pixels"].stride() == expected["pixels"].stride()
    assert loader.collate_fn.batches_in_slots == len(reference)


def test_two_iterators_at_once_each_get_their_batches():
    dataset = _Crops(64)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset)
    first, second = iter(loader), iter(loader)
    pairs = [(next(first), next(second)) for _ in range(len(reference))]
    assert all(_same(a, r) and _same(b, r) for (a, b), r in zip(pairs, reference, strict=True))


def test_a_collate_is_only_used_by_its_own_loader():
    dataset = _Crops(24)
    loader = _loader(dataset)
    assert sum(len(b.label) for b in loader) == 24
    in_slots = loader.collate_fn.batches_in_slots
    # The same collate in a plain DataLoader: its workers never see a table, so they collate the usual way.
    plain = DataLoader(dataset, batch_size=4, num_workers=WORKERS, collate_fn=loader.collate_fn)
    assert sum(len(b.label) for b in plain) == 24 and loader.collate_fn.batches_in_slots == in_slots
    with pytest.raises(ValueError, match=r"1 worker\(s\), its SharedBatchCollate made for 2"):
        iter(SharedBatchLoader(dataset, batch_size=4, num_workers=1, collate_fn=loader.collate_fn))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pinned_batches_are_copies_that_free_their_slots_at_once():
    # On CUDA the loader's pin thread copies each batch out of its slot into pinned memory and drops the slot.
    dataset = _Crops(120)
    reference = list(create_loader(dataset=dataset, batch_size=4, num_workers=0))
    loader = _loader(dataset, pin_memory=True)
    kept = list(loader)  # every batch kept, yet no slot stays held: the caller has the pinned copies
    assert all(b.image.is_pinned() and _same(b, r) for b, r in zip(kept, reference, strict=True))
    assert loader.collate_fn.batches_in_slots == len(reference) and loader.collate_fn.slots_in_use() == 0


def test_without_workers_the_plain_collate_runs():
    collate = SharedBatchCollate(workers=1, slots=1)
    batch = collate([_Crops(2)[i] for i in range(2)])
    assert isinstance(batch, Sample) and batch.image.shape == (2, 24, 24, 3)
    assert collate.batches_in_slots == 0
    # In a plain DataLoader (no table of held slots from a SharedBatchLoader) the workers collate the usual way.
    plain = DataLoader(_Crops(8), batch_size=4, num_workers=WORKERS, collate_fn=SharedBatchCollate(workers=2, slots=2))
    assert [len(b.label) for b in plain] == [4, 4] and plain.collate_fn.batches_in_slots == 0
    with pytest.raises(ValueError, match="at least one worker and one slot"):
        SharedBatchCollate(workers=0, slots=2)


def test_reuse_can_be_turned_off():
    loader = create_loader(dataset=_Crops(8), batch_size=4, num_workers=WORKERS, reuse_batch_memory=False)
    assert not isinstance(loader.collate_fn, SharedBatchCollate)
    assert sum(len(b.label) for b in loader) == 8


def test_a_worker_whose_batches_are_dropped_reuses_its_lowest_slots():
    # Batches dropped as they come: one worker with one batch prefetched needs no more than three slots (the
    # batch in flight, the one handed out, the one the caller holds), however many it has; the others are never
    # allocated, so their shared memory is never touched.
    collate = SharedBatchCollate(workers=1, slots=8)
    loader = SharedBatchLoader(_Crops(120), batch_size=4, num_workers=1, prefetch_factor=1, collate_fn=collate)
    for batch in loader:
        assert batch.image.shape == (4, 24, 24, 3)
        del batch
    assert collate.batches_in_slots == 30
    assert collate.memories_received <= 3
