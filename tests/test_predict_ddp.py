"""Tests of prediction on many processes: torchrun with 2 CPU processes (gloo) against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from inatcomp.data.feed import device_for_rank
from inatcomp.formats.predictions import open_predictions
from inatcomp.models.checkpoints import save_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.predict.engine import predict
from inatcomp.predict.sharded import shard_range

NAMES = [f"Genus{i // 2} species{i}" for i in range(5)]


@pytest.fixture
def setup(tmp_path, tiny_dataset):
    data = tiny_dataset(tmp_path, names=NAMES, per_class=3, size=40, file="test.json")
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=len(NAMES))
    metadata = {"model": "resnet10t", "num_classes": len(NAMES), "category_ids": list(range(len(NAMES))),
                "data_config": {"input_size": [3, 32, 32], "crop_pct": 0.875, "interpolation": "bicubic"}}  # fmt: skip
    save_checkpoint(tmp_path / "run" / "best", model, metadata)
    return data, tmp_path / "run"


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "inatcomp.cli", "predict", *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_write_the_one_process_folder(setup, tmp_path):
    data, run = setup
    single = open_predictions(predict(checkpoint=run, data=data, tta="ten-crop", out=tmp_path / "one.pred",
                                      batch_size=4, device="cpu"))  # fmt: skip
    assert single.header["world_size"] == 1
    out = tmp_path / "two.pred"
    done = _torchrun(f"--checkpoint={run}", f"--data={data}", "--tta=ten-crop", f"--out={out}", "--batch-size=4",
                     "--device=cpu", "--workers=0", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    both = open_predictions(out)
    assert both.header["world_size"] == 2 and both.header["views_total"] == single.header["views_total"]
    assert both.image_ids.tolist() == single.image_ids.tolist()
    assert both.category_ids.tolist() == single.category_ids.tolist()
    # float16 rows: equal up to a step of the rounding (batches of other sizes may sum in another order).
    np.testing.assert_allclose(both.memmap().astype(np.float32), single.memmap().astype(np.float32), atol=1e-3)
    # Nothing left beside the folder; only rank 0 logged the summary.
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (done.stdout + done.stderr).count("images/s") == 1


def test_a_failure_on_one_rank_fails_the_command_naming_the_rank(setup, tmp_path):
    data, run = setup
    images = json.loads(data.read_text())["images"]
    # Rank 1 cannot write its part: a folder has its name.
    out = tmp_path / "fail.pred"
    (tmp_path / ".fail.pred.part-1").mkdir()
    done = _torchrun(f"--checkpoint={run}", f"--data={data}", f"--out={out}", "--device=cpu", "--workers=0",
                     cwd=tmp_path)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "prediction failed on rank 1" in output and "rank 0:" not in output
    assert not out.exists() and not (tmp_path / ".fail.pred.part-0").exists()
    assert len(images) == 15


def test_shards_cover_the_rows_once_in_order():
    for n in (0, 1, 7, 15):
        for world in (1, 2, 3, 8):
            ranges = [shard_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            assert max(e - s for s, e in ranges) - min(e - s for s, e in ranges) <= 1


def test_more_processes_than_gpus_is_a_one_line_error():
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"^{count + 1} processes on this machine but {count} GPU\(s\)"):
        device_for_rank(torch.device("cuda"), count, count + 1)
    assert device_for_rank(torch.device("cpu"), 5, 8) == torch.device("cpu")


def test_torchrun_with_more_processes_than_gpus_fails_in_one_line(setup, tmp_path):
    data, run = setup
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a GPU for each process")
    done = _torchrun(f"--checkpoint={run}", f"--data={data}", f"--out={tmp_path / 'x.pred'}", "--device=cuda",
                     cwd=tmp_path)  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"2 processes on this machine but {torch.cuda.device_count()} GPU(s)" in output
    assert "invalid device ordinal" not in output and "CUDA error" not in output
