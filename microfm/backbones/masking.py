"""Token masking inside a backbone's timm ViT, for masked image modelling.

Two ways of hiding patches from the encoder, both operating on ``Backbone.model`` (a timm
``VisionTransformer`` with absolute position embeddings, e.g. DINOv2/MAE, or a timm ``Eva``
with rotary position embeddings, e.g. DINOv3):

- **drop** (MAE): position embeddings are applied to every patch, then only the kept patches
  (and the prefix tokens: class and register tokens) enter the transformer blocks; with RoPE the
  rotary embedding is gathered at the kept positions, as timm's own patch dropout does;
- **substitute** (iBOT): masked patch embeddings are replaced by a learned mask token *before*
  position embeddings are added, and the whole sequence runs through the blocks.

Also random patch masks and the (un)patchify pixel layout shared by the MAE decoder and loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microfm.errors import ConfigError
from microfm.utils.seeding import sample_generators

_MAE_MASK, _IBOT_MASK = 101, 102  # purposes of the per-sample generators

__all__ = [
    "encode_tokens",
    "masked_image",
    "patchify",
    "prepare_input",
    "random_keep",
    "random_patch_mask",
    "unpatchify",
]


def _kind(model: nn.Module) -> str:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, Eva):
        if getattr(model, "rope_mixed", False):
            raise ConfigError(
                "token masking does not support timm Eva models with per-depth ('mixed') RoPE"
            )
        return "eva"
    if isinstance(model, VisionTransformer):
        return "vit"
    raise ConfigError(
        f"token masking supports timm VisionTransformer and Eva models, not {type(model).__name__}"
    )


def prepare_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Check an image batch (B, C, H, W) and apply the backbone's input normalisation, as
    :meth:`Backbone.forward_features` does."""
    patch = int(backbone.patch_size)
    in_chans = int(backbone.model.patch_embed.proj.in_channels)
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"expected a (B, {in_chans}, H, W) batch, got {tuple(x.shape)}")
    if x.shape[-2] % patch or x.shape[-1] % patch:
        raise ValueError(
            f"input size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {patch}"
        )
    if getattr(backbone, "normalize", False):
        x = (x - backbone.mean.to(x.dtype)) / backbone.std.to(x.dtype)
    return x


def _run_blocks(model: nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
    # blocks checkpoint themselves (microfm.backbones.checkpointing)
    kwargs = {} if rope is None else {"rope": rope}
    for blk in model.blocks:
        x = blk(x, **kwargs)
    return x


def encode_tokens(
    backbone: nn.Module,
    x: torch.Tensor,
    keep: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Run a backbone's ViT on an image batch with optional patch masking.

    Args:
        backbone: a :class:`microfm.backbones.Backbone` (its ``model`` may carry LoRA adapters).
        x: images (B, C, H, W) scaled to about [0, 1]; normalised here like the backbone does.
        keep: (B, K) indices (row-major over the h×w patch grid) of the only patches that enter
            the blocks (MAE). The same K for every sample.
        mask: (B, h*w) boolean, True where the patch embedding is replaced by ``mask_token``
            (iBOT).
        mask_token: (D,) or (1, 1, D) learned embedding for ``mask``.

    Returns:
        ``cls`` (B, D), ``prefix`` (B, P, D) (class and register tokens), ``patch`` (B, N, D)
        with N = K for ``keep`` and h*w otherwise, and ``tokens`` (B, P + N, D); all after the
        final norm.

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> keep = torch.tensor([[0, 3, 5]])
        >>> encode_tokens(bb, torch.rand(1, 1, 32, 32), keep=keep)["patch"].shape
        torch.Size([1, 3, 64])
    """
    model = backbone.model
    kind = _kind(model)
    x = prepare_input(backbone, x)
    t = model.patch_embed(x)
    if t.ndim == 4:  # dynamic image size: (B, h, w, D)
        B, h, w, D = t.shape
    else:
        B, _, D = t.shape
        h, w = model.patch_embed.grid_size
    if mask is not None:
        if mask_token is None:
            raise ValueError("mask given without a mask_token")
        m = mask.reshape(B, h * w, 1).to(torch.bool)
        flat = torch.where(m, mask_token.reshape(1, 1, D).to(t.dtype), t.reshape(B, h * w, D))
        t = flat.reshape(t.shape)
    rope = None
    if kind == "eva":
        t, rope = model._pos_embed(t)
    else:
        t = model._pos_embed(t)
        t = model.patch_drop(t)
    t = model.norm_pre(t)
    P = int(model.num_prefix_tokens)
    if keep is not None:
        keep = keep.to(device=t.device, dtype=torch.long)
        patches = t[:, P:].gather(1, keep.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        t = torch.cat([t[:, :P], patches], dim=1)
        if rope is not None:
            from timm.layers import apply_keep_indices_nlc

            rope = apply_keep_indices_nlc(patches, rope, keep).unsqueeze(1)
    t = model.norm(_run_blocks(model, t, rope))
    return {"cls": t[:, 0], "prefix": t[:, :P], "patch": t[:, P:], "tokens": t}


def random_keep(
    batch: int,
    num_patches: int,
    ratio: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE masking: per sample a random subset of ``round(num_patches * (1 - ratio))`` patches
    (at least one) is kept.

    Args:
        seeds: one seed per sample (see :mod:`microfm.utils.seeding`): each sample's mask then
            depends on its seed alone, not on the process or its batch; else ``generator``
            (or the global generator) draws the whole batch's.

    Returns:
        ``keep`` (B, K) sorted patch indices and ``mask`` (B, N) boolean, True where masked.
    """
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"task.mask_ratio must be in [0, 1), got {ratio}")
    n_keep = max(1, round(num_patches * (1.0 - ratio)))
    if seeds is not None:
        _check_seeds(seeds, batch)
        gens = sample_generators(seeds, _MAE_MASK)
        noise = torch.stack([torch.rand(num_patches, generator=g) for g in gens])
    else:
        noise = torch.rand(batch, num_patches, generator=generator)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    mask = torch.ones(batch, num_patches, dtype=torch.bool)
    mask.scatter_(1, keep, False)
    return keep.to(device), mask.to(device)


def _check_seeds(seeds: Sequence[int], batch: int) -> None:
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for a batch of {batch}")


def random_patch_mask(
    batch: int,
    num_patches: int,
    ratio_range: tuple[float, float],
    probability: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """iBOT masking: some samples get a random set of masked patches, their ratio drawn
    uniformly in ``ratio_range``; the other samples are not masked.

    With ``seeds`` (one per sample, see :mod:`microfm.utils.seeding`) each sample is masked
    with ``probability``, its ratio and patches drawn from its own seed, so the masks do not
    depend on the process or on which samples share the batch (under DDP each rank masks its
    own samples differently, and a 2-process run masks as one process does). Without,
    ``round(batch * probability)`` samples of the batch (at least one when ``probability`` >
    0) are drawn from ``generator`` (or the global generator).

    Returns:
        (B, N) boolean, True where masked.
    """
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    if not 0.0 <= lo <= hi < 1.0:
        raise ConfigError(f"task.mask_ratio must be 0 <= min <= max < 1, got {ratio_range}")
    mask = torch.zeros(batch, num_patches, dtype=torch.bool)
    if probability <= 0:
        return mask.to(device)
    if seeds is not None:
        _check_seeds(seeds, batch)
        for i, g in enumerate(sample_generators(seeds, _IBOT_MASK)):
            draws = torch.rand(2, generator=g).tolist()
            if draws[0] < probability:
                k = max(1, round((lo + (hi - lo) * draws[1]) * num_patches))
                mask[i, torch.randperm(num_patches, generator=g)[:k]] = True
        return mask.to(device)
    n_masked = min(batch, max(1, round(batch * probability)))
    chosen = torch.randperm(batch, generator=generator)[:n_masked]
    ratios = lo + (hi - lo) * torch.rand(n_masked, generator=generator)
    for i, r in zip(chosen.tolist(), ratios.tolist()):
        k = max(1, round(r * num_patches))
        mask[i, torch.randperm(num_patches, generator=generator)[:k]] = True
    return mask.to(device)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, h*w, p*p*C), patches in row-major order, pixels as (p, p, C)."""
    B, C, H, W = images.shape
    h, w = H // patch, W // patch
    x = images.reshape(B, C, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, h*w, p*p*C) -> (B, C, h*p, w*p)."""
    B, _N, L = patches.shape
    h, w = grid
    C = L // (patch * patch)
    x = patches.reshape(B, h, w, patch, patch, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, C, h * patch, w * patch)


def masked_image(images: torch.Tensor, mask: torch.Tensor, patch: int) -> torch.Tensor:
    """``images`` with the masked patches (``mask`` (B, N), True = masked) set to zero."""
    B, _C, H, W = images.shape
    m = mask.reshape(B, 1, H // patch, W // patch).to(images.dtype)
    return images * (1 - F.interpolate(m, scale_factor=patch, mode="nearest"))
