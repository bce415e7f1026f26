"""Masked-autoencoder reconstruction loss (He et al. 2022): mean squared error on the masked
patches, against per-patch normalised pixels by default."""

from __future__ import annotations

import torch
from torch import nn


class MAELoss(nn.Module):
    """MSE between predicted and target patch pixels, averaged over masked patches.

    Args:
        norm_pix: normalise each target patch by its own mean and variance (over all its
            pixels and channels), the MAE paper's better-representation variant.
        eps: added to the variance.

    Example:
        >>> pred, target = torch.randn(2, 4, 12), torch.randn(2, 4, 12)
        >>> mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
        >>> MAELoss()(pred, target, mask).ndim
        0
    """

    def __init__(self, norm_pix: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm_pix = bool(norm_pix)
        self.eps = float(eps)

    def target(self, patches: torch.Tensor) -> torch.Tensor:
        """The regression target of patch pixels (B, N, L)."""
        if not self.norm_pix:
            return patches
        mean = patches.mean(dim=-1, keepdim=True)
        var = patches.var(dim=-1, keepdim=True, unbiased=True)
        return (patches - mean) / (var + self.eps).sqrt()

    def forward(
        self, pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Loss of predictions (B, N, L) for image patches (B, N, L) (see
        :func:`microfm.backbones.masking.patchify`) where ``mask`` (B, N) is True."""
        per_patch = ((pred.float() - self.target(patches.float())) ** 2).mean(dim=-1)
        m = mask.to(per_patch.dtype)
        return (per_patch * m).sum() / m.sum().clamp(min=1.0)
