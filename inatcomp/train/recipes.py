"""The recipes on top of the loop: the head's categories from elsewhere, ``--init`` with head transfer, freezing.

See the package docstring (:mod:`inatcomp.train`) for what each option does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from inatcomp.data.dataset import CompetitionDataset
from inatcomp.fileio import read_json, resolve_checkpoint
from inatcomp.models.checkpoints import load_checkpoint
from inatcomp.models.factory import create_model
from inatcomp.models.freezing import freeze_model, freeze_norm_statistics
from inatcomp.models.heads import HeadType
from inatcomp.models.transfer import (
    NewTaxaInit,
    TaxonMatch,
    choose_taxon_match,
    classifier_names,
    taxon_keys,
    transfer_classifier,
)
from inatcomp.options import FreezeMode, parse_freeze
from inatcomp.train.config import TrainConfig, TrainStage
from inatcomp.train.distributed import is_main_process

__all__ = ["head_categories", "fill_category_records", "init_from", "prepare_model", "reset_classifier"]

_logger = logging.getLogger(__name__)


def head_categories(source: str) -> tuple[list[int], list[dict] | None]:
    """Category ids and records in head order from a checkpoint (file, stem or run folder) or a dataset JSON.

    Raises:
        ValueError: Neither a checkpoint with category ids nor a readable dataset JSON.
    """
    try:
        weights = resolve_checkpoint(source)
    except ValueError:
        weights = None
    if weights is not None:
        metadata = read_json(weights.with_suffix(".json"))
        if not metadata.get("category_ids"):
            raise ValueError(f"--categories-from {source}: its checkpoint metadata has no category_ids")
        return [int(c) for c in metadata["category_ids"]], metadata.get("categories")
    try:
        dataset = CompetitionDataset(source)
    except (OSError, ValueError) as error:
        raise ValueError(f"--categories-from {source}: neither a checkpoint nor a dataset JSON ({error})") from None
    return [int(c) for c in dataset.category_ids], dataset.categories


def fill_category_records(dataset: Any, records: Sequence[Mapping[str, Any]] | None) -> None:
    """Give head classes the JSON does not describe (records of only an id) the records of the head's source."""
    by_id = {int(r["id"]): dict(r) for r in records or [] if "id" in r}
    dataset.categories = [by_id.get(int(r["id"]), r) if set(r) == {"id"} else r for r in dataset.categories]


def init_from(model: torch.nn.Module, config: TrainConfig, train_set: Any) -> dict[str, Any]:
    """Load ``config.init`` into the model, its classifier rows mapped by taxon onto the training set's head.

    Returns:
        The transfer record: source, match, init, counts of taxa carried, added and dropped, and those taxa.

    Raises:
        ValueError: An unreadable checkpoint, one without category ids, or weights that do not fit the model.
    """
    state_dict, metadata, _ = load_checkpoint(config.init)
    if metadata.get("model") not in (None, config.model):
        raise ValueError(f"--init {config.init}: a {metadata['model']} checkpoint, but --model is {config.model}")
    source_ids = [int(c) for c in metadata.get("category_ids") or []]
    if not source_ids:
        raise ValueError(f"--init {config.init}: its metadata has no category_ids")
    target_ids = [int(c) for c in train_set.category_ids]
    match = TaxonMatch(config.transfer_match.value)
    if match is TaxonMatch.AUTO:
        same = source_ids == target_ids
        match = TaxonMatch.ID if same else choose_taxon_match(metadata.get("categories"), train_set.categories)
    state_dict, report = transfer_classifier(
        state_dict,
        source_taxa=taxon_keys(source_ids, metadata.get("categories"), match=match),
        target_taxa=taxon_keys(target_ids, train_set.categories, match=match),
        classifier=classifier_names(model),
        init=NewTaxaInit(config.new_taxa_init.value),
        match=match,
    )
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"--init {config.init}: its weights do not fit --model {config.model} ({error})") from None
    return {"source": str(config.init), **report.to_dict()}


def reset_classifier(model: torch.nn.Module) -> int:
    """Re-initialise the model's classifier layers (their own ``reset_parameters``); returns how many."""
    modules = dict(model.named_modules())
    reset = 0
    for name in classifier_names(model):
        for module in modules[name].modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
                reset += 1
    return reset


def prepare_model(
    config: TrainConfig, train_set: Any, *, checkpoint_metadata: Mapping[str, Any] | None
) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    """The model over the training set's head: ``--init`` loaded (or transferred) unless resuming, then frozen.

    ``stage: classifier`` freezes the backbone (``--reset-head``: after re-initialising the classifier).

    Returns:
        The model (on the CPU) and the transfer record (the resumed run's, when resuming; ``None`` without init).
    """
    main = is_main_process()
    model = create_model(
        config.model,
        num_classes=train_set.num_classes,
        pretrained=config.pretrained,
        drop_rate=config.drop_rate,
        channels_last=config.channels_last,
        head=HeadType(config.head.value),
        head_dim=config.head_dim,
        head_iterations=config.head_iterations,
    )
    transfer = None
    if checkpoint_metadata is not None:
        transfer = checkpoint_metadata.get("transfer")
    elif config.init:
        transfer = init_from(model, config, train_set)
        if main:
            _logger.info("--init %s: %d taxa carried, %d added (rows at %s), %d dropped; matched by %s", config.init,
                         transfer["carried"], transfer["added"], transfer["init"], transfer["dropped"],
                         transfer["match"])  # fmt: skip
    freeze_mode, keep_last = parse_freeze(config.freeze)
    if config.stage is TrainStage.CLASSIFIER:
        freeze_mode, keep_last = FreezeMode.BACKBONE, 1
        if config.reset_head and checkpoint_metadata is None:
            reset = reset_classifier(model)
            if main:
                _logger.info("--reset-head: %d classifier module(s) re-initialised", reset)
    if freeze_mode is not FreezeMode.NONE:
        frozen = freeze_model(model, mode=freeze_mode, keep_last=keep_last)
        if main:
            _logger.info("--freeze %s: %d of %d parameters train (%s); %d BatchNorm layers keep their statistics",
                         config.freeze, frozen.trainable_parameters,
                         frozen.trainable_parameters + frozen.frozen_parameters,
                         ", ".join(frozen.trainable_modules), frozen.frozen_norms)  # fmt: skip
    if config.freeze_norm_stats:
        fixed = freeze_norm_statistics(model)
        if main:
            _logger.info("--freeze-norm-stats: %d BatchNorm layers keep their statistics", fixed)
    return model, transfer
