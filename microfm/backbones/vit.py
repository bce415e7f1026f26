"""The microfm backbone: a timm ViT behind a uniform interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from microfm.errors import ConfigError

PATCH_MULTIPLE_MODES = (None, "resize", "pad")


class Backbone(nn.Module):
    """A timm ViT with microfm's interface.

    ``forward_features(x)`` returns ``{"cls": (B, D), "patch": (B, D, H/p, W/p)}``, both after
    the final norm (the official ``x_norm_clstoken`` / ``x_norm_patchtokens``);
    ``get_intermediate_layers(x, indices)`` returns normed (B, D, H/p, W/p) maps of the given
    blocks; ``forward_dense(x, indices)`` returns both from a single pass. Inputs are images
    scaled to about [0, 1] per channel; the backbone applies its own pretraining mean/std
    (after the learned channel adapter, when there is one).

    Input sizes must be multiples of the patch size unless ``patch_multiple`` snaps them:
    ``resize`` (bilinear, to the nearest multiple) or ``pad`` (reflect, to the next multiple);
    the maps then describe the snapped image, and :meth:`snap` gives the function that maps
    a dense prediction back to the input size.

    Args:
        model: a timm ``VisionTransformer``/``Eva`` built with ``num_classes=0``.
        name: registry name.
        patch_size: patch side in pixels.
        intermediate_layers: default block indices for dense heads.
        mean, std: per-channel input normalisation (length ``in_chans``).
        normalize: apply mean/std inside the backbone.
        licence: licence of the loaded weights.
        pretrained: whether pretrained weights were loaded.
        channel_adapter: a module mapping the data channels to the model's (learned adapter).
        patch_multiple: ``None`` (sizes must be multiples), ``resize`` or ``pad``.
        norm_stats: where mean/std come from: ``pretrained`` or ``dataset`` (set by the
            trainer with :meth:`set_normalization`).
        weights_path: the weights file that was loaded.
        weights_format: its format as recognised (e.g. ``official DINOv2``, ``DINO teacher``).

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
        channel_adapter: nn.Module | None = None,
        patch_multiple: str | None = None,
        norm_stats: str = "pretrained",
        weights_path: str | None = None,
        weights_format: str | None = None,
    ) -> None:
        super().__init__()
        if patch_multiple not in PATCH_MULTIPLE_MODES:
            raise ConfigError(
                f"backbone.patch_multiple must be null, resize or pad, got {patch_multiple!r}"
            )
        self.model = model
        self.channel_adapter = channel_adapter
        self.patch_multiple = patch_multiple
        self.norm_stats = norm_stats
        self.weights_path = weights_path
        self.weights_format = weights_format
        self.name = name
        self.patch_size = int(patch_size)
        self.embed_dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.intermediate_layers = tuple(int(i) for i in intermediate_layers)
        model_chans = int(model.patch_embed.proj.in_channels)
        self.in_chans = (
            int(channel_adapter.in_chans) if channel_adapter is not None else model_chans
        )
        self.normalize = normalize
        self.licence = licence
        self.pretrained = pretrained
        if len(mean) != model_chans or len(std) != model_chans:
            raise ValueError(
                f"backbone.mean/std need {model_chans} values (one per channel), "
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

    def set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Replace the input mean/std (one value per model input channel)."""
        mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        if mean_t.shape != self.mean.shape or std_t.shape != self.std.shape:
            raise ValueError(f"need {self.mean.shape[1]} mean/std values, got {tuple(mean)}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.mean.copy_(mean_t)
        self.std.copy_(std_t)

    def snapped_size(self, H: int, W: int) -> tuple[int, int]:
        """The input size the model sees for an H×W image."""
        p = self.patch_size
        if self.patch_multiple == "pad":
            return -(-H // p) * p, -(-W // p) * p
        if self.patch_multiple == "resize":
            return max(p, round(H / p) * p), max(p, round(W / p) * p)
        return H, W

    def snap(self, x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """Snap a batch to a patch multiple (see ``patch_multiple``).

        Returns:
            ``(snapped, restore)``: the snapped batch and a function that maps a dense output
            of the snapped size, (B, C, H', W'), back to the input size (crop or resize).
        """
        H, W = x.shape[-2:]
        Hs, Ws = self.snapped_size(H, W)
        if (Hs, Ws) == (H, W):
            return x, lambda t: t
        if self.patch_multiple == "pad":
            mode = "reflect" if Hs - H < H and Ws - W < W else "replicate"
            padded = F.pad(x, (0, Ws - W, 0, Hs - H), mode=mode)
            return padded, lambda t: t[..., :H, :W]
        resized = F.interpolate(x, size=(Hs, Ws), mode="bilinear", align_corners=False)
        return resized, lambda t: F.interpolate(
            t, size=(H, W), mode="bilinear", align_corners=False
        )

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{self.name} expects (B, {self.in_chans}, H, W) input, got {tuple(x.shape)}"
            )
        H, W = x.shape[-2:]
        if self.patch_multiple is not None:
            x, _ = self.snap(x)
        elif H % self.patch_size or W % self.patch_size:
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the patch size {self.patch_size} "
                f"of {self.name} (set backbone.patch_multiple=resize or pad to snap it)"
            )
        if self.channel_adapter is not None:
            x = self.channel_adapter(x)
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
