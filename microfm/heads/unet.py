"""U-Net-style decoder over intermediate ViT layers (UNETR / DINOCell style)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microfm.heads.activation import apply_activation, check_activation


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two 3×3 convolutions with GroupNorm and GELU."""
    groups = max(1, min(8, out_ch // 8))
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.GELU(),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_ch),
        nn.GELU(),
    )


class UNetDecoder(nn.Module):
    """Progressive decoder from patch-resolution ViT features to full-resolution maps.

    The deepest layer starts the decoder at 1/p resolution; each following stage doubles the
    resolution (1/8, 1/4, 1/2 of the input, whatever the patch size) and fuses the next
    shallower ViT layer, projected and resized to that scale. A last stage at full resolution
    fuses a light convolutional stem over the input image, which restores the fine boundaries
    that 14- or 16-pixel patches cannot carry.

    Args:
        embed_dim: channel count of the ViT feature maps.
        num_layers: number of intermediate layers given to ``forward`` (shallow to deep).
        in_chans: channels of the input image (for the full-resolution stem).
        out_channels: output channels.
        channels: decoder widths, from the deepest stage to the full-resolution one; its
            length is ``num_layers``.
        image_skip: use the full-resolution image stem.
        activation: ``"sigmoid"`` (maps in [0, 1], e.g. distance maps), ``"none"`` (logits,
            log-depth), ``"softplus"`` or ``"relu"`` (non-negative maps).

    Example:
        >>> head = UNetDecoder(embed_dim=64, num_layers=4, in_chans=1)
        >>> feats = [torch.randn(2, 64, 4, 4) for _ in range(4)]
        >>> head(feats, torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int = 4,
        in_chans: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_skip: bool = True,
        activation: str = "sigmoid",
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if len(channels) != num_layers:
            raise ValueError(
                f"head.channels needs one width per layer ({num_layers}), got {len(channels)}"
            )
        self.num_layers = num_layers
        self.activation = check_activation(activation)
        self.image_skip = image_skip
        self.proj = nn.ModuleList(nn.Conv2d(embed_dim, c, 1) for c in channels)
        self.stages = nn.ModuleList(
            conv_block(channels[i - 1] + channels[i], channels[i]) for i in range(1, num_layers)
        )
        stem_ch = max(8, channels[-1] // 2)
        last = channels[-1]
        if image_skip:
            self.stem = nn.Sequential(
                nn.Conv2d(in_chans, stem_ch, 3, padding=1),
                nn.GELU(),
                nn.Conv2d(stem_ch, stem_ch, 3, padding=1),
                nn.GELU(),
            )
            self.fuse = conv_block(last + stem_ch, last)
        self.out = nn.Conv2d(last, out_channels, 1)

    def forward(self, layers: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """Decode ``layers`` ((B, D, h, w), shallow to deep) to (B, out, H, W) at the size of
        ``image``."""
        if len(layers) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} feature maps, got {len(layers)}")
        H, W = image.shape[-2:]
        deep_to_shallow = list(layers)[::-1]
        x = self.proj[0](deep_to_shallow[0])
        n_up = self.num_layers - 1
        for i, stage in enumerate(self.stages, start=1):
            factor = 2 ** (n_up - i + 1)  # 1/8, 1/4, 1/2 for four layers
            size = (max(1, H // factor), max(1, W // factor))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            skip = F.interpolate(
                self.proj[i](deep_to_shallow[i]), size=size, mode="bilinear", align_corners=False
            )
            x = stage(torch.cat([x, skip], dim=1))
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
        if self.image_skip:
            x = self.fuse(torch.cat([x, self.stem(image)], dim=1))
        x = self.out(x)
        return apply_activation(x, self.activation)
