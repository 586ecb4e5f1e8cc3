"""The release layout: file and folder names, the output folder, the images' order and file names."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from inatcomp.build.arrays import _needs_escape, lexsort_by_group, stable_argsort
from inatcomp.build.categories import _dir_names, safe_dir_part
from inatcomp.build.rules import BuildRules, Preset, Split

#: The split of each dataset file, in the order they are written and counted.
_PARTS = {"train": Split.TRAIN, "val": Split.VAL, "test": Split.TEST}


def release_names(rules: BuildRules) -> dict[str, str]:
    """File and folder names of a release: keys train, val, test, train_mini, *_locations, folders."""
    if rules.preset is Preset.INAT2021:
        return {
            "train": "train.json", "val": "val.json", "test": "public_test.json", "train_mini": "train_mini.json",
            "train_dir": "train", "val_dir": "val", "test_dir": "public_test",
        }  # fmt: skip
    y = rules.year
    folder = "train_val_images" if rules.preset is Preset.INAT2017 else f"train_val{y}"
    return {
        "train": f"train{y}.json", "val": f"val{y}.json", "test": f"test{y}.json",
        "train_locations": f"train{y}_locations.json", "val_locations": f"val{y}_locations.json",
        "test_locations": f"test{y}_locations.json", "train_dir": folder, "val_dir": folder, "test_dir": f"test{y}",
    }  # fmt: skip


def _prepare_out(out: Path, names: dict[str, str], *, overwrite: bool) -> None:
    """Refuse or clear a folder that already holds a finished release, so no stale file survives a rebuild."""
    finished = [out / names[key] for key in ("train", "val", "test") if (out / names[key]).exists()]
    if not finished:
        return
    if not overwrite:
        raise ValueError(f"{out}: already holds a release ({finished[0].name}); pass --overwrite to rebuild it")
    for key in ("train_dir", "val_dir", "test_dir"):
        shutil.rmtree(out / names[key], ignore_errors=True)
    for path in out.iterdir():
        if path.is_file():
            path.unlink()


def _release_order(split: np.ndarray, category: np.ndarray, shuffle: np.ndarray, photo_id: np.ndarray) -> np.ndarray:
    """Train and val by (split, category) then photo id, then test by its shuffle key (ties, rare with
    :func:`random_keys`, by position): :func:`lexsort_by_group` and :func:`stable_argsort`."""
    test = split == Split.TEST
    rest, tested = np.flatnonzero(~test), np.flatnonzero(test)
    span = int(np.max(category, initial=0)) + 1
    order_rest = lexsort_by_group(split[rest].astype(np.int64) * span + category[rest], photo_id[rest])
    order_test = stable_argsort(shuffle[tested])
    return np.concatenate([rest[order_rest], tested[order_test]])


def _file_names(
    rules: BuildRules,
    names: dict[str, str],
    cat_frame: pd.DataFrame,
    split: np.ndarray,
    category: np.ndarray,
    photo_id: np.ndarray,
    *,
    quoted: bool = False,
) -> pa.Array | None:
    """Release-layout file names of the selected images (image files are named by photo id).

    With ``quoted``, the names as JSON string literals, or None when some part of them would need escaping.
    """
    if rules.preset is Preset.INAT2021:
        class_dir = _dir_names(cat_frame)
    elif rules.preset is Preset.INAT2017:
        class_dir = [
            f"{safe_dir_part(s)}/{safe_dir_part(n)}" for s, n in zip(cat_frame["supercategory"], cat_frame["name"])
        ]
    else:
        class_dir = [f"{safe_dir_part(s)}/{i}" for i, s in enumerate(cat_frame["supercategory"])]
    folders = [names["train_dir"], names["val_dir"], names["test_dir"]]
    class_text = pa.array(class_dir, pa.string())
    if quoted and (_needs_escape(pa.array(folders)) or _needs_escape(class_text)):
        return None
    quote = '"' if quoted else ""
    stem = pc.cast(pa.array(photo_id, pa.int64()), pa.string())
    # Joined run by run of one split (one run each in the release order): the folder is the same along a run.
    starts = np.flatnonzero(np.r_[True, split[1:] != split[:-1]]) if len(split) else np.zeros(0, np.int64)
    parts = []
    for start, end in zip(starts, [*starts[1:], len(split)]):
        folder = folders[int(split[start])]
        if split[start] == Split.TEST:
            parts.append(pc.binary_join_element_wise(f"{quote}{folder}/", stem[start:end], f".jpg{quote}", ""))
        else:
            prefix = pc.binary_join_element_wise(f"{quote}{folder}/", class_text, "/", "")
            parts.append(
                pc.binary_join_element_wise(
                    prefix.take(pa.array(category[start:end])), stem[start:end], f".jpg{quote}", ""
                )
            )
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())
