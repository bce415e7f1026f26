"""Soft Dice loss over softmax probabilities (Milletari et al. 2016, multi-class)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_confusion(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft TP, FP and FN per class, summed over the batch and the valid pixels.

    Args:
        logits: (B, K, H, W).
        target: (B, H, W) class indices; ``ignore_index`` pixels are left out.
    """
    K = logits.shape[1]
    prob = logits.float().softmax(1)
    valid = (target != ignore_index).unsqueeze(1).to(prob.dtype)
    onehot = F.one_hot(target.clamp(0, K - 1).long(), K).permute(0, 3, 1, 2).to(prob.dtype)
    prob, onehot = prob * valid, onehot * valid
    dims = (0, 2, 3)
    tp = (prob * onehot).sum(dims)
    fp = (prob * (1 - onehot)).sum(dims)
    fn = ((1 - prob) * onehot).sum(dims)
    return tp, fp, fn


class DiceLoss(nn.Module):
    """1 - mean over classes of the soft Dice 2TP / (2TP + FP + FN), smoothed.

    Args:
        ignore_index: target value of pixels left out.
        smooth: added to numerator and denominator (keeps absent classes at Dice 1).
        include_background: average over class 0 too.

    Example:
        >>> target = torch.tensor([[[0, 1], [1, 1]]])
        >>> perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2) * 50.0
        >>> float(DiceLoss()(perfect, target)) < 1e-6
        True
    """

    def __init__(
        self, ignore_index: int = -1, smooth: float = 1.0, include_background: bool = True
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.include_background = include_background

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = soft_confusion(logits, target, self.ignore_index)
        dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth)
        if not self.include_background:
            dice = dice[1:]
        return 1.0 - dice.mean()
