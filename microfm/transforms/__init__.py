"""Transforms: intensity normalisation, joint augmentation, training targets."""

from microfm.transforms.augment import DenseAugment
from microfm.transforms.intensity import percentile_normalize
from microfm.transforms.targets import distance_map

__all__ = ["DenseAugment", "distance_map", "percentile_normalize"]
