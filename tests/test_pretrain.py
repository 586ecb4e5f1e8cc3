"""Tests of the pretraining world, ``inatcomp pretrain`` and ``--pretrained synth`` / ``none``.

The weights tests use a weights folder written here (``INATCOMP_WEIGHTS_DIR``), never the package's own; the
last two test the weights the package ships (``make pretrain``).
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from inatcomp.cli import main
from inatcomp.formats.taxonomy import LIFE_TAXON_ID
from inatcomp.models.checkpoints import file_sha256
from inatcomp.models.factory import create_model
from inatcomp.models.pretrained import SYNTH_WEIGHTS_ENV
from inatcomp.options import PretrainedSource, parse_pretrained
from inatcomp.world.synth import SynthConfig, write_export
from inatcomp.world.taxa import World, generate_taxonomy

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "inatcomp" / "models" / "weights" / "resnet10t-synth.safetensors"
TINY = ["--species", "12", "--photos", "300", "--img-size", "16", "--epochs", "1", "--model", "resnet10t"]


def read_taxa(folder: Path) -> list[dict[str, str]]:
    with open(folder / "taxa.csv", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_the_pretraining_world_shares_no_taxon_id_and_no_low_rank_name_with_a_competition(tmp_path):
    for seed in (0, 1000):  # the same seed as the competition's, and pretrain's own default
        write_export(tmp_path / "competition", SynthConfig(species=80, photos=800, seed=0, images=False))
        pretrain = SynthConfig(species=80, photos=800, seed=seed, images=False, namespace=World.PRETRAIN)
        write_export(tmp_path / "pretrain", pretrain)
        competition, world = read_taxa(tmp_path / "competition"), read_taxa(tmp_path / "pretrain")
        ids = {row["taxon_id"] for row in competition} & {row["taxon_id"] for row in world}
        assert ids == {str(LIFE_TAXON_ID)}
        assert min(int(row["taxon_id"]) for row in world if row["rank"] != "stateofmatter") >= 50_000_000
        low = {row["name"] for row in competition if float(row["rank_level"]) <= 40}
        low_world = {row["name"] for row in world if float(row["rank_level"]) <= 40}
        assert low and low_world and not low & low_world
        # Kingdom, phylum and class are the real ones in both worlds: the same names.
        high = {row["name"] for row in world if 40 < float(row["rank_level"]) < 100}
        assert high <= {row["name"] for row in competition}
    # Larger taxonomies too: every pretraining name begins with a letter no competition name begins with.
    big = generate_taxonomy(3000, 7, namespace=World.PRETRAIN).taxa
    other = generate_taxonomy(3000, 7).taxa
    assert set(big[big.rank_level <= 40].name.str[0]) <= set("KZWJ")
    assert not set(big[big.rank_level <= 40].name) & set(other[other.rank_level <= 40].name)


def test_a_real_taxonomy_is_refused_for_the_pretraining_world(tmp_path):
    path = tmp_path / "taxa.csv"
    path.write_text("id\n")
    with pytest.raises(ValueError, match="a pretraining world is always generated"):
        SynthConfig(species=2, photos=2, taxonomy=str(path), namespace=World.PRETRAIN).check()


def test_parse_pretrained_words():
    assert parse_pretrained("synth") == (PretrainedSource.SYNTH, "synth")
    assert parse_pretrained("none") == (PretrainedSource.NONE, "none")
    assert parse_pretrained("./synth") == (PretrainedSource.FILE, "./synth")
    model = create_model("resnet10t", num_classes=3, pretrained="none")
    assert model.get_classifier().out_features == 3


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """``inatcomp pretrain --install`` on a tiny world, into a weights folder that already holds another entry."""
    root = tmp_path_factory.mktemp("pretrain")
    weights_dir = root / "weights"
    weights_dir.mkdir()
    (weights_dir / "manifest.json").write_text(json.dumps({"othernet": {"model": "othernet", "file": "x"}}))
    readme = root / "README.md"
    readme.write_text("Top.\n<!-- pretrain:begin (x) -->\nold\n<!-- pretrain:end -->\nTail.\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SYNTH_WEIGHTS_ENV, str(weights_dir))
        assert main(["pretrain", "--out", str(root / "out"), *TINY, "--install", "--readme", str(readme)]) == 0
    return root / "out", weights_dir


def test_pretrain_writes_weights_and_a_manifest(pretrained):
    out, weights_dir = pretrained
    weights = out / "resnet10t-synth.safetensors"
    entry = json.loads((out / "manifest.json").read_text())["resnet10t"]
    assert entry["sha256"] == file_sha256(weights) and entry["bytes"] == weights.stat().st_size
    assert entry["file"] == weights.name and entry["model"] == "resnet10t" and entry["img_size"] == 16
    assert len(entry["mean"]) == len(entry["std"]) == 3
    assert entry["data"]["namespace"] == "pretrain" and entry["data"]["world_seed"] == 1000
    assert entry["data"]["species"] == 12 and entry["data"]["photos"] == 300 and entry["data"]["classes"] >= 2
    assert entry["data"]["images"]["train"] > 0
    assert entry["training"] == {**entry["training"], "epochs": 1, "lr": 0.05, "batch_size": 64, "seed": 1000}
    assert 0 <= entry["result"]["val_top1_error"] <= 1 and 0 <= entry["result"]["val_top3_error"] <= 1
    assert entry["command"].startswith("inatcomp pretrain --out ") and "--install" in entry["command"]
    assert entry["date"] and entry["machine"]["cpus"] >= 1 and entry["machine"]["platform"]
    assert entry["seconds"] > 0
    # --readme: the block between the markers says what was shipped, from the manifest entry.
    block = (out.parent / "README.md").read_text()
    assert block.startswith("Top.\n<!-- pretrain:begin (x) -->\nShipped: `resnet10t-synth.safetensors`")
    assert f"sha256 `{entry['sha256'][:16]}" in block and "12 species and 300 photos" in block
    assert "old" not in block and block.endswith("<!-- pretrain:end -->\nTail.\n")
    # The backbone only, as float16 (integer BatchNorm counters stay integers), with a header naming it.
    with safe_open(str(weights), framework="pt") as handle:
        assert handle.metadata()["model"] == "resnet10t"
        keys = list(handle.keys())
        dtypes = {handle.get_slice(k).get_dtype() for k in keys}
    assert keys and not any(k.startswith("fc.") for k in keys) and dtypes <= {"F16", "I64"}
    # Installed: the same bytes, merged into the folder's manifest (its other entry kept).
    installed = json.loads((weights_dir / "manifest.json").read_text())
    assert set(installed) == {"othernet", "resnet10t"} and installed["resnet10t"] == entry
    assert (weights_dir / weights.name).read_bytes() == weights.read_bytes()
    # Nothing pickled anywhere: no torch.save zip or pickle stream, no .pt/.pth/.pkl/.bin file.
    for path in (p for p in out.rglob("*") if p.is_file()):
        assert path.suffix not in (".pt", ".pth", ".pkl", ".pickle", ".bin"), path
        head = path.read_bytes()[:2]
        assert head != b"PK" and not (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"), path


def test_pretrain_reuses_its_world_and_release(pretrained, tmp_path, caplog, monkeypatch):
    out, _ = pretrained
    copy = tmp_path / "out"
    shutil.copytree(out / "world", copy / "world")
    shutil.copytree(out / "release", copy / "release")
    monkeypatch.setenv(SYNTH_WEIGHTS_ENV, str(tmp_path / "unused"))
    with caplog.at_level(logging.INFO, logger="inatcomp"):
        assert main(["pretrain", "--out", str(copy), *TINY]) == 0
    assert "pretraining world in" in caplog.text and "reused" in caplog.text
    assert "pretraining release in" in caplog.text and "building" not in caplog.text
    assert not (tmp_path / "unused").exists()  # no --install: the weights folder is left alone


def test_pretrained_synth_loads_the_backbone_exactly_and_a_new_head(pretrained, monkeypatch):
    _, weights_dir = pretrained
    monkeypatch.setenv(SYNTH_WEIGHTS_ENV, str(weights_dir))
    saved = load_file(weights_dir / "resnet10t-synth.safetensors")
    model = create_model("resnet10t", num_classes=5, pretrained="synth")
    state = model.state_dict()
    assert set(state) - set(saved) == {"fc.weight", "fc.bias"}
    for key, tensor in saved.items():
        assert state[key].dtype == (torch.float32 if tensor.is_floating_point() else tensor.dtype), key
        assert torch.equal(state[key], tensor.to(state[key].dtype)), key
    assert model.get_classifier().out_features == 5
    # The covariance head wraps the same backbone.
    wrapped = create_model("resnet10t", num_classes=3, pretrained="synth", head="isqrtcov", head_dim=8)
    assert torch.equal(wrapped.backbone.conv1[0].weight, saved["conv1.0.weight"].float())


def test_pretrained_synth_refuses_a_changed_file_and_names_the_models_there(pretrained, tmp_path, monkeypatch):
    _, weights_dir = pretrained
    copy = tmp_path / "weights"
    shutil.copytree(weights_dir, copy)
    monkeypatch.setenv(SYNTH_WEIGHTS_ENV, str(copy))
    with pytest.raises(ValueError, match=r"no synthetic-world weights for --model resnet18 .*available: othernet, "):
        create_model("resnet18", num_classes=3, pretrained="synth")
    path = copy / "resnet10t-synth.safetensors"
    recorded = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as raised:
        create_model("resnet10t", num_classes=3, pretrained="synth")
    message = str(raised.value)
    assert str(path) in message and recorded in message and file_sha256(path) in message and "\n" not in message
    monkeypatch.setenv(SYNTH_WEIGHTS_ENV, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"available: none yet"):
        create_model("resnet10t", num_classes=3, pretrained="synth")


def test_the_shipped_weights_match_their_manifest(monkeypatch):
    monkeypatch.delenv(SYNTH_WEIGHTS_ENV, raising=False)
    entry = json.loads((SHIPPED.parent / "manifest.json").read_text())["resnet10t"]
    assert entry["file"] == SHIPPED.name and entry["dtype"] == "float16"
    assert file_sha256(SHIPPED) == entry["sha256"] and SHIPPED.stat().st_size == entry["bytes"]
    assert entry["bytes"] < 16 * 2**20  # a few MB: the package stays small
    assert entry["data"]["namespace"] == "pretrain" and entry["command"].startswith("inatcomp pretrain")
    with safe_open(str(SHIPPED), framework="pt") as handle:
        assert handle.metadata()["model"] == "resnet10t"


def test_synth_fine_tuning_beats_training_from_scratch(tmp_path, monkeypatch):
    from inatcomp.pipeline import synthetic_release, train_run

    monkeypatch.delenv(SYNTH_WEIGHTS_ENV, raising=False)
    release = synthetic_release(tmp_path / "data", species=12, photos=900, image_size=64, workers=1)
    errors = {}
    for pretrained in ("synth", "none"):
        result = train_run(
            release, tmp_path / pretrained, model="resnet10t", pretrained=pretrained, img_size=64, epochs=2,
            batch_size=32, lr=0.02, schedule="cosine", workers=0, seed=0, log_every=0, max_steps_per_epoch=10,
        )  # fmt: skip
        errors[pretrained] = result.metrics[-1]["val_top1_error"]
    assert errors["synth"] < errors["none"], errors
