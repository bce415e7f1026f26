"""The microfm backbone: a timm ViT behind a uniform interface."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Backbone(nn.Module):
    """A timm ViT with microfm's interface.

    ``forward_features(x)`` returns ``{"cls": (B, D), "patch": (B, D, H/p, W/p)}``, both after
    the final norm (the official ``x_norm_clstoken`` / ``x_norm_patchtokens``);
    ``get_intermediate_layers(x, indices)`` returns normed (B, D, H/p, W/p) maps of the given
    blocks; ``forward_dense(x, indices)`` returns both from a single pass. Inputs are images
    scaled to about [0, 1] per channel; the backbone applies its own pretraining mean/std.

    Args:
        model: a timm ``VisionTransformer``/``Eva`` built with ``num_classes=0``.
        name: registry name.
        patch_size: patch side in pixels.
        intermediate_layers: default block indices for dense heads.
        mean, std: per-channel input normalisation (length ``in_chans``).
        normalize: apply mean/std inside the backbone.
        licence: licence of the loaded weights.
        pretrained: whether pretrained weights were loaded.

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> feats = bb.forward_features(torch.rand(2, 1, 32, 32))
        >>> feats["patch"].shape
        torch.Size([2, 64, 4, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        patch_size: int,
        intermediate_layers: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool = True,
        licence: str = "unknown",
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.patch_size = int(patch_size)
        self.embed_dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.intermediate_layers = tuple(int(i) for i in intermediate_layers)
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.normalize = normalize
        self.licence = licence
        self.pretrained = pretrained
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ValueError(
                f"backbone.mean/std need {self.in_chans} values (one per channel), "
                f"got {len(mean)} and {len(std)}"
            )
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        for i in self.intermediate_layers:
            if not 0 <= i < self.depth:
                raise ValueError(
                    f"backbone.intermediate_layers: block {i} does not exist "
                    f"({name} has blocks 0..{self.depth - 1})"
                )

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.name} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the patch size {self.patch_size} "
                f"of {self.name}"
            )
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def _split(self, tokens: torch.Tensor, h: int, w: int) -> dict[str, torch.Tensor]:
        patch = tokens[:, self.num_prefix_tokens :]
        B, _, D = patch.shape
        return {"cls": tokens[:, 0], "patch": patch.transpose(1, 2).reshape(B, D, h, w)}

    def forward_dense(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """One pass returning ``cls``, ``patch`` and ``layers`` (the normed maps of
        ``indices``, default ``intermediate_layers``)."""
        x = self._prepare(x)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        indices = list(self.intermediate_layers if indices is None else indices)
        final, layers = self.model.forward_intermediates(
            x, indices=indices, norm=True, output_fmt="NCHW", intermediates_only=False
        )
        out: dict[str, torch.Tensor | list[torch.Tensor]] = dict(self._split(final, h, w))
        out["layers"] = list(layers)
        return out

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Final-norm CLS token (B, D) and patch-token map (B, D, H/p, W/p)."""
        x = self._prepare(x)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return self._split(self.model.forward_features(x), h, w)

    def get_intermediate_layers(
        self, x: torch.Tensor, indices: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Normed (B, D, H/p, W/p) maps of the given blocks (default ``intermediate_layers``)."""
        x = self._prepare(x)
        indices = list(self.intermediate_layers if indices is None else indices)
        return list(
            self.model.forward_intermediates(
                x, indices=indices, norm=True, output_fmt="NCHW", intermediates_only=True
            )
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward_features(x)
