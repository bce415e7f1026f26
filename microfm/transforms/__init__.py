"""Transforms: intensity normalisation, crops, joint augmentation, training targets, multi-crop
views for self-supervised learning."""

from microfm.transforms.augment import DenseAugment
from microfm.transforms.intensity import (
    Normalizer,
    clahe,
    meanstd_normalize,
    minmax_normalize,
    percentile_normalize,
)
from microfm.transforms.multicrop import MultiCrop
from microfm.transforms.targets import distance_map

__all__ = [
    "DenseAugment",
    "MultiCrop",
    "Normalizer",
    "clahe",
    "distance_map",
    "meanstd_normalize",
    "minmax_normalize",
    "percentile_normalize",
]
