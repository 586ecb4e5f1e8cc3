"""Checkpoint averaging (inatcomp average) and export (inatcomp export: ONNX, TorchScript, int8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_train_config as _config
from safetensors.torch import load_file

from inatcomp.cli import main
from inatcomp.formats.predictions import open_predictions
from inatcomp.models.average import average_checkpoints
from inatcomp.predict.deploy import TOLERANCE, export_model
from inatcomp.predict.engine import load_model
from inatcomp.train import train

NAMES = ["Aa aa", "Bb bb", "Cc cc"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two one-epoch runs of one model and category set (different seeds); the first keeps its last 2 epochs."""
    from conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("deploy")
    train_json = write_tiny_dataset(root / "data", names=NAMES, per_class=8)
    a = train(_config(train_json, root / "a", epochs=2, keep_epochs=2, val=str(train_json)))
    b = train(_config(train_json, root / "b", seed=1))
    return train_json, a, b


def test_averaging_identical_checkpoints_returns_it(runs, tmp_path):
    _, a, _ = runs
    out = average_checkpoints([a.best_checkpoint, a.best_checkpoint], out=tmp_path / "same")
    original, averaged = load_file(a.best_checkpoint), load_file(out)
    assert set(original) == set(averaged)
    for key, tensor in original.items():
        assert torch.equal(averaged[key], tensor), key
    record = json.loads(out.with_suffix(".json").read_text())["average"]
    assert [c["path"] for c in record["checkpoints"]] == [str(a.best_checkpoint)] * 2


def test_a_soup_is_the_mean_and_predict_loads_it(runs, tmp_path):
    train_json, a, b = runs
    assert main(["average", str(a.run_dir), str(b.run_dir), "--out", str(tmp_path / "soup")]) == 0
    first, second, soup = (load_file(p) for p in (a.best_checkpoint, b.best_checkpoint, tmp_path / "soup.safetensors"))
    key = next(k for k, v in first.items() if v.is_floating_point() and not torch.equal(v, second[k]))
    torch.testing.assert_close(soup[key], (first[key] + second[key]) / 2)
    assert main(["predict", "--checkpoint", str(tmp_path / "soup"), "--data", str(train_json),
                 "--out", str(tmp_path / "soup.pred")]) == 0  # fmt: skip
    assert open_predictions(tmp_path / "soup.pred").n_images == 24


def test_average_the_last_epochs_of_a_run(runs, tmp_path):
    _, a, _ = runs
    kept = sorted((a.run_dir / "epochs").glob("epoch*.safetensors"))
    assert [p.name for p in kept] == ["epoch000.safetensors", "epoch001.safetensors"]
    assert main(["average", str(a.run_dir), "--last", "2", "--out", str(tmp_path / "last2")]) == 0
    assert main(["average", str(a.run_dir), "--last", "3", "--out", str(tmp_path / "last3")]) != 0  # only 2 kept


def test_averaging_refuses_another_category_set(runs, tmp_path, tiny_dataset):
    _, a, _ = runs
    other_json = tiny_dataset(tmp_path / "other", names=["Dd dd", "Ee ee"], per_class=4)
    other = train(_config(other_json, tmp_path / "other_run"))
    with pytest.raises(ValueError, match="category_ids differs"):
        average_checkpoints([a.best_checkpoint, other.best_checkpoint], out=tmp_path / "bad")
    assert not (tmp_path / "bad.safetensors").exists()


def test_onnx_export_matches_pytorch_and_int8_reports_its_error(runs, tmp_path):
    import onnxruntime

    train_json, a, _ = runs
    assert main(["export", str(a.run_dir), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--int8",
                 "--val", str(train_json)]) == 0  # fmt: skip
    # Checked here again, on other images than the command's: random pixels, a batch size it never saw.
    model, metadata = load_model(a.run_dir)
    size = metadata["data_config"]["input_size"][1]
    x = np.random.default_rng(7).uniform(0, 255, (5, 3, size, size)).astype(np.float32)
    mean = torch.tensor(metadata["data_config"]["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(metadata["data_config"]["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        want = model((torch.from_numpy(x) - mean) / std).numpy()
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixels": x})[0]
    assert np.abs(got - want).max() <= TOLERANCE
    record = json.loads((tmp_path / "m.onnx.json").read_text())
    assert record["category_ids"] == metadata["category_ids"] and record["check"]["max_abs_diff"] <= TOLERANCE
    int8 = record["int8"]
    assert (tmp_path / "m.int8.onnx").is_file() and int8["bytes"] < int8["float_bytes"]
    assert 0.0 <= int8["float_top1_error"] <= 1.0 and 0.0 <= int8["int8_top1_error"] <= 1.0
    assert int8["top1_error_change"] == pytest.approx(int8["int8_top1_error"] - int8["float_top1_error"])


def test_torchscript_export_matches_pytorch(runs, tmp_path):
    train_json, a, _ = runs
    report = export_model(a.run_dir, format="torchscript", out=tmp_path / "m.pt", val=train_json)
    assert report.max_abs_diff <= TOLERANCE
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    x = torch.rand(2, 3, 32, 32) * 255
    model, metadata = load_model(a.run_dir)
    mean = torch.tensor(metadata["data_config"]["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(metadata["data_config"]["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model((x - mean) / std), atol=TOLERANCE, rtol=0)
    with pytest.raises(ValueError, match="--format onnx"):
        export_model(a.run_dir, format="torchscript", out=tmp_path / "q.pt", int8=True)
