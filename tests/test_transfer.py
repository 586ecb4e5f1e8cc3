"""Tests of the recipes on top of the trainer: head transfer between taxon sets, freezing, val fine-tuning,
and the recipe configs in kernels/configs/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config as _config
from safetensors.torch import load_file

from inatcomp.build import build_dataset, split_val
from inatcomp.build.rules import Preset, rules_for
from inatcomp.cli import main
from inatcomp.models.checkpoints import load_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.freezing import freeze_model
from inatcomp.models.transfer import (
    NewTaxaInit,
    TaxonMatch,
    choose_taxon_match,
    classifier_names,
    taxon_keys,
    transfer_classifier,
)
from inatcomp.options import FreezeMode, parse_freeze
from inatcomp.train import resolve_config, train
from inatcomp.world.synth import SynthConfig, write_export

CONFIGS = Path(__file__).resolve().parents[1] / "kernels" / "configs"
OLD_NAMES = [f"Genus{i // 2} species{i}" for i in range(6)]
# Two taxa dropped (species1, species4), two added; the shared ones at other positions and other ids.
NEW_NAMES = ["Genus1 species3", "Genus0 species0", "Genus9 species90", "Genus2 species5", "Genus9 species91",
             "Genus1 species2"]  # fmt: skip


def _state(rows: int, dim: int = 4) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rows)
    return {
        "body.weight": torch.randn(3, 3, generator=generator),
        "fc.weight": torch.randn(rows, dim, generator=generator),
        "fc.bias": torch.randn(rows, generator=generator),
        "conv_head.weight": torch.randn(rows, dim, 1, 1, generator=generator),
    }


@pytest.mark.parametrize("init", list(NewTaxaInit))
def test_transfer_keeps_shared_rows_bit_for_bit_at_their_new_places(init):
    state = _state(5)
    new, report = transfer_classifier(
        state, source_taxa=[10, 11, 12, 13, 14], target_taxa=[13, 99, 10, 98, 12], classifier=["fc", "conv_head"],
        init=init,
    )  # fmt: skip
    assert new["body.weight"] is state["body.weight"]
    for key in ("fc.weight", "fc.bias", "conv_head.weight"):
        assert new[key].shape == (5, *state[key].shape[1:]) and new[key].dtype == state[key].dtype
        for target, source in ((0, 3), (2, 0), (4, 2)):
            assert torch.equal(new[key][target], state[key][source]), key
        expected = torch.zeros_like(state[key][0]) if init is NewTaxaInit.ZERO else state[key].mean(dim=0)
        for added in (1, 3):
            torch.testing.assert_close(new[key][added], expected, rtol=0, atol=1e-6)
    assert (report.carried, report.added, report.dropped) == (3, [99, 98], [11, 14])
    assert report.to_dict()["added"] == 2 and report.init == init.value


def test_transfer_errors():
    with pytest.raises(ValueError, match="duplicate"):
        transfer_classifier(_state(3), source_taxa=[1, 1, 2], target_taxa=[1], classifier="fc")
    with pytest.raises(ValueError, match="does not fit a head of 4"):
        transfer_classifier(_state(3), source_taxa=[1, 2, 3, 4], target_taxa=[1], classifier="fc")
    with pytest.raises(ValueError, match="no classifier tensor"):
        transfer_classifier(_state(3), source_taxa=[1, 2, 3], target_taxa=[1], classifier="head")


def test_taxon_keys_and_the_automatic_match():
    records = [{"id": 5, "name": "A a"}, {"id": 7, "name": "B b"}]
    assert taxon_keys([5, 7], records, match=TaxonMatch.ID) == [5, 7]
    assert taxon_keys([5, 7], records, match=TaxonMatch.NAME) == ["A a", "B b"]
    assert choose_taxon_match(records, [{"id": 0, "name": "B b"}]) is TaxonMatch.NAME
    assert choose_taxon_match(records, [{"id": 0}]) is TaxonMatch.ID
    assert choose_taxon_match(records, [{"id": 0, "name": "X"}, {"id": 1, "name": "X"}]) is TaxonMatch.ID
    with pytest.raises(ValueError, match="without a name"):
        taxon_keys([5, 7], [{"id": 5, "name": "A a"}, {"id": 7}], match=TaxonMatch.NAME)
    with pytest.raises(ValueError, match="duplicate keys"):
        taxon_keys([5, 7], [{"id": 5, "name": "A"}, {"id": 7, "name": "A"}], match=TaxonMatch.NAME)


def test_parse_freeze():
    assert parse_freeze("none") == (FreezeMode.NONE, 0)
    assert parse_freeze("backbone") == (FreezeMode.BACKBONE, 0)
    assert parse_freeze("all-but-last-2") == (FreezeMode.ALL_BUT_LAST, 2)
    for bad in ("all-but-last-0", "all-but-last", "head", "all-but-last-x"):
        with pytest.raises(ValueError, match="none, backbone, all-but-last-N"):
            parse_freeze(bad)


@pytest.mark.parametrize(("spec", "trained"), [("backbone", ["fc"]), ("all-but-last-1", ["layer4", "fc"])])
def test_frozen_parts_and_their_batchnorm_statistics_do_not_move(spec, trained):
    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=4)
    mode, keep_last = parse_freeze(spec)
    report = freeze_model(model, mode=mode, keep_last=keep_last)
    assert report.trainable_modules[0] == trained[0] and report.frozen_norms > 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == report.trainable_parameters
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(3):
        model.train()  # as every epoch does: frozen BatchNorm layers stay in eval mode
        norms = [m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert any(m.training for m in norms) == (spec != "backbone")
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32) * 3 + 1), torch.arange(8) % 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        moved = not torch.equal(after[key], value)
        is_trained = any(key.startswith(prefix + ".") for prefix in trained)
        if not is_trained:
            assert not moved, f"frozen {key} moved"
        elif key.endswith(("weight", "running_mean")):
            assert moved, f"trained {key} did not move"


def test_freeze_all_but_last_n_checks_n():
    model = create_model("resnet10t", num_classes=3)
    assert classifier_names(model) == ["fc"]
    with pytest.raises(ValueError, match="5 stages"):
        freeze_model(model, mode=FreezeMode.ALL_BUT_LAST, keep_last=6)


def test_init_from_another_taxon_set_moves_rows_by_name_and_freezes_the_backbone(tmp_path, tiny_dataset):
    old = tiny_dataset(tmp_path / "old", names=OLD_NAMES, per_class=4)
    new = tiny_dataset(tmp_path / "new", names=NEW_NAMES, ids=[40, 41, 42, 43, 44, 45], per_class=4)
    source = train(_config(old, tmp_path / "source"))
    weights = load_file(source.last_checkpoint)
    # lr 0 and BatchNorm statistics frozen: the run's weights are the transferred ones.
    copied = train(_config(new, tmp_path / "copied", init=str(source.run_dir / "last"), lr=0.0,
                           new_taxa_init="mean", freeze="backbone"))  # fmt: skip
    head = load_file(copied.last_checkpoint)
    for new_row, name in enumerate(NEW_NAMES):
        for key in ("fc.weight", "fc.bias"):
            if name in OLD_NAMES:
                assert torch.equal(head[key][new_row], weights[key][OLD_NAMES.index(name)]), (key, name)
            else:
                torch.testing.assert_close(head[key][new_row], weights[key].mean(dim=0), rtol=0, atol=1e-6)
    assert all(torch.equal(head[k], weights[k]) for k in weights if not k.startswith("fc."))
    row = copied.metrics[0]
    assert (row["taxa_carried"], row["taxa_added"], row["taxa_dropped"]) == (4, 2, 2)
    transfer = json.loads((copied.run_dir / "best.json").read_text())["transfer"]
    assert transfer["match"] == "name" and transfer["dropped_taxa"] == ["Genus0 species1", "Genus2 species4"]
    assert json.loads((copied.run_dir / "metrics.json").read_text())[0]["taxa_added"] == 2

    # Backbone frozen, lr > 0: only the classifier moves; BatchNorm statistics included, nothing else does.
    frozen = train(_config(new, tmp_path / "frozen", init=str(source.run_dir / "last"), freeze="backbone",
                           lr=0.1, epochs=2))  # fmt: skip
    trained = load_file(frozen.last_checkpoint)
    assert all(torch.equal(trained[k], weights[k]) for k in weights if not k.startswith("fc.")), "backbone moved"
    assert not torch.equal(trained["fc.weight"], head["fc.weight"])

    with pytest.raises(ValueError, match="duplicate keys"):  # names asked for, but not unique on one side
        doubled = tiny_dataset(tmp_path / "doubled", names=["A a", "A a"], ids=[1, 2], per_class=2)
        train(_config(doubled, tmp_path / "bad", init=str(source.run_dir / "last"), transfer_match="name"))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("valft")
    write_export(root / "export", SynthConfig(species=12, photos=1500, seed=1, image_size=48))
    build_dataset(root / "export", root / "release", rules=rules_for(Preset.INAT2018, max_train=60), seed=0)
    return root / "release"


def test_val_finetune_recipe_loads_trains_and_writes(release, tmp_path):
    base = tmp_path / "base"
    common = ["--images", str(release), "--workers", "0", "--log-every", "0", "--batch-size", "16"]
    assert main(["train", "--train", str(release / "train2018.json"), "--out", str(base), "--model", "resnet10t",
                 "--img-size", "32", "--epochs", "1", "--lr", "0.05", *common]) == 0  # fmt: skip
    split_val(release / "val2018.json", tmp_path / "minival", minival_frac=0.3)
    # A val file that lists only the classes it has images of, one class short: the head stays the base's.
    rest = json.loads((tmp_path / "minival" / "val.json").read_text())
    gone = rest["categories"][0]["id"]
    rest["categories"] = [c for c in rest["categories"] if c["id"] != gone]
    kept = {a["image_id"] for a in rest["annotations"] if a["category_id"] != gone}
    rest["images"] = [i for i in rest["images"] if i["id"] in kept]
    rest["annotations"] = [a for a in rest["annotations"] if a["image_id"] in kept]
    (tmp_path / "val_rest.json").write_text(json.dumps(rest))

    out = tmp_path / "valft"
    assert main(["train", "-c", str(CONFIGS / "val_finetune.yaml"), "--init", str(base), "--train",
                 str(tmp_path / "val_rest.json"), "--val", str(tmp_path / "minival" / "minival.json"), "--out",
                 str(out), *common]) == 0  # fmt: skip
    base_weights, base_meta, _ = load_checkpoint(base)
    weights, metadata, _ = load_checkpoint(out / "last")
    assert metadata["category_ids"] == base_meta["category_ids"] and metadata["model"] == "resnet10t"
    assert metadata["categories"][0]["name"] == base_meta["categories"][0]["name"]  # filled from --init
    assert metadata["train_config"]["img_size"] == 32 and metadata["train_config"]["lr"] == 0.0005
    assert metadata["transfer"]["carried"] == len(base_meta["category_ids"])
    history = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in history] == [0, 1, 2] and "val_top1_error" in history[-1]
    # Loaded, then trained a little: close to the base weights, not to a fresh model's.
    fresh = create_model("resnet10t", num_classes=len(base_meta["category_ids"])).state_dict()
    key = "layer1.0.conv1.weight"
    moved = (weights[key] - base_weights[key]).norm()
    assert 0 < moved < 0.1 * (fresh[key] - base_weights[key]).norm()
    # freeze_norm_stats: every BatchNorm keeps the base's running statistics while its weights train.
    stats = [k for k in weights if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(weights[k], base_weights[k]) for k in stats)
    assert not torch.equal(weights["bn1.weight"], base_weights["bn1.weight"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_recipe_configs_resolve(path):
    overrides = {"train": "t.json", "images": "i", "out": "o", "init": "runs/x", "model": "resnet10t",
                 "img_size": 32, "crop_pct": 0.875, "head": "avg"}  # fmt: skip
    config = resolve_config(config_file=path, overrides=overrides)
    parse_freeze(config.freeze)
    assert config.lr > 0 and config.epochs >= 1
