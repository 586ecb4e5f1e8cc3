"""A contact sheet of a synthetic export's photos: two sibling species, then a row per supercategory."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from inatcomp.formats.taxonomy import Supercategory

__all__ = ["sibling_preview"]


def _photo_tile(path: Path, tile: int) -> Image.Image:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((tile, tile))
        return image


def sibling_preview(export: str | Path, out_png: str | Path, *, per_species: int = 6, seed: int = 0) -> list[str]:
    """Tile photos of a synthetic export into one PNG: two sibling species, then a row per supercategory.

    The first two rows show ``per_species`` photos of two species of one genus (what tells them apart is a
    field mark or two); each further row shows one photo of each of ``per_species`` species of one
    supercategory (its body plan, and how families and genera vary it).

    Args:
        export: A folder written by :func:`~inatcomp.world.synth.write_export` with images.
        out_png: The PNG to write.
        per_species: Photos per row.
        seed: Which genus, species and photos are picked.

    Returns:
        The two sibling species' names.

    Raises:
        ValueError: No genus with two species that have enough photos.
    """
    export = Path(export)
    read = lambda name: pd.read_csv(export / name, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)  # noqa: E731
    photos = read("photos.csv").merge(read("synth_truth.csv"), on="observation_uuid")
    traits = read("synth_species.csv").set_index("taxon_id")
    counts = photos["true_taxon_id"].value_counts()
    taxa = read("taxa.csv")
    species = taxa[taxa["rank"] == "species"].copy()
    species["genus"] = species["ancestry"].str.rsplit("/", n=1).str[1]
    species = species[species["taxon_id"].map(counts).fillna(0) >= per_species]
    genera = species.groupby("genus").filter(lambda g: len(g) >= 2)["genus"].unique()
    if len(genera) == 0:
        raise ValueError(f"{export}: no genus with two species of ≥ {per_species} photos each")
    rng = np.random.default_rng(seed)
    pair = species[species["genus"] == genera[rng.integers(len(genera))]].head(2)
    rows = [rng.choice(photos.loc[photos["true_taxon_id"] == t, "photo_id"].to_numpy(), per_species, replace=False)
            for t in pair["taxon_id"]]  # fmt: skip
    first_photo = photos.drop_duplicates("true_taxon_id").set_index("true_taxon_id")["photo_id"]
    supercategory = traits["supercategory"].reindex(first_photo.index)
    for value in (s.value for s in Supercategory):
        members = first_photo[supercategory == value].to_numpy()
        if len(members):
            rows.append(rng.choice(members, size=min(per_species, len(members)), replace=False))
    tile = 128
    sheet = Image.new("RGB", (tile * per_species, tile * len(rows)), "white")
    for row, ids in enumerate(rows):
        for col, photo_id in enumerate(ids):
            image = _photo_tile(export / "photos" / str(photo_id) / "medium.jpg", tile)
            sheet.paste(image, (col * tile + (tile - image.width) // 2, row * tile + (tile - image.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_png).with_name(Path(out_png).name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out_png)
    return pair["name"].tolist()
