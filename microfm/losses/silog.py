"""Scale-invariant log loss for depth (Eigen et al. 2014; the square-root form of BTS)."""

from __future__ import annotations

import torch
from torch import nn


class SILogLoss(nn.Module):
    """sqrt(mean(d²) - λ·mean(d)²) with d = log(pred) - log(target) over the valid pixels of
    each image, averaged over images.

    λ = 1 makes the loss blind to a per-image scale of the prediction; λ < 1 (BTS: 0.85) keeps
    a little of the absolute scale. The prediction is given in log space (``pred_log``), as the
    depth head outputs it; valid target pixels are finite and > 0.

    Args:
        lam: λ in [0, 1].
        eps: added under the square root.

    Example:
        >>> target = torch.rand(2, 1, 8, 8) + 0.5
        >>> loss = SILogLoss(lam=1.0)
        >>> float(loss(target.log() + 0.7, target)) < 1e-3   # a constant scale costs nothing
        True
    """

    def __init__(self, lam: float = 0.85, eps: float = 1e-8) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"silog lam must be in [0, 1], got {lam}")
        self.lam = float(lam)
        self.eps = float(eps)

    def forward(self, pred_log: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        B = pred_log.shape[0]
        pred_log, target = pred_log.float().reshape(B, -1), target.float().reshape(B, -1)
        valid = torch.isfinite(target) & (target > 0)
        n = valid.sum(1)
        keep = n > 0
        if not keep.any():
            return pred_log.sum() * 0.0
        d = torch.where(valid, pred_log - target.clamp_min(1e-12).log(), 0.0)
        mean_d = d.sum(1) / n.clamp_min(1)
        mean_d2 = (d**2).sum(1) / n.clamp_min(1)
        per_image = torch.sqrt((mean_d2 - self.lam * mean_d**2).clamp_min(0) + self.eps)
        return per_image[keep].mean()
