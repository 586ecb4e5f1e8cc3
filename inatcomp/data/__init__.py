"""Data: the competition dataset and its loader, the transforms and the samplers, one flat set of factories.

:mod:`~inatcomp.data.dataset` (:class:`CompetitionDataset` over a 2017, 2018 or 2021 JSON, the loader),
:mod:`~inatcomp.data.transforms` (the train and eval presets, decoding at reduced scale) and
:mod:`~inatcomp.data.samplers` (random, class-balanced and square-root epochs, sharded over ranks),
:mod:`~inatcomp.data.sharedbatch` (batches from the loader workers in shared memory each worker reuses),
:mod:`~inatcomp.data.feed` (uint8 batches to the device one batch ahead, normalised there) and
:mod:`~inatcomp.data.gpudecode` (``--decode gpu``: nvJPEG in batches, with PIL's fallback file by file). It may import
:mod:`inatcomp.formats`, :mod:`inatcomp.fileio` and :mod:`inatcomp.options`; ``models``, ``predict`` and
``train`` build on it. The modules import torch, so the names below load on first use (PEP 562): importing the
package alone costs nothing.
"""

from __future__ import annotations

from inatcomp import lazy_exports

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "ClassBalancedSampler",
    "CompetitionDataset",
    "CropBox",
    "DataConfig",
    "DecodePlan",
    "EpochSampler",
    "EvalPreset",
    "Interpolation",
    "RandomSampler",
    "Sample",
    "SamplerType",
    "SqrtSampler",
    "Taxonomy",
    "TrainPreset",
    "create_loader",
    "create_sampler",
    "create_transform",
    "resolve_data_config",
    "seed_worker",
]

#: Public name → the module of this package that defines it, imported on first use.
_LAZY = {
    "CompetitionDataset": "dataset",
    "Sample": "dataset",
    "Taxonomy": "dataset",
    "create_loader": "dataset",
    "seed_worker": "dataset",
    "ClassBalancedSampler": "samplers",
    "EpochSampler": "samplers",
    "RandomSampler": "samplers",
    "SamplerType": "samplers",
    "SqrtSampler": "samplers",
    "create_sampler": "samplers",
    "IMAGENET_DEFAULT_MEAN": "transforms",
    "IMAGENET_DEFAULT_STD": "transforms",
    "CropBox": "transforms",
    "DataConfig": "transforms",
    "DecodePlan": "transforms",
    "EvalPreset": "transforms",
    "Interpolation": "transforms",
    "TrainPreset": "transforms",
    "create_transform": "transforms",
    "resolve_data_config": "transforms",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
