"""Masked-autoencoder decoder (He et al. 2022): a light transformer that fills the masked
positions with a learned mask token and predicts the pixels of every patch."""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn


class MAEDecoder(nn.Module):
    """Encoder tokens of the visible patches -> pixels (p*p*C) of every patch.

    The visible tokens are projected to ``dim``, scattered back to their grid positions, the
    other positions get the mask token, fixed 2-D sin-cos position embeddings are added (so
    any grid size works, whatever position encoding the encoder uses), the encoder's prefix
    tokens (class, registers) are prepended, and ``depth`` transformer blocks run.

    Args:
        embed_dim: encoder width.
        patch_size: encoder patch side in pixels.
        in_chans: image channels to reconstruct.
        dim: decoder width (512 in MAE and STED-FM).
        depth: decoder blocks (STED-FM: 1; MAE: 8).
        num_heads: attention heads.
        mlp_ratio: MLP width / ``dim``.

    Example:
        >>> dec = MAEDecoder(64, patch_size=8, in_chans=1, dim=32, depth=1, num_heads=4)
        >>> tokens = torch.randn(2, 1 + 3, 64)  # class token + 3 visible patches
        >>> keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
        >>> dec(tokens, keep, grid=(2, 4), num_prefix=1).shape
        torch.Size([2, 8, 64])
    """

    def __init__(
        self,
        embed_dim: int,
        patch_size: int,
        in_chans: int,
        dim: int = 512,
        depth: int = 1,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"decoder dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = int(dim)
        self.patch_size = int(patch_size)
        self.in_chans = int(in_chans)
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            [Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self, tokens: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int], num_prefix: int
    ) -> torch.Tensor:
        """Predicted pixels (B, h*w, p*p*C) of every patch.

        Args:
            tokens: encoder output (B, P + K, D): prefix tokens, then the visible patches.
            keep: (B, K) grid indices of the visible patches.
            grid: (h, w) patch grid.
            num_prefix: P.
        """
        x = self.embed(tokens)
        B, _, D = x.shape
        N = grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(B, N, D).clone()
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, D), x[:, num_prefix:])
        pos = build_sincos2d_pos_embed(list(grid), dim=D, device=x.device, dtype=x.dtype)
        x = torch.cat([x[:, :num_prefix], full + pos.unsqueeze(0)], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, num_prefix:]
