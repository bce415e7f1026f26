"""Tversky loss (Salehi et al. 2017): Dice with separate false-positive and false-negative
weights, for small foreground structures."""

from __future__ import annotations

import torch
from torch import nn

from microfm.losses.dice import soft_confusion


class TverskyLoss(nn.Module):
    """1 - mean over classes of TP / (TP + α·FP + β·FN), smoothed. α = β = 0.5 is Dice;
    β > α penalises missed foreground more (higher recall).

    Args:
        alpha: weight of false positives.
        beta: weight of false negatives.
        ignore_index: target value of pixels left out.
        smooth: added to numerator and denominator.
        include_background: average over class 0 too.

    Example:
        >>> logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
        >>> from microfm.losses import DiceLoss
        >>> tv, dice = TverskyLoss(0.5, 0.5, smooth=0), DiceLoss(smooth=0)
        >>> bool(torch.isclose(tv(logits, target), dice(logits, target)))
        True
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        ignore_index: int = -1,
        smooth: float = 1.0,
        include_background: bool = True,
    ) -> None:
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"tversky alpha and beta must be >= 0, not both 0: {alpha}, {beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = soft_confusion(logits, target, self.ignore_index)
        ti = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        if not self.include_background:
            ti = ti[1:]
        return 1.0 - ti.mean()
