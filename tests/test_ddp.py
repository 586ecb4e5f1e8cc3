"""Tests of multi-process training: torchrun with the gloo backend, 2 processes on the CPU, against one process.

The equality holds because rank r's k-th batch of B takes the global positions r, r + 2, … of the single
process's k-th batch of 2B (so the two ranks take exactly that batch), each sample's augmentation is seeded
by its draw, DDP averages the two ranks' mean-loss gradients (the mean over 2B), and the model has no
BatchNorm (whose per-rank batch statistics would differ from the global batch's; ConvNeXt uses LayerNorm).
What remains is float rounding of sums in another order (and other thread counts): about 1e-7 relative per
step, hence the tolerances below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from inatcomp.data import SamplerType, create_sampler
from inatcomp.data.samplers import DrawSampler
from inatcomp.train import resolve_config, train

NAMES = [f"Genus{i // 2} species{i}" for i in range(6)]
RUN_FILES = {"config.yaml", "metrics.csv", "metrics.json", "best.json", "best.safetensors", "last.json",
             "last.safetensors", "last.state.json", "last.state.safetensors"}  # fmt: skip


@pytest.mark.parametrize("sampler_type", list(SamplerType))
def test_rank_batches_make_up_the_single_process_batch(sampler_type):
    labels = np.arange(60) % 7
    batch, world = 4, 2
    single = create_sampler(sampler_type=sampler_type, labels=labels, num_samples=48, seed=3)
    ranks = [create_sampler(sampler_type=sampler_type, labels=labels, num_samples=48, seed=3, rank=r, world_size=world)
             for r in range(world)]  # fmt: skip
    for sampler in (single, *ranks):
        sampler.set_epoch(2)
    whole = list(DrawSampler(single))
    assert [d.index for d in whole] == list(single) and {d.epoch for d in whole} == {2}
    shards = [list(DrawSampler(sampler)) for sampler in ranks]
    for step in range(48 // (batch * world)):
        together = [draw for shard in shards for draw in shard[step * batch : (step + 1) * batch]]
        expected = whole[step * batch * world : (step + 1) * batch * world]
        assert sorted(together, key=lambda d: d.position) == expected


def _torchrun(*args: str, cwd) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "inatcomp.cli", "train", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


def test_two_processes_equal_one_process_on_the_same_global_batch(tmp_path, tiny_dataset):
    train_json = tiny_dataset(tmp_path, names=NAMES, per_class=8)
    val_json = tiny_dataset(tmp_path, names=NAMES, per_class=3, file="val.json", seed=1)
    options = dict(
        train=str(train_json), val=str(val_json), images=str(tmp_path), model="test_convnext", img_size=32,
        sampler="class-balanced", samples_per_epoch=64, lr=0.05, schedule="step", ema_decay=0.5, workers=0, seed=5,
        log_every=1, device="cpu",
    )  # fmt: skip
    single = train(resolve_config(overrides={**options, "out": str(tmp_path / "single"), "batch_size": 16,
                                             "epochs": 2}))  # fmt: skip

    flags = [f"--{key.replace('_', '-')}={value}" for key, value in options.items()]
    out = tmp_path / "ddp"
    first = _torchrun(*flags, f"--out={out}", "--batch-size=8", "--epochs=1", cwd=tmp_path)
    # Only rank 0 logs progress and writes files; every rank loads the checkpoint to resume.
    assert first.count("epoch 0:") == 1 and first.count("epoch 0 step 1/4") == 1
    assert first.count("train.json: 48 images") == 1
    assert {p.name for p in out.iterdir()} == RUN_FILES
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())] == [0]
    second = _torchrun(f"--resume={out}", "--epochs=2", cwd=tmp_path)
    assert second.count("resuming") == 1 and second.count("epoch 1:") == 1
    assert {p.name for p in out.iterdir()} == RUN_FILES

    history = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1]
    for mine, reference in zip(history, single.metrics):
        assert mine["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
        assert mine["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-4)
        assert abs(mine["val_top1_error"] - reference["val_top1_error"]) <= 1 / 18 + 1e-9  # a near-tie may flip
    assert yaml.safe_load((out / "config.yaml").read_text())["batch_size"] == 8  # per process
    ours, theirs = load_file(out / "last.safetensors"), load_file(single.last_checkpoint)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-4, atol=1e-6, msg=key)


def test_two_processes_count_a_bad_image_once(tmp_path, tiny_dataset):
    """A bad image drawn on both ranks is one distinct bad image of the epoch; its failed reads add up."""
    train_json = tiny_dataset(tmp_path, names=NAMES, per_class=8)
    images = json.loads(train_json.read_text())["images"]
    bad = [images[0]["file_name"], images[20]["file_name"]]
    for name in bad:
        (tmp_path / name).write_bytes(b"\xff\xd8 not a JPEG")
    out = tmp_path / "ddp"
    _torchrun(f"--train={train_json}", f"--images={tmp_path}", f"--out={out}", "--model=test_convnext",
              "--img-size=32", "--sampler=class-balanced", "--samples-per-epoch=480", "--batch-size=16",
              "--epochs=1", "--workers=0", "--log-every=0", "--device=cpu", cwd=tmp_path)  # fmt: skip
    row = json.loads((out / "metrics.json").read_text())[0]
    assert row["skipped_images"] == len(bad)
    assert row["failed_reads"] > 2 * len(bad)  # each drawn about ten times, on both ranks
