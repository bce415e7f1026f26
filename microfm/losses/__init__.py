"""Losses and multitask loss weighting (plain torch, one concept per file); self-supervised
losses: DINO, iBOT, KoLeo, MAE and teacher centering."""

from microfm.losses.centering import TeacherCentering, sinkhorn_knopp
from microfm.losses.combined import SEGMENTATION_LOSSES, CombinedLoss, segmentation_loss
from microfm.losses.cross_entropy import CrossEntropyLoss
from microfm.losses.dice import DiceLoss
from microfm.losses.dino import DINOLoss
from microfm.losses.ibot import IBOTPatchLoss
from microfm.losses.koleo import KoLeoLoss
from microfm.losses.mae import MAELoss
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
    "DINOLoss",
    "DiceLoss",
    "GradNormWeighting",
    "IBOTPatchLoss",
    "KoLeoLoss",
    "LossWeighting",
    "MAELoss",
    "SILogLoss",
    "TeacherCentering",
    "TverskyLoss",
    "UncertaintyWeighting",
    "build_weighting",
    "segmentation_loss",
    "sinkhorn_knopp",
]
