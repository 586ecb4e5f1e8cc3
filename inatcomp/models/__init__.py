"""Models: timm models with a head over the competition's categories, and what goes around them.

:mod:`~inatcomp.models.factory` (:func:`create_model`, the per-stage dropout), :mod:`~inatcomp.models.heads` (the
iSQRT-COV head), :mod:`~inatcomp.models.pretrained` (the backbone's starting weights: a local file, timm's or a
Hugging Face hub model's, the shipped synthetic-world weights), :mod:`~inatcomp.models.checkpoints` (safetensors
plus JSON metadata, never pickle), :mod:`~inatcomp.models.transfer` (classifier rows moved between taxon sets),
:mod:`~inatcomp.models.freezing` (frozen parameters and statistics, BatchNorm folded for inference),
:mod:`~inatcomp.models.losses` and :mod:`~inatcomp.models.average` (weight averaging). It may import
:mod:`inatcomp.formats`, :mod:`inatcomp.data`, :mod:`inatcomp.fileio` and :mod:`inatcomp.options`. Every module
imports torch, so the names below load on first use (PEP 562): importing the package alone costs nothing.
"""

from __future__ import annotations

from inatcomp import lazy_exports

__all__ = [
    "ClassBalancedCrossEntropy",
    "CovarianceModel",
    "FreezeReport",
    "HeadType",
    "LabelSmoothingCrossEntropy",
    "LogitAdjustedLoss",
    "LossType",
    "NewTaxaInit",
    "SYNTH_MANIFEST",
    "SYNTH_WEIGHTS_ENV",
    "TaxonMatch",
    "TaxonomySmoothingCrossEntropy",
    "TransferReport",
    "average_checkpoints",
    "backbone_state",
    "choose_taxon_match",
    "classifier_names",
    "create_loss",
    "create_model",
    "epoch_checkpoints",
    "file_sha256",
    "fold_batchnorm",
    "freeze_model",
    "freeze_norm_statistics",
    "head_metadata",
    "head_options",
    "load_checkpoint",
    "read_synth_manifest",
    "save_checkpoint",
    "set_drop_rate",
    "synth_weights_dir",
    "taxon_keys",
    "transfer_classifier",
]

#: Public name → the module of this package that defines it, imported on first use.
_LAZY = {
    "create_model": "factory",
    "set_drop_rate": "factory",
    "CovarianceModel": "heads",
    "HeadType": "heads",
    "SYNTH_MANIFEST": "pretrained",
    "SYNTH_WEIGHTS_ENV": "pretrained",
    "backbone_state": "pretrained",
    "read_synth_manifest": "pretrained",
    "synth_weights_dir": "pretrained",
    "file_sha256": "checkpoints",
    "head_metadata": "checkpoints",
    "head_options": "checkpoints",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "NewTaxaInit": "transfer",
    "TaxonMatch": "transfer",
    "TransferReport": "transfer",
    "choose_taxon_match": "transfer",
    "classifier_names": "transfer",
    "taxon_keys": "transfer",
    "transfer_classifier": "transfer",
    "FreezeReport": "freezing",
    "fold_batchnorm": "freezing",
    "freeze_model": "freezing",
    "freeze_norm_statistics": "freezing",
    "ClassBalancedCrossEntropy": "losses",
    "LabelSmoothingCrossEntropy": "losses",
    "LogitAdjustedLoss": "losses",
    "LossType": "losses",
    "TaxonomySmoothingCrossEntropy": "losses",
    "create_loss": "losses",
    "average_checkpoints": "average",
    "epoch_checkpoints": "average",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
