"""The ablation script (benchmarks/ablation.py): the leaky re-split, the Markdown, and the --quick run end to end."""

from __future__ import annotations

import collections
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("benchmarks_ablation", ROOT / "benchmarks" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ablation = _load()


def _split_files(tmp_path: Path) -> tuple[Path, Path]:
    """A train and a val JSON: 3 classes, observers owning whole classes' images in one split."""
    categories = [{"id": c, "name": f"Genus species{c}", "genus": "Genus"} for c in range(3)]
    train_counts, val_counts = {0: 10, 1: 4, 2: 2}, {0: 3, 1: 3, 2: 3}
    files = []
    image_id = 0
    for name, counts in (("train2018", train_counts), ("val2018", val_counts)):
        images, annotations = [], []
        for category, n in counts.items():
            for _ in range(n):
                images.append({"id": image_id, "file_name": f"x/{image_id}.jpg", "width": 8, "height": 8})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": category})
                image_id += 1
        data = {"info": {"year": 2018}, "images": images, "annotations": annotations, "categories": categories}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(data), encoding="utf-8")
        files.append(path)
    return files[0], files[1]


def _class_sizes(path: Path) -> collections.Counter:
    return collections.Counter(a["category_id"] for a in json.loads(path.read_text(encoding="utf-8"))["annotations"])


def test_leaky_split_keeps_images_and_class_sizes(tmp_path):
    train, val = _split_files(tmp_path)
    leaky_train, leaky_val = ablation.leaky_split(train, val, tmp_path / "leaky", seed=1)
    assert (leaky_train.name, leaky_val.name) == ("train2018.json", "val2018.json")
    assert _class_sizes(leaky_val) == _class_sizes(val)
    assert _class_sizes(leaky_train) == _class_sizes(train)
    before = {i["id"] for p in (train, val) for i in json.loads(p.read_text())["images"]}
    after = [i["id"] for p in (leaky_train, leaky_val) for i in json.loads(p.read_text())["images"]]
    assert sorted(after) == sorted(before)
    old_val = {i["id"] for i in json.loads(val.read_text())["images"]}
    assert {i["id"] for i in json.loads(leaky_val.read_text())["images"]} != old_val  # really re-drawn
    leaky = json.loads(leaky_train.read_text())
    assert leaky["info"] == {"year": 2018} and len(leaky["categories"]) == 3
    # Deterministic for a seed.
    again, _ = ablation.leaky_split(train, val, tmp_path / "again", seed=1)
    assert again.read_bytes() == leaky_train.read_bytes()


def test_seen_observer_share(tmp_path):
    train, val = _split_files(tmp_path)
    observers = {i: ("a" if i < 16 else "b") for i in range(25)}
    assert ablation.seen_observer_share(train, val, observers) == 0.0
    observers[20] = "a"
    assert ablation.seen_observer_share(train, val, observers) == pytest.approx(1 / 9)


def test_markdown_keeps_the_discussion(tmp_path):
    rows = [ablation.Row("ablation", name) for name in ("a", "b")] + [ablation.Row("leak", n) for n in "xy"]
    for seed in range(2):
        for i, row in enumerate(rows):
            if row.table == "leak":
                row.add({"val_top1_error": 0.4 - 0.1 * i, "test_top1_error": 0.6})
            else:
                row.add({"top1_error": 0.5 - 0.1 * i + 0.01 * seed, "top3_error": 0.3, "tail_accuracy": None})
    text = ablation.markdown(rows)
    assert "0.505 ± 0.007" in text and "-0.100 (2/2 lower)" in text and "| – |" in text
    path = tmp_path / "ABLATION.md"
    ablation.write_markdown(path, text)
    written = path.read_text(encoding="utf-8")
    assert written.startswith("# Ablation") and ablation.END in written and "## Discussion" in written
    path.write_text(written.replace("(Not written yet", "My findings (kept"), encoding="utf-8")
    ablation.write_markdown(path, text.replace("0.505", "0.404"))
    rewritten = path.read_text(encoding="utf-8")
    assert "My findings (kept" in rewritten and "0.404 ± 0.007" in rewritten and "0.505" not in rewritten
    assert rewritten.count(ablation.BEGIN) == 1


@pytest.mark.slow
def test_quick_ablation_end_to_end(tmp_path):
    out = tmp_path / "ABLATION.md"
    rows = ablation.main(["--quick", "--out", str(tmp_path / "runs"), "--write", str(out)])
    table = [r for r in rows if r.table == "ablation"]
    assert [r.name for r in table] == [n.format(tta=ablation.QUICK.tta) for n in ablation.ROW_NAMES]
    assert [r.name for r in rows if r.table == "leak"] == list(ablation.LEAK_NAMES)
    for row in table:
        for key in ("top1_error", "top3_error"):
            assert len(row.values[key]) == ablation.QUICK.seeds
            assert all(0.0 <= v <= 1.0 for v in row.values[key])
        assert row.values["top3_error"][0] <= row.values["top1_error"][0]
        for key in ("tail_accuracy", "same_genus_share", "mean_class_accuracy"):
            assert all(v is None or 0.0 <= v <= 1.0 for v in row.values[key])
    for row in rows[len(table) :]:
        assert all(0.0 <= v <= 1.0 for key in ablation.LEAK_METRICS for v in row.values[key] if not math.isnan(v))
    assert rows[-2].values["val_images_seen_observer"] == [0.0]  # the build's split is isolated
    assert rows[-1].values["val_images_seen_observer"][0] > 0.0
    text = out.read_text(encoding="utf-8")
    for row in rows:
        assert f"| {row.name} |" in text
    assert ablation.BEGIN in text and ablation.END in text and "## Photographer leak" in text
