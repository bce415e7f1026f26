"""What a timm model needs to compute exactly what the official DINOv2/DINOv3 code computes.

timm holds the architectures; two details differ from the official implementations and change
the features:

- DINOv2 resizes its learned position embeddings for inputs other than 518×518 with bicubic
  interpolation by a *scale factor* of ``(n + 0.1) / M`` (no antialiasing), while timm resamples
  to a target size with antialiasing. :class:`DINOv2PosEmbedViT` uses the official rule.
- DINOv3 (and EVA) attention with q/v biases adds them in an ``F.linear`` call on
  ``qkv.weight``, bypassing the ``qkv`` module, so a LoRA adapter wrapped around ``qkv`` would
  never run. :func:`route_qkv_through_module` makes the attention call ``qkv`` and add the
  biases afterwards (the same sum; the k bias stays the fixed zero the official code masks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.eva import Eva, EvaAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

# The official DINOv2 interpolation offset ("historical kludge" kept for compatibility).
DINOV2_INTERPOLATE_OFFSET = 0.1


def dinov2_resize_pos_embed(patch_pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize (1, M*M, D) patch position embeddings to an ``h``×``w`` grid the way the official
    DINOv2 ``interpolate_pos_encoding`` does (returned as (1, h*w, D), in the input dtype)."""
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    if (h, w) == (m, m):
        return patch_pos
    grid = patch_pos.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    scale = ((h + DINOV2_INTERPOLATE_OFFSET) / m, (w + DINOV2_INTERPOLATE_OFFSET) / m)
    grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
    return grid.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(patch_pos.dtype)


class DINOv2PosEmbedViT(VisionTransformer):
    """A timm ``VisionTransformer`` whose position embeddings follow the official DINOv2 rule at
    every input size (see :func:`dinov2_resize_pos_embed`). Models are converted in place with
    :func:`use_official_semantics`; nothing else changes."""

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        prefix = [self.cls_token.expand(B, -1, -1)] if self.cls_token is not None else []
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:  # registers: no embedding for the prefix tokens
            x = x + dinov2_resize_pos_embed(self.pos_embed, H, W)
            x = torch.cat([*prefix, x], dim=1)
        else:
            n_prefix = self.num_prefix_tokens
            pos = torch.cat(
                [
                    self.pos_embed[:, :n_prefix],
                    dinov2_resize_pos_embed(self.pos_embed[:, n_prefix:], H, W),
                ],
                dim=1,
            )
            x = torch.cat([*prefix, x], dim=1) + pos
        return self.pos_drop(x)


def route_qkv_through_module(model: nn.Module) -> int:
    """Make every EVA attention with q/v biases call its ``qkv`` Linear (then add the biases),
    so wrappers of ``qkv`` (LoRA) take part. Returns the number of attention modules changed."""
    changed = 0
    for module in model.modules():
        if isinstance(module, EvaAttention) and module.q_bias is not None:
            module.qkv_bias_separate = True
            changed += 1
    return changed


def use_official_semantics(model: nn.Module, dinov2_pos_embed: bool) -> nn.Module:
    """Apply the official-parity changes that ``model`` needs, in place (see module doc):
    routing q/v biases of EVA attention through ``qkv`` and, for DINOv2 architectures
    (``dinov2_pos_embed``), the official position-embedding interpolation."""
    if isinstance(model, Eva):
        route_qkv_through_module(model)
    if dinov2_pos_embed and type(model) is VisionTransformer:
        model.__class__ = DINOv2PosEmbedViT
    return model
