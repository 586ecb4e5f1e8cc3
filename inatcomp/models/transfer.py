"""Transfer of a classifier between taxon sets, matched by taxon, never by index.

iNaturalist's own practice when its model moves to a new set of taxa (e.g. 55,000 → 60,000 in 2022):
:func:`transfer_classifier` moves the classifier rows of the taxa both heads share to their new positions,
matched by taxon (:class:`TaxonMatch`: category id or name, keys from :func:`taxon_keys`); new taxa start at zero
or at the mean row (:class:`NewTaxaInit`). :func:`classifier_names` finds a timm model's classifier(s).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

__all__ = [
    "NewTaxaInit",
    "TaxonMatch",
    "TransferReport",
    "choose_taxon_match",
    "classifier_names",
    "taxon_keys",
    "transfer_classifier",
]


class TaxonMatch(enum.Enum):
    """How the taxa of two heads are matched.

    Competition category ids are positions (0..C-1 in each release), so they only match within one
    category set or where a producer made them taxon ids; names match across releases.
    """

    AUTO = "auto"  #: names when both sides have a unique name for every category, else category ids
    ID = "id"  #: category ids (taxon ids in iNaturalist's own training sets)
    NAME = "name"  #: the categories' ``name`` (the scientific name)


class NewTaxaInit(enum.Enum):
    """Start of the classifier rows of taxa the source head does not have."""

    ZERO = "zero"  #: weight and bias 0: a logit of 0 for every image
    MEAN = "mean"  #: the mean of all the source head's rows (weight and bias)


@dataclasses.dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_classifier` did.

    Attributes:
        match: How taxa were matched (``"id"`` or ``"name"``).
        init: How new rows started (``"zero"`` or ``"mean"``).
        carried: Taxa in both heads: their rows copied bit for bit to their new positions.
        added: Taxa only in the target head, in target head order.
        dropped: Taxa only in the source head, in source head order.
    """

    match: str
    init: str
    carried: int
    added: list[Hashable]
    dropped: list[Hashable]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts plus the added and dropped taxa."""
        return {
            "match": self.match,
            "init": self.init,
            "carried": self.carried,
            "added": len(self.added),
            "dropped": len(self.dropped),
            "added_taxa": list(self.added),
            "dropped_taxa": list(self.dropped),
        }


def classifier_names(model: torch.nn.Module) -> list[str]:
    """Module names of a timm model's classifier(s): ``fc``, ``head``, ``head.fc``, ``classifier`` …

    The module ``model.get_classifier()`` returns, plus any further ones ``pretrained_cfg['classifier']``
    declares (distilled models have two).

    Raises:
        ValueError: The model names no classifier with weights.
    """
    modules = dict(model.named_modules())
    names: list[str] = []
    if hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names += [name for name, module in modules.items() if module is head and name]
    declared = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or []
    names += [declared] if isinstance(declared, str) else list(declared)
    names = [n for n in dict.fromkeys(names) if n in modules and any(True for _ in modules[n].parameters())]
    if not names:
        raise ValueError(f"{type(model).__name__}: no classifier found (get_classifier / pretrained_cfg['classifier'])")
    return names


def choose_taxon_match(*categories: Sequence[Mapping[str, Any]] | None) -> TaxonMatch:
    """Resolve :attr:`TaxonMatch.AUTO` for heads with these category records (one list per head).

    Names when every record of every head has a name and names are unique within each head, else ids.
    """
    for records in categories:
        if not records:
            return TaxonMatch.ID
        names = [r.get("name") for r in records]
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            return TaxonMatch.ID
    return TaxonMatch.NAME


def taxon_keys(
    category_ids: Sequence[int],
    categories: Sequence[Mapping[str, Any]] | None,
    *,
    match: TaxonMatch,
) -> list[Hashable]:
    """The key of every class of a head, in head order: its category id or its name.

    Args:
        category_ids: Category ids in head order (checkpoint metadata ``category_ids``).
        categories: The category records in head order (metadata ``categories``), needed for names.
        match: :attr:`TaxonMatch.ID` or :attr:`TaxonMatch.NAME` (resolve ``AUTO`` with :func:`choose_taxon_match`).

    Raises:
        ValueError: Missing or duplicate keys, or records that do not line up with the ids.
    """
    if match is TaxonMatch.AUTO:
        raise ValueError("resolve TaxonMatch.AUTO with choose_taxon_match first")
    if match is TaxonMatch.ID:
        keys: list[Hashable] = [int(c) for c in category_ids]
    else:
        if categories is None or len(categories) != len(category_ids):
            raise ValueError("matching taxa by name needs a category record (with a name) for every class")
        keys = [r.get("name") for r in categories]
        missing = [int(c) for c, k in zip(category_ids, keys) if not isinstance(k, str) or not k]
        if missing:
            raise ValueError(f"matching taxa by name: categories without a name: {missing[:5]}")
    if len(set(keys)) != len(keys):
        seen: set[Hashable] = set()
        duplicates = [k for k in keys if k in seen or seen.add(k)]
        raise ValueError(f"matching taxa by {match.value}: duplicate keys {duplicates[:5]}")
    return keys


def transfer_classifier(
    state_dict: Mapping[str, torch.Tensor],
    *,
    source_taxa: Sequence[Hashable],
    target_taxa: Sequence[Hashable],
    classifier: str | Sequence[str],
    init: NewTaxaInit = NewTaxaInit.ZERO,
    match: TaxonMatch | str = TaxonMatch.ID,
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """Map a head over ``source_taxa`` to one over ``target_taxa``, row by taxon.

    Every tensor under a classifier module whose first dimension is the source head size (the weight,
    the bias; a 1×1 convolution's kernel too) gets one row per target taxon: the source row of the same
    taxon, copied bit for bit, or for a new taxon zeros or the mean of all source rows. Every other
    tensor is passed on unchanged.

    Args:
        state_dict: The source model's weights.
        source_taxa: Key of each source class in head order (see :func:`taxon_keys`).
        target_taxa: Key of each target class in head order.
        classifier: The classifier module name(s) (see :func:`classifier_names`).
        init: Start of the rows of new taxa.
        match: How the keys were made, recorded in the report.

    Returns:
        The new state dict and a :class:`TransferReport`.

    Raises:
        ValueError: Duplicate keys, no classifier tensor in the state, or one of another head size.
    """
    source_taxa, target_taxa = list(source_taxa), list(target_taxa)
    for side, keys in (("source", source_taxa), ("target", target_taxa)):
        if len(set(keys)) != len(keys):
            raise ValueError(f"{side}_taxa has duplicate keys")
    prefixes = [classifier] if isinstance(classifier, str) else list(classifier)
    position = {key: i for i, key in enumerate(source_taxa)}
    src = [position.get(key, -1) for key in target_taxa]
    carried_to = torch.tensor([i for i, s in enumerate(src) if s >= 0], dtype=torch.long)
    carried_from = torch.tensor([s for s in src if s >= 0], dtype=torch.long)
    new_rows = torch.tensor([i for i, s in enumerate(src) if s < 0], dtype=torch.long)
    out = dict(state_dict)
    mapped = []
    for key, tensor in state_dict.items():
        if not any(key.startswith(prefix + ".") for prefix in prefixes):
            continue
        if tensor.ndim == 0 or tensor.shape[0] != len(source_taxa):
            raise ValueError(
                f"{key}: shape {tuple(tensor.shape)} does not fit a head of {len(source_taxa)} source taxa"
            )
        rows = tensor.new_zeros((len(target_taxa), *tensor.shape[1:]))
        rows[carried_to] = tensor[carried_from]
        if init is NewTaxaInit.MEAN and len(new_rows):
            rows[new_rows] = tensor.double().mean(dim=0).to(tensor.dtype)
        out[key] = rows
        mapped.append(key)
    if not mapped:
        raise ValueError(f"no classifier tensor under {prefixes} in the state dict")
    target_set = set(target_taxa)
    report = TransferReport(
        match=TaxonMatch(match).value,
        init=init.value,
        carried=len(carried_to),
        added=[key for key, s in zip(target_taxa, src) if s < 0],
        dropped=[key for key in source_taxa if key not in target_set],
    )
    return out, report
