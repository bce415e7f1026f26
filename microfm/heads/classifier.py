"""Image-level head on the CLS token (optionally with the mean patch token)."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Linear or MLP classifier on the CLS token, optionally concatenated with the mean of the
    patch tokens (the DINOv2 linear-probe input).

    Args:
        embed_dim: backbone width D.
        num_classes: number of classes K.
        hidden_dim: None for a linear head; otherwise the width of a one-hidden-layer MLP.
        use_patch_mean: concatenate the mean patch token to the CLS token (input 2D).
        dropout: dropout before the last linear layer.

    Example:
        >>> head = ClassificationHead(64, 7, hidden_dim=128)
        >>> head(torch.randn(2, 64), torch.randn(2, 64, 4, 4)).shape
        torch.Size([2, 7])
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        hidden_dim: int | None = None,
        use_patch_mean: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.use_patch_mean = use_patch_mean
        width = embed_dim * (2 if use_patch_mean else 1)
        if hidden_dim:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(width, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_classes),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, cls: torch.Tensor, patch: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) CLS token and (B, D, h, w) patch tokens -> (B, K) logits."""
        x = cls
        if self.use_patch_mean:
            if patch is None:
                raise ValueError("use_patch_mean needs the patch tokens")
            x = torch.cat([cls, patch.flatten(2).mean(-1)], dim=1)
        return self.net(x)
