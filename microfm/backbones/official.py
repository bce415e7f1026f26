"""What a timm model needs to compute exactly what the official DINOv2/DINOv3 code computes.

timm holds the architectures; two details differ from the official implementations and change
the features:

- DINOv2 resizes its learned position embeddings for inputs other than 518×518. The official
  hub constructors of the plain models use bicubic interpolation by a *scale factor* of
  ``(n + 0.1) / M`` without antialiasing; those of the register models (``dinov2_*_reg``:
  ``interpolate_antialias=True, interpolate_offset=0.0``) resample *to the size* ``n`` with
  antialiasing. :class:`DINOv2PosEmbedViT` uses the official rule of each.
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


def _cubic_weights(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """PyTorch's bicubic convolution weights (A = -0.75) of the 4 taps around ``t`` in [0, 1)."""
    x = torch.stack([t + 1, t, 1 - t, 2 - t], dim=-1)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, far)


def _resize_matrix(n: int, m: int, scale: torch.Tensor) -> torch.Tensor:
    """(n, m) matrix of 1-D bicubic resampling from ``m`` to ``n`` samples, reading source
    coordinate ``(i + 0.5) * scale - 0.5`` for output ``i`` with edge-clamped taps: row by row
    what ``F.interpolate(mode="bicubic", align_corners=False)`` computes."""
    src = (torch.arange(n, dtype=torch.float32) + 0.5) * scale - 0.5
    first = torch.floor(src)
    weights = _cubic_weights(src - first)  # (n, 4)
    taps = (first.long()[:, None] + torch.arange(-1, 3)).clamp(0, m - 1)  # (n, 4)
    return (weights[..., None] * F.one_hot(taps, m).float()).sum(1)


def _antialias_resize_matrix(n: int, m: int, scale: torch.Tensor) -> torch.Tensor:
    """(n, m) matrix of 1-D antialiased bicubic resampling from ``m`` to ``n`` samples: row by
    row what ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` computes
    (PIL's filter: Keys cubic with A = -0.5, stretched by ``scale`` when downsampling, taps
    outside the input dropped and each row renormalised), with ``scale = m / n``."""
    stretch = torch.clamp(scale, min=1.0)  # widen the filter only when downsampling
    center = (torch.arange(n, dtype=torch.float32) + 0.5) * scale
    x = ((torch.arange(m, dtype=torch.float32)[None, :] + 0.5 - center[:, None]) / stretch).abs()
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    weights = torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))
    return weights / weights.sum(1, keepdim=True)


def dinov2_resize_pos_embed(
    patch_pos: torch.Tensor, h: int, w: int, antialias: bool = False
) -> torch.Tensor:
    """Resize (1, M*M, D) patch position embeddings to an ``h``×``w`` grid the way the official
    DINOv2 ``interpolate_pos_encoding`` does (returned as (1, h*w, D), in the input dtype),
    unchanged on the native M×M grid. Plain models (``antialias=False``): bicubic by a scale
    factor of ``(n + 0.1) / M`` without antialiasing. Register models (``antialias=True``):
    antialiased bicubic to the size ``n`` (offset 0).

    Written as two resampling matrices rather than ``F.interpolate`` and a size test, so that
    one exported graph (ONNX, dynamic height and width) serves every size: on the native grid
    the source coordinates are the targets and the matrices are identities.
    """
    n, dim = patch_pos.shape[1], patch_pos.shape[2]
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position embeddings of {n} patches are not a square grid")
    size = torch.stack([torch.scalar_tensor(h), torch.scalar_tensor(w)]).float()
    native = (size == m).all()
    offset = 0.0 if antialias else DINOV2_INTERPOLATE_OFFSET
    scales = torch.where(native, torch.ones(2), m / (size + offset))
    resize = _antialias_resize_matrix if antialias else _resize_matrix
    rows = resize(h, m, scales[0]).to(patch_pos.device)
    cols = resize(w, m, scales[1]).to(patch_pos.device)
    grid = patch_pos.float().reshape(m, m, dim)
    out = torch.einsum("hm,mnd,wn->hwd", rows, grid, cols)
    return out.reshape(1, h * w, dim).to(patch_pos.dtype)


class DINOv2PosEmbedViT(VisionTransformer):
    """A timm ``VisionTransformer`` whose position embeddings follow the official DINOv2 rule at
    every input size (see :func:`dinov2_resize_pos_embed`): with registers, the antialiased
    resize of the ``dinov2_*_reg`` hub models. Models are converted in place with
    :func:`use_official_semantics`; nothing else changes."""

    def _resize(self, pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        antialias = getattr(self, "num_reg_tokens", 0) > 0
        return dinov2_resize_pos_embed(pos, h, w, antialias=antialias)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)
        prefix = [self.cls_token.expand(B, -1, -1)] if self.cls_token is not None else []
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(B, -1, -1))
        if self.no_embed_class:  # registers: no embedding for the prefix tokens
            x = x + self._resize(self.pos_embed, H, W)
            x = torch.cat([*prefix, x], dim=1)
        else:
            n_prefix = self.num_prefix_tokens
            pos = torch.cat(
                [
                    self.pos_embed[:, :n_prefix],
                    self._resize(self.pos_embed[:, n_prefix:], H, W),
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
