"""Transforms: intensity normalisation, crops, joint augmentation, training targets."""

from microfm.transforms.augment import DenseAugment
from microfm.transforms.intensity import (
    Normalizer,
    clahe,
    meanstd_normalize,
    minmax_normalize,
    percentile_normalize,
)
from microfm.transforms.targets import distance_map

__all__ = [
    "DenseAugment",
    "Normalizer",
    "clahe",
    "distance_map",
    "meanstd_normalize",
    "minmax_normalize",
    "percentile_normalize",
]
