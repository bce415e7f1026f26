"""Losses and multitask loss weighting (plain torch, one concept per file)."""

from microfm.losses.combined import SEGMENTATION_LOSSES, CombinedLoss, segmentation_loss
from microfm.losses.cross_entropy import CrossEntropyLoss
from microfm.losses.dice import DiceLoss
from microfm.losses.silog import SILogLoss
from microfm.losses.tversky import TverskyLoss
from microfm.losses.weighting import (
    WEIGHTINGS,
    GradNormWeighting,
    LossWeighting,
    UncertaintyWeighting,
    build_weighting,
)

__all__ = [
    "SEGMENTATION_LOSSES",
    "WEIGHTINGS",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "GradNormWeighting",
    "LossWeighting",
    "SILogLoss",
    "TverskyLoss",
    "UncertaintyWeighting",
    "build_weighting",
    "segmentation_loss",
]
