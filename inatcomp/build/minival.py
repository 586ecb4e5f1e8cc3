"""``inatcomp split-val``: a val JSON split into the remaining val and a minival, by observer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inatcomp.build.arrays import rank_within_groups
from inatcomp.fileio import read_json, write_json
from inatcomp.formats.validate import validate_file


def split_val(
    val_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    minival_frac: float = 0.1,
    seed: int = 0,
    per_class: int = 3,
) -> dict[str, int]:
    """Split a val JSON into the remaining val and a minival, by observer, for competitors' model selection.

    Observers come from the location file beside the JSON (``val2018_locations.json``: ``user_id``) when
    there is one, else from the images' ``rights_holder``. Observers are drawn at random until minival
    holds ``minival_frac`` of the images; minival keeps at most ``per_class`` images per class, and the
    surplus of its observers is left out of both files so no observer is in both.

    Args:
        val_json: A val dataset JSON (any year's flavour).
        out_dir: Folder for ``val.json`` and ``minival.json``.
        minival_frac: Target share of the val images in minival.
        seed: Seed of the observer draw.
        per_class: Cap of minival images per class.

    Returns:
        Image counts of val, minival and the left-out surplus.

    Raises:
        ValueError: An unreadable val JSON, or one without annotations.
    """

    if not 0 < minival_frac < 1:
        raise ValueError(f"--minival-frac must be in (0, 1), got {minival_frac}")
    path = Path(val_json)
    problems = validate_file(path)
    if problems:
        raise ValueError("; ".join(str(p) for p in problems[:5]))
    data = read_json(path)
    if "annotations" not in data:
        raise ValueError(f"{path}: no annotations: expected a val file, not a test file")
    images = data["images"]
    ids = np.array([image["id"] for image in images], dtype=np.int64)
    label = {a["image_id"]: a["category_id"] for a in data["annotations"]}
    category = np.array([label.get(int(i), -1) for i in ids], dtype=np.int64)
    locations = path.with_name(path.stem + "_locations.json")
    if locations.is_file():
        users = {r["id"]: r.get("user_id") for r in read_json(locations)}
        who = [str(users.get(int(i))) for i in ids]
    else:
        who = [str(image.get("rights_holder", "")) for image in images]
    observers, observer = np.unique(np.asarray(who, dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(len(observers))
    sizes = np.bincount(observer, minlength=len(observers))
    chosen = np.zeros(len(observers), dtype=bool)
    target = minival_frac * len(ids)
    taken = 0
    for o in order.tolist():
        if taken >= target:
            break
        chosen[o] = True
        taken += int(sizes[o])
    in_minival = chosen[observer]
    rank = np.full(len(ids), 1 << 40)
    rank[in_minival] = rank_within_groups(category[in_minival], rng.random(int(in_minival.sum())))
    minival = in_minival & (rank < per_class)
    surplus = in_minival & ~minival
    out = Path(out_dir)
    for name, mask in (("val.json", ~in_minival), ("minival.json", minival)):
        keep = set(ids[mask].tolist())
        part = {
            **data,
            "images": [image for image in images if image["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        }
        write_json(out / name, part)
    return {"val": int((~in_minival).sum()), "minival": int(minival.sum()), "left_out": int(surplus.sum())}
