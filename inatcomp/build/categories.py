"""The release's categories: ids in taxonomic order, their records, the 2021 image folder names."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from inatcomp.build.rules import BuildRules, Preset
from inatcomp.formats.taxonomy import TaxonIndex

__all__ = ["safe_dir_part"]

_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus")


#: Characters never kept in a folder name: whitespace, quotes, slashes.
_UNSAFE_IN_DIR = re.compile(r"[\s'\"\u2018\u2019\u201c\u201d`/\\]")


def _category_frame(
    taxa: TaxonIndex, class_rows: np.ndarray, supercategories: np.ndarray, kept: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """Category ids in taxonomic order, so that they do not depend on the export's row order.

    Args:
        taxa: The export's taxa.
        class_rows: Row of each (compact) class in the taxa table.
        supercategories: Supercategory of each class.
        kept: Whether each class is in the release.

    Returns:
        One row per kept class in category-id order (its lineage's names, name, taxon id, supercategory and
        compact class index), and the category id of each compact class (-1 for a class not kept).
    """
    kept_rows = class_rows[kept]
    lineage = {rank: taxa.named(rank, kept_rows) for rank in _RANKS}
    cat_frame = pd.DataFrame({rank: lineage[rank] for rank in _RANKS})
    cat_frame["name"] = taxa.names[kept_rows]
    cat_frame["taxon_id"] = taxa.taxon_ids[kept_rows]
    cat_frame["supercategory"] = supercategories[kept]
    cat_frame["compact"] = np.flatnonzero(kept)
    cat_frame = cat_frame.sort_values([*_RANKS, "name", "taxon_id"], kind="stable").reset_index(drop=True)
    category_of_compact = np.full(len(class_rows), -1, dtype=np.int64)
    category_of_compact[cat_frame["compact"].to_numpy()] = np.arange(len(cat_frame))
    return cat_frame, category_of_compact


def safe_dir_part(text: str) -> str:
    """``text`` as one folder name: each whitespace, quote, slash or backslash becomes ``_``, and a leading dot too.

    A plain binomial only has its space replaced (``Quercus alba`` → ``Quercus_alba``), as the releases name
    their folders; an informal name (``Mycena sp. 'acicula-CA01'``) can then neither split the path, hide a
    folder nor put quotes or spaces into it.
    """
    text = _UNSAFE_IN_DIR.sub("_", text)
    return "_" + text[1:] if text.startswith(".") else text


def _dir_names(cat_frame: pd.DataFrame) -> list[str]:
    """2021 image_dir_name: ``07468_Plantae_Tracheophyta_…_Genus_epithet`` (each part :func:`safe_dir_part`)."""
    epithet = [safe_dir_part(n.split(" ", 1)[1]) if " " in n else "" for n in cat_frame["name"]]
    return [
        "_".join([f"{i:05d}", *(safe_dir_part(str(row[r])) for r in _RANKS), e]).rstrip("_")
        for i, (row, e) in enumerate(zip(cat_frame.to_dict("records"), epithet))
    ]


def _category_records(rules: BuildRules, cat_frame: pd.DataFrame) -> list[dict]:
    """The ``categories`` records of the release files, with the fields of the preset's year."""
    columns = {c: cat_frame[c].tolist() for c in ("name", "supercategory", *_RANKS)}
    dir_names = _dir_names(cat_frame) if rules.preset is Preset.INAT2021 else None
    records = []
    for i in range(len(cat_frame)):
        name = columns["name"][i]
        record: dict = {"id": i, "name": name}
        if rules.preset is Preset.INAT2021:
            record["common_name"] = name
        record["supercategory"] = columns["supercategory"][i]
        if rules.preset is not Preset.INAT2017:
            record.update({rank: columns[rank][i] for rank in _RANKS})
        if dir_names is not None:
            record["specific_epithet"] = name.split(" ", 1)[1] if " " in name else ""
            record["image_dir_name"] = dir_names[i]
        records.append(record)
    return records
