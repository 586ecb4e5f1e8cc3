"""Tests of the training loop: learning, exact resume, config precedence, run files, bad images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from inatcomp.build import build_dataset
from inatcomp.build.rules import Preset, rules_for
from inatcomp.cli import main
from inatcomp.data import CompetitionDataset, create_loader, create_transform, resolve_data_config
from inatcomp.models.checkpoints import load_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.train import evaluate, lr_at, resolve_config, train
from inatcomp.world.synth import SynthConfig, write_export


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_export(root / "export", SynthConfig(species=12, photos=1500, seed=1, image_size=48))
    build_dataset(root / "export", root / "release", rules=rules_for(Preset.INAT2018, max_train=60), seed=0)
    return root / "release"


def _config(release, out, **overrides):
    values = dict(
        train=str(release / "train2018.json"), val=str(release / "val2018.json"), images=str(release), out=str(out),
        model="resnet10t", img_size=48, epochs=2, batch_size=32, workers=0, lr=0.05, schedule="cosine", log_every=0,
    )  # fmt: skip
    values.update(overrides)
    return resolve_config(overrides=values)


def test_a_tiny_model_learns(release, tmp_path):
    result = train(_config(release, tmp_path / "run", epochs=6, warmup_epochs=1))
    assert result.metrics[-1]["train_loss"] < 0.75 * result.metrics[0]["train_loss"]
    # Accuracy on the train images without augmentation, from the best checkpoint.
    state_dict, metadata, _ = load_checkpoint(tmp_path / "run")
    model = create_model("resnet10t", num_classes=metadata["num_classes"])
    model.load_state_dict(state_dict)
    data_config = resolve_data_config(model, input_size=48)
    dataset = CompetitionDataset(
        release / "train2018.json", release, transform=create_transform(config=data_config, training=False)
    )
    loader = ((b.image, b.label) for b in create_loader(dataset=dataset, batch_size=64))
    # Far below chance after 6 epochs (most of these classes have a sibling in their genus, made hard to tell apart).
    chance = 1 - 1 / dataset.num_classes
    assert evaluate(model, loader, torch.device("cpu"))["val_top1_error"] < chance - 0.25


def test_resume_ends_with_the_same_weights(release, tmp_path):
    # Bit-exact on the CPU; on a GPU only with --deterministic (see test_deterministic_resume_on_cuda).
    common = dict(epochs=2, ema_decay=0.9, device="cpu")
    straight = train(_config(release, tmp_path / "straight", **common))
    train(_config(release, tmp_path / "split", **common), stop_after_epochs=1)
    resumed = train(_config(release, tmp_path / "split", **common), resume=True)
    a, b = load_file(straight.last_checkpoint), load_file(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [m["train_loss"] for m in straight.metrics] == [m["train_loss"] for m in resumed.metrics]


def test_run_folder_files_and_checkpoint_metadata(release, tmp_path):
    result = train(_config(release, tmp_path / "run", epochs=1, sampler="class-balanced", label_smoothing=0.1))
    run = result.run_dir
    expected = {"config.yaml", "metrics.csv", "metrics.json", "best.safetensors", "best.json", "last.safetensors"}
    assert {p.name for p in run.iterdir()} >= expected | {"last.json", "last.state.json", "last.state.safetensors"}
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_top1_error", "val_top3_error", "train_images_per_s", "skipped_images"} <= set(
        header
    )
    metadata = json.loads((run / "best.json").read_text())
    train_json = json.loads((release / "train2018.json").read_text())
    assert metadata["category_ids"] == sorted(c["id"] for c in train_json["categories"])
    assert metadata["model"] == "resnet10t" and metadata["data_config"]["input_size"] == [3, 48, 48]
    assert yaml.safe_load((run / "config.yaml").read_text())["sampler"] == "class-balanced"


def test_crop_scale_reaches_the_train_transform(release, tmp_path):
    a = train(_config(release, tmp_path / "a", epochs=1, crop_scale=[0.08, 1.0]))
    b = train(_config(release, tmp_path / "b", epochs=1, crop_scale=[0.9, 1.0]))
    assert a.metrics[0]["train_loss"] != b.metrics[0]["train_loss"]


def test_config_precedence_and_errors(tmp_path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text("lr: 0.1\nbatch-size: 16\nmodel: resnet10t\n")
    config = resolve_config(
        config_file=config_file, overrides={"train": "t.json", "images": "i", "out": "o", "lr": 0.2, "batch_size": None}
    )
    assert (config.lr, config.batch_size, config.model, config.epochs) == (0.2, 16, "resnet10t", 10)
    config_file.write_text("learning_rate: 0.1\n")
    with pytest.raises(ValueError, match="config.yaml: unknown option 'learning_rate'"):
        resolve_config(config_file=config_file, overrides={})
    with pytest.raises(ValueError, match="--train is required"):
        resolve_config(overrides={"images": "i", "out": "o"})
    with pytest.raises(ValueError, match="label_smoothing > 0"):
        resolve_config(overrides={"train": "t", "images": "i", "out": "o", "taxonomy_smoothing": True})
    with pytest.raises(ValueError, match="amp"):
        resolve_config(overrides={"train": "t", "images": "i", "out": "o", "amp": "fp8"})


def test_learning_rate_schedules():
    config = resolve_config(overrides={"train": "t", "images": "i", "out": "o", "lr": 1.0, "epochs": 10,
                                       "warmup_epochs": 1, "schedule": "cosine"})  # fmt: skip
    rates = [lr_at(config, step, 10) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0) and rates[-1] < 0.01
    assert all(a >= b for a, b in zip(rates[9:], rates[10:]))
    step = resolve_config(overrides={"train": "t", "images": "i", "out": "o", "lr": 1.0, "step_epochs": 3})
    assert [lr_at(step, e * 5, 5) for e in (0, 2, 3, 6)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


def test_missing_and_corrupt_images_are_counted_not_fatal(release, tmp_path):
    import shutil

    broken = tmp_path / "release"
    shutil.copytree(release, broken)
    files = sorted(broken.glob("train_val2018/*/*/*.jpg"))
    files[0].unlink()
    files[1].write_bytes(b"\xff\xd8 broken")
    result = train(_config(broken, tmp_path / "run", epochs=1, amp="bf16", clip_grad=1.0))
    assert result.metrics[0]["skipped_images"] >= 1
    assert np.isfinite(result.metrics[0]["train_loss"])


def test_skipped_images_counts_distinct_bad_images_and_failed_reads_beside_it(release, tmp_path):
    """Each bad image once in ``skipped_images``, however often it was drawn or tried as a replacement."""
    import shutil

    broken = tmp_path / "release"
    shutil.copytree(release, broken)
    train_json = json.loads((broken / "train2018.json").read_text())
    bad = [im["file_name"] for im in train_json["images"][::40]]
    for name in bad:
        (broken / name).write_bytes(b"\xff\xd8 not a JPEG")
    draws = 6 * len(train_json["images"])  # every image drawn about 6 times: the bad ones fail again and again
    result = train(_config(broken, tmp_path / "run", epochs=1, sampler="class-balanced", samples_per_epoch=draws))
    row = result.metrics[0]
    assert row["skipped_images"] == len(bad)
    assert row["failed_reads"] > 2 * len(bad)
    assert row["val_skipped_images"] == row["val_failed_reads"] == 0


def test_cli_train_with_config_and_resume(release, tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"model": "resnet10t", "img_size": 48, "batch_size": 32, "workers": 0,
                                           "lr": 0.05, "log_every": 0}))  # fmt: skip
    out = tmp_path / "run"
    common = [
        "--train",
        str(release / "train2018.json"),
        "--val",
        str(release / "val2018.json"),
        "--images",
        str(release),
    ]
    assert main(["train", "-c", str(config_file), *common, "--out", str(out), "--epochs", "1"]) == 0
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    assert [m["epoch"] for m in json.loads((out / "metrics.json").read_text())] == [0, 1]


def test_command_line_turns_off_a_switch_the_config_file_turns_on(tmp_path):
    from inatcomp.cli import get_args_parser
    from inatcomp.train import AmpMode, OptimizerType, ScheduleType

    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("taxonomy_smoothing: true\nlabel_smoothing: 0.1\n")
    args = get_args_parser().parse_args(["train", "-c", str(config_file), "--no-taxonomy-smoothing"])
    overrides = {"train": "t", "images": "i", "out": "o", "taxonomy_smoothing": args.taxonomy_smoothing}
    assert resolve_config(config_file=config_file, overrides=overrides).taxonomy_smoothing is False
    assert resolve_config(
        config_file=config_file, overrides={**overrides, "taxonomy_smoothing": None}
    ).taxonomy_smoothing
    # The command line offers exactly the enums' choices.
    actions = {a.dest: a for a in get_args_parser()._subparsers._group_actions[0].choices["train"]._actions}
    for name, enum_type in (("optimizer", OptimizerType), ("schedule", ScheduleType), ("amp", AmpMode)):
        assert actions[name].choices == [e.value for e in enum_type]


def test_progressive_stages_change_size_batch_and_dropout_at_their_boundaries(release, tmp_path, monkeypatch):
    import inatcomp.train.recipes as recipes_module

    seen: list[tuple[int, int, float]] = []  # (batch, side, dropout) of each training forward pass
    real_create_model = recipes_module.create_model

    def spied(*args, **kwargs):
        model = real_create_model(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda m, inputs: (
                seen.append((inputs[0].shape[0], inputs[0].shape[-1], m.drop_rate)) if m.training else None
            )
        )
        return model

    monkeypatch.setattr(recipes_module, "create_model", spied)
    stages = [
        {"epochs": 1, "img_size": 32, "batch_size": 32, "magnitude": 0.0, "drop_rate": 0.0},
        {"epochs": 2, "img_size": 48, "batch_size": 16, "drop_rate": 0.3, "lr_scale": 0.5},
    ]
    config = _config(release, tmp_path / "run", epochs=3, progressive=stages, max_steps_per_epoch=3)
    result = train(config)
    assert [(r["img_size"], r["batch_size"]) for r in result.metrics] == [(32, 32), (48, 16), (48, 16)]
    assert seen[:3] == [(32, 32, 0.0)] * 3 and seen[3:] == [(16, 48, 0.3)] * 6
    # The stage's lr scale multiplies the cosine schedule; a checkpoint's data config is its epoch's stage's.
    assert result.metrics[1]["lr"] == pytest.approx(0.5 * lr_at(config, 2 * 3 - 1, 3))
    assert load_checkpoint(tmp_path / "run" / "last")[1]["data_config"]["input_size"] == [3, 48, 48]
    best = load_checkpoint(tmp_path / "run")[1]
    side = {row["epoch"]: row["img_size"] for row in result.metrics}[best["epoch"]]
    assert best["data_config"]["input_size"] == [3, side, side]
    # Resuming mid-run enters the right stage.
    train(
        _config(release, tmp_path / "split", epochs=3, progressive=stages, max_steps_per_epoch=3), stop_after_epochs=1
    )
    seen.clear()
    train(_config(release, tmp_path / "split", epochs=3, progressive=stages, max_steps_per_epoch=3), resume=True)
    assert seen == [(16, 48, 0.3)] * 6


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"epochs": 1}], "the stages last 1 epochs but epochs is 2"),
        ([{"epochs": 1, "size": 32}, {"epochs": 1}], r"progressive\[0\]: unknown key\(s\) size"),
        ([{"img_size": 32}, {"epochs": 2}], r"progressive\[0\]: epochs is required"),
        ([{"epochs": 1}, {"epochs": 1, "batch_size": 0}], r"progressive\[1\]: epochs, batch_size ≥ 1"),
        ([{"epochs": 1}, 5], r"progressive\[1\]: expected a mapping"),
    ],
)
def test_progressive_stage_errors_name_the_stage(tmp_path, stages, message):
    with pytest.raises(ValueError, match=message):
        resolve_config(
            overrides={"train": "t.json", "images": ".", "out": str(tmp_path), "epochs": 2, "progressive": stages}
        )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("sampler: bogus", "sampler: 'bogus' is not one of random, class-balanced, sqrt"),
        ("loss: focal", "loss: 'focal' is not one of ce, class-balanced"),
        ("head: gem", "head: 'gem' is not one of avg, isqrtcov"),
    ],
)
def test_a_bad_choice_in_the_config_file_fails_in_resolve_config(tmp_path, line, message):
    config_file = tmp_path / "recipe.yaml"
    # init names no checkpoint: the choice fails first, before anything is read or loaded.
    config_file.write_text(f"{line}\ninit: {tmp_path / 'missing'}\n")
    with pytest.raises(ValueError, match=message):
        resolve_config(config_file=config_file, overrides={"train": "t", "images": "i", "out": "o"})


def test_the_config_holds_enum_members_and_its_saved_form_round_trips(tmp_path):
    from inatcomp.options import AmpMode
    from inatcomp.train import (
        HeadOption,
        LossOption,
        NewTaxaInitOption,
        OptimizerType,
        SamplerOption,
        ScheduleType,
        TrainConfig,
        TransferMatchOption,
    )
    from inatcomp.train.checkpointing import config_yaml

    options = {"train": "t", "images": "i", "out": "o", "sampler": "class-balanced", "loss": "class_balanced",
               "optimizer": "adamw", "schedule": "cosine", "amp": "bf16", "transfer_match": "name",
               "new_taxa_init": "mean", "head": "isqrtcov"}  # fmt: skip
    config = resolve_config(overrides=options)
    assert (config.sampler, config.loss, config.optimizer, config.schedule, config.amp) == (
        SamplerOption.CLASS_BALANCED, LossOption.CLASS_BALANCED, OptimizerType.ADAMW, ScheduleType.COSINE,
        AmpMode.BF16,
    )  # fmt: skip
    assert (config.transfer_match, config.new_taxa_init, config.head) == (
        TransferMatchOption.NAME, NewTaxaInitOption.MEAN, HeadOption.ISQRTCOV
    )  # fmt: skip
    assert TrainConfig().sampler is SamplerOption.RANDOM and TrainConfig(amp=AmpMode.FP16).amp is AmpMode.FP16
    with pytest.raises(ValueError, match="optimizer: 'adam' is not one of sgd, adamw"):
        TrainConfig(optimizer="adam")
    # config.yaml holds plain strings, as a config file writes them, and reads back to the same config.
    saved = tmp_path / "config.yaml"
    saved.write_text(config_yaml(config))
    plain = yaml.safe_load(saved.read_text())
    assert (plain["sampler"], plain["loss"], plain["amp"], plain["head"]) == ("class-balanced", "class-balanced",
                                                                            "bf16", "isqrtcov")  # fmt: skip
    assert resolve_config(config_file=saved) == config
    assert json.loads(json.dumps(config.to_dict())) == plain


def test_every_choice_field_is_annotated_with_its_enum():
    import dataclasses
    import enum
    import typing

    from inatcomp.train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    choices = {f.name: [m.value for m in hints[f.name]] for f in dataclasses.fields(TrainConfig)
               if isinstance(hints[f.name], type) and issubclass(hints[f.name], enum.Enum)}  # fmt: skip
    assert choices == {
        "transfer_match": ["auto", "id", "name"],
        "new_taxa_init": ["zero", "mean"],
        "head": ["avg", "isqrtcov"],
        "sampler": ["random", "class-balanced", "sqrt"],
        "loss": ["ce", "class-balanced", "logit-adjusted", "balanced-softmax"],
        "stage": ["full", "classifier"],
        "optimizer": ["sgd", "adamw"],
        "schedule": ["step", "cosine"],
        "amp": ["off", "bf16", "fp16"],
        "decode": ["cpu", "gpu"],
    }


@pytest.mark.parametrize(
    "statement", ["import inatcomp.train.config", "from inatcomp.train import TrainConfig, resolve_config"]
)
def test_the_config_imports_no_torch(statement, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import inatcomp

    root = str(Path(inatcomp.__file__).parents[1])  # the code under test, not another installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}

    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("sampler: sqrt\nfreeze: all-but-last-2\n")
    code = (
        f"{statement}\nimport sys\nfrom inatcomp.train import resolve_config\n"
        f"resolve_config(config_file={str(config_file)!r}, overrides={{'train': 't', 'images': 'i', 'out': 'o'}})\n"
        "print(sorted({'torch', 'timm', 'torchvision'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "[]"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU's non-deterministic kernels need a GPU")
def test_deterministic_resume_on_cuda_ends_with_the_same_weights(release, tmp_path):
    common = dict(epochs=2, ema_decay=0.9, device="cuda", deterministic=True)
    straight = train(_config(release, tmp_path / "straight", **common))
    train(_config(release, tmp_path / "split", **common), stop_after_epochs=1)
    resumed = train(_config(release, tmp_path / "split", **common), resume=True)
    a, b = load_file(straight.last_checkpoint), load_file(resumed.last_checkpoint)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_deterministic_settings_hold_inside_the_block_and_are_restored():
    from inatcomp.train.seeding import deterministic_algorithms

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with deterministic_algorithms():
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"]
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
