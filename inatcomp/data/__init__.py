"""Datasets, transforms, samplers and the loader of the trainer (one flat set of factories)."""

from inatcomp.data.dataset import CompetitionDataset, Sample, Taxonomy, create_loader, seed_worker
from inatcomp.data.samplers import (
    ClassBalancedSampler,
    EpochSampler,
    RandomSampler,
    SamplerType,
    SqrtSampler,
    create_sampler,
)
from inatcomp.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    CropBox,
    DataConfig,
    DecodePlan,
    EvalPreset,
    Interpolation,
    TrainPreset,
    create_transform,
    resolve_data_config,
)

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
