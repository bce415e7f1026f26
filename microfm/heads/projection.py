"""DINO/iBOT projection head: MLP to an L2-normalised bottleneck, then a weight-normalised
prototype layer (Caron et al. 2021; DINOv2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP (``num_layers`` linear layers, GELU) -> L2 normalisation -> prototypes.

    The prototype layer is ``torch.nn.utils.parametrizations.weight_norm`` of a bias-free
    linear layer; with ``norm_last_layer`` its magnitude (``original0``) is fixed to one, so the
    logits are cosine similarities to the prototypes.

    Args:
        in_dim: input features (the backbone's ``embed_dim``).
        out_dim: number of prototypes K.
        hidden_dim: MLP width.
        bottleneck_dim: output of the MLP.
        num_layers: linear layers of the MLP (1: a single projection to the bottleneck).
        norm_last_layer: fix the prototype norms to one.

    Example:
        >>> head = DINOHead(64, out_dim=128, hidden_dim=96, bottleneck_dim=32)
        >>> head(torch.randn(4, 64)).shape
        torch.Size([4, 128])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"DINOHead needs num_layers >= 1, got {num_layers}")
        self.out_dim = int(out_dim)
        if num_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(num_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (..., K) of features (..., in_dim)."""
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
