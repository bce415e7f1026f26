"""DPT-style dense head (Ranftl et al. 2021): reassemble ViT layers into a feature pyramid and
fuse it from deep to shallow with residual convolution units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microfm.heads.activation import apply_activation, check_activation


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))) with 3×3 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _resample(channels: int, factor: float) -> nn.Module:
    """Change the resolution of the patch grid by ``factor`` (4, 2, 1 or 1/2, 1/4, ...)."""
    if factor > 1:
        f = int(factor)
        return nn.ConvTranspose2d(channels, channels, kernel_size=f, stride=f)
    if factor == 1:
        return nn.Identity()
    layers: list[nn.Module] = []
    while factor < 1:
        layers.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
        factor *= 2
    return nn.Sequential(*layers)


class DPTHead(nn.Module):
    """Reassemble + fusion decoder over intermediate ViT layers, at any input size that is a
    multiple of the patch size, returning full-resolution maps.

    Layer i of n (shallow to deep) is projected to ``channels[i]`` and resampled by
    2^(n-2-i) relative to the patch grid (4×, 2×, 1×, ½× for four layers), then to
    ``features`` channels. Fusion starts at the deepest level; each step resizes the running map
    to the next shallower level, adds that level (through a residual unit) and applies another
    residual unit. The output convolutions work at the finest level and at full resolution.

    Args:
        embed_dim: channel count of the ViT feature maps.
        num_layers: number of layers given to ``forward``.
        in_chans: image channels (unused; dense heads share one signature).
        out_channels: output channels.
        features: width of the fusion path.
        channels: reassemble widths per layer (default 48, 96, 192, 384 truncated/extended).
        activation: ``none``, ``sigmoid``, ``softplus`` or ``relu``.

    Example:
        >>> head = DPTHead(embed_dim=64, num_layers=4, out_channels=1, features=32)
        >>> head([torch.randn(2, 64, 5, 3)] * 4, torch.rand(2, 1, 40, 24)).shape
        torch.Size([2, 1, 40, 24])
    """

    def __init__(
        self,
        embed_dim: int,
        num_layers: int = 4,
        in_chans: int = 1,
        out_channels: int = 1,
        features: int = 64,
        channels: Sequence[int] | None = None,
        activation: str = "none",
    ) -> None:
        super().__init__()
        self.num_layers = int(num_layers)
        self.activation = check_activation(activation)
        if channels is None:
            base = [48, 96, 192, 384]
            channels = [base[min(i, 3)] for i in range(self.num_layers)]
        channels = [int(c) for c in channels]
        if len(channels) != self.num_layers:
            raise ValueError(
                f"head.channels needs one width per layer ({num_layers}), got {len(channels)}"
            )
        n = self.num_layers
        self.reassemble = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(embed_dim, c, 1),
                _resample(c, 2.0 ** (n - 2 - i)),
                nn.Conv2d(c, features, 3, padding=1, bias=False),
            )
            for i, c in enumerate(channels)
        )
        self.skip_units = nn.ModuleList(ResidualConvUnit(features) for _ in range(n))
        self.fuse_units = nn.ModuleList(ResidualConvUnit(features) for _ in range(n))
        half = max(8, features // 2)
        self.out_low = nn.Conv2d(features, half, 3, padding=1)
        self.out_high = nn.Sequential(
            nn.Conv2d(half, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, out_channels, 1)
        )

    def forward(self, layers: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        if len(layers) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} feature maps, got {len(layers)}")
        pyramid = [r(x) for r, x in zip(self.reassemble, layers)]  # shallow (fine) to deep
        path = None
        for i in reversed(range(self.num_layers)):
            skip = self.skip_units[i](pyramid[i])
            if path is not None:
                path = F.interpolate(
                    path, size=skip.shape[-2:], mode="bilinear", align_corners=False
                )
                skip = skip + path
            path = self.fuse_units[i](skip)
        x = self.out_low(path)
        x = F.interpolate(x, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return apply_activation(self.out_high(x), self.activation)
