"""Linear dense head: a 1×1 convolution on patch tokens, upsampled to the input size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microfm.heads.activation import apply_activation, check_activation


class LinearHead(nn.Module):
    """The DINOv2 linear segmentation probe: the given ViT layers concatenated, batch-normed,
    a 1×1 convolution, and bilinear upsampling to the full input resolution.

    Args:
        embed_dim: channel count of the ViT feature maps.
        num_layers: number of layers given to ``forward`` (all concatenated).
        in_chans: image channels (unused; dense heads share one signature).
        out_channels: output channels (classes).
        batch_norm: batch-normalise the concatenated tokens first.
        activation: ``none``, ``sigmoid``, ``softplus`` or ``relu``.

    Example:
        >>> head = LinearHead(embed_dim=64, num_layers=2, out_channels=3)
        >>> head([torch.randn(2, 64, 4, 6)] * 2, torch.rand(2, 1, 32, 48)).shape
        torch.Size([2, 3, 32, 48])
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int = 1,
        in_chans: int = 1,
        out_channels: int = 1,
        batch_norm: bool = True,
        activation: str = "none",
    ) -> None:
        super().__init__()
        self.num_layers = int(num_layers)
        self.activation = check_activation(activation)
        width = embed_dim * self.num_layers
        self.norm = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.conv = nn.Conv2d(width, out_channels, 1)

    def forward(self, layers: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if len(layers) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} feature maps, got {len(layers)}")
        x = self.conv(self.norm(torch.cat(list(layers), dim=1)))
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return apply_activation(x, self.activation)
