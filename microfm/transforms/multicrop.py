"""Multi-crop views for self-supervised learning (DINO/iBOT, and single views for MAE).

Views are made from a batch of fields (B, C, H, W) on the batch's device, so any DataModule
(synthetic, folders, unlabelled stacks) feeds self-supervised training. All crops of a batch
are resampled in one ``torchvision.ops.roi_align`` call (bilinear, averaging several samples
per output pixel when a crop shrinks, which avoids aliasing). The augmentations are the ones
that hold for microscopy: flips and 90° rotations (no preferred orientation), intensity changes
per channel (brightness, contrast, gamma: no assumption of RGB colour), Gaussian blur (focus)
and Gaussian noise. Random choices come from one seed per sample (run seed, epoch, index), so
views do not depend on the batch composition or the device.

Channel strategies for multi-channel fields (DINOCell):

- ``all``: every view has all C channels;
- ``average``: the channel average (1 channel), the simple baseline;
- ``as_view``: each view of a field shows a random subset of ``view_channels`` channels, so the
  model learns that different stains of one field are views of the same content.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from microfm.errors import ConfigError
from microfm.utils.seeding import derive_seed

_NOISE = 400  # purpose of the seeds of a view's noise (+ view index)

log = logging.getLogger(__name__)

CHANNEL_MODES = ("all", "average", "as_view")


def _pair(value: Sequence[float] | None, key: str) -> tuple[float, float] | None:
    if value is None:
        return None
    lo, hi = (float(v) for v in value)
    if lo > hi:
        raise ConfigError(f"task.views.{key} must be [low, high] with low <= high, got {value}")
    return lo, hi


class MultiCrop:
    """Random resized crops of a batch of fields, with microscopy augmentation.

    Args:
        global_size: side of the global views (pixels); None: the side of the incoming fields
            (their shorter side, rounded down to the patch size after :meth:`fit_patch`).
        local_size: side of the local views.
        n_global: number of global views (the teacher sees these).
        n_local: number of local views (student only).
        global_scale: range of the field-area fraction of a global crop.
        local_scale: range of the field-area fraction of a local crop.
        ratio: range of the crop aspect ratio (sampled log-uniformly).
        hflip, vflip: flip probabilities.
        rot90: probability of a random multiple-of-90° rotation.
        brightness: multiplicative range per channel, or None.
        contrast: contrast factor range per channel (around the view's channel mean), or None.
        gamma: gamma range (``sign(x)|x|^g``), or None.
        intensity_p: probability that a view gets the intensity changes.
        blur: Gaussian blur sigma range (pixels of the view), or None.
        blur_p: blur probability per view.
        noise: largest standard deviation of additive Gaussian noise, or None.
        noise_p: noise probability per view.
        channel_mode: ``all``, ``average`` or ``as_view`` (see the module docstring).
        view_channels: channels per view for ``as_view``.

    Example:
        >>> mc = MultiCrop(global_size=32, local_size=16, n_local=2)
        >>> views = mc(torch.rand(4, 1, 64, 64), seeds=[0, 1, 2, 3])
        >>> [tuple(v.shape) for v in views]
        [(4, 1, 32, 32), (4, 1, 32, 32), (4, 1, 16, 16), (4, 1, 16, 16)]
    """

    def __init__(
        self,
        global_size: int | None = 224,
        local_size: int = 96,
        n_global: int = 2,
        n_local: int = 8,
        global_scale: Sequence[float] = (0.32, 1.0),
        local_scale: Sequence[float] = (0.05, 0.32),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        vflip: float = 0.5,
        rot90: float = 0.5,
        brightness: Sequence[float] | None = (0.8, 1.2),
        contrast: Sequence[float] | None = (0.8, 1.2),
        gamma: Sequence[float] | None = None,
        intensity_p: float = 0.8,
        blur: Sequence[float] | None = (0.1, 2.0),
        blur_p: float = 0.5,
        noise: float | None = None,
        noise_p: float = 0.0,
        channel_mode: str = "all",
        view_channels: int = 1,
    ) -> None:
        if n_global < 1 or n_local < 0:
            raise ConfigError(
                f"task.views needs n_global >= 1, n_local >= 0 ({n_global}, {n_local})"
            )
        if channel_mode not in CHANNEL_MODES:
            raise ConfigError(
                f"task.views.channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}"
            )
        for key, size in (("global_size", global_size), ("local_size", local_size)):
            if size is not None and int(size) < 1:
                raise ConfigError(f"task.views.{key} must be positive, got {size}")
        self.global_size = int(global_size) if global_size is not None else None
        self.local_size = int(local_size)
        self.n_global = int(n_global)
        self.n_local = int(n_local)
        self.global_scale = _pair(global_scale, "global_scale")
        self.local_scale = _pair(local_scale, "local_scale")
        self.ratio = _pair(ratio, "ratio")
        self.hflip, self.vflip, self.rot90 = float(hflip), float(vflip), float(rot90)
        self.brightness = _pair(brightness, "brightness")
        self.contrast = _pair(contrast, "contrast")
        self.gamma = _pair(gamma, "gamma")
        self.intensity_p = float(intensity_p)
        self.blur = _pair(blur, "blur")
        self.blur_p = float(blur_p)
        self.noise = float(noise) if noise else None
        self.noise_p = float(noise_p)
        self.channel_mode = channel_mode
        self.view_channels = int(view_channels)
        self.patch_size = 1

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    def out_channels(self, in_chans: int) -> int:
        """Channels of every view for fields of ``in_chans`` channels."""
        if self.channel_mode == "average":
            return 1
        if self.channel_mode == "as_view":
            if not 1 <= self.view_channels <= in_chans:
                raise ConfigError(
                    f"task.views.view_channels={self.view_channels} must be between 1 and the "
                    f"{in_chans} data channels"
                )
            return self.view_channels
        return in_chans

    def fit_patch(self, patch_size: int) -> None:
        """Round the view sizes to multiples of the backbone's patch size (in place)."""
        self.patch_size = int(patch_size)
        for key in ("global_size", "local_size"):
            size = getattr(self, key)
            if size is None:
                continue
            fit = max(patch_size, round(size / patch_size) * patch_size)
            if fit != size:
                log.info(
                    "task.views.%s=%d rounded to %d (patch size %d)", key, size, fit, patch_size
                )
                setattr(self, key, fit)

    # -- random parameters -----------------------------------------------------------------
    def _box(self, rng: np.random.Generator, H: int, W: int, scale) -> tuple[float, ...]:
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*scale)
            aspect = math.exp(rng.uniform(*log_r))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if 0 < w <= W and 0 < h <= H:
                x0 = rng.uniform(0, W - w)
                y0 = rng.uniform(0, H - h)
                return (x0, y0, x0 + w, y0 + h)
        side = min(H, W)  # fallback: the central square
        x0, y0 = (W - side) / 2, (H - side) / 2
        return (x0, y0, x0 + side, y0 + side)

    def _params(self, seed: int, H: int, W: int, C: int) -> list[dict]:
        rng = np.random.default_rng(int(seed))
        out = []
        for v in range(self.n_views):
            scale = self.global_scale if v < self.n_global else self.local_scale
            p = {
                "box": self._box(rng, H, W, scale),
                "hflip": rng.random() < self.hflip,
                "vflip": rng.random() < self.vflip,
                "rot": int(rng.integers(1, 4)) if rng.random() < self.rot90 else 0,
                "channels": np.sort(rng.permutation(C)[: self.view_channels])
                if self.channel_mode == "as_view"
                else None,
            }
            c = self.out_channels(C)
            jitter = rng.random() < self.intensity_p
            p["brightness"] = (
                rng.uniform(*self.brightness, c) if jitter and self.brightness else None
            )
            p["contrast"] = rng.uniform(*self.contrast, c) if jitter and self.contrast else None
            p["gamma"] = rng.uniform(*self.gamma, c) if jitter and self.gamma else None
            p["blur"] = rng.uniform(*self.blur) if self.blur and rng.random() < self.blur_p else 0.0
            p["noise"] = (
                rng.uniform(0, self.noise) if self.noise and rng.random() < self.noise_p else 0.0
            )
            out.append(p)
        return out

    # -- views -----------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, seeds: Sequence[int]) -> list[torch.Tensor]:
        """Views of fields (B, C, H, W): ``n_global`` tensors (B, c, global_size, global_size),
        then ``n_local`` tensors (B, c, local_size, local_size); one seed per field."""
        from torchvision.ops import roi_align

        B, C, H, W = images.shape
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} seeds for {B} images")
        params = [self._params(int(s), H, W, C) for s in seeds]
        x = images.float()
        if self.channel_mode == "average":
            x = x.mean(dim=1, keepdim=True)
        device = x.device
        field = max(self.patch_size, min(H, W) // self.patch_size * self.patch_size)
        views = []
        for v in range(self.n_views):
            size = (self.global_size or field) if v < self.n_global else self.local_size
            pv = [p[v] for p in params]
            boxes = torch.tensor(
                [[b, *p["box"]] for b, p in enumerate(pv)], dtype=torch.float32, device=device
            )
            view = roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, aligned=True)
            if self.channel_mode == "as_view":
                idx = torch.as_tensor(np.stack([p["channels"] for p in pv]), device=device)
                view = view.gather(1, idx[:, :, None, None].expand(-1, -1, size, size))
            noise_seeds = [derive_seed(int(s), _NOISE + v) for s in seeds]
            views.append(self._augment(view, pv, noise_seeds))
        return views

    def _augment(self, view: torch.Tensor, pv: list[dict], noise_seeds: list[int]) -> torch.Tensor:
        device = view.device

        def flags(key: str) -> torch.Tensor:
            return torch.tensor([bool(p[key]) for p in pv], device=device)[:, None, None, None]

        view = torch.where(flags("hflip"), view.flip(-1), view)
        view = torch.where(flags("vflip"), view.flip(-2), view)
        rot = torch.tensor([p["rot"] for p in pv], device=device)[:, None, None, None]
        if bool((rot > 0).any()):
            out = view
            for k in (1, 2, 3):
                out = torch.where(rot == k, torch.rot90(view, k, dims=(-2, -1)), out)
            view = out
        c = view.shape[1]

        def per_channel(key: str, neutral: float) -> torch.Tensor | None:
            if all(p[key] is None for p in pv):
                return None
            rows = [p[key] if p[key] is not None else np.full(c, neutral) for p in pv]
            return torch.tensor(np.stack(rows), dtype=view.dtype, device=device)[:, :, None, None]

        b = per_channel("brightness", 1.0)
        if b is not None:
            view = view * b
        k = per_channel("contrast", 1.0)
        if k is not None:
            mean = view.mean(dim=(-2, -1), keepdim=True)
            view = (view - mean) * k + mean
        g = per_channel("gamma", 1.0)
        if g is not None:
            view = view.sign() * view.abs().pow(g)
        sigma = [p["blur"] for p in pv]
        if any(s > 0 for s in sigma):
            view = _gaussian_blur(view, sigma)
        std = torch.tensor([p["noise"] for p in pv], dtype=view.dtype, device=device)
        if bool((std > 0).any()):  # each sample's noise from its own seed
            noise = torch.zeros_like(view)
            for i in torch.nonzero(std > 0).flatten().tolist():
                gen = torch.Generator(device=device).manual_seed(noise_seeds[i])
                noise[i] = torch.randn(view.shape[1:], generator=gen, device=device)
            view = view + noise * std[:, None, None, None]
        return view.contiguous()


def _blur_matrices(kernel: torch.Tensor, size: int, radius: int) -> torch.Tensor:
    """(B, S, S) matrices applying each sample's 1-D kernel (B, 2r+1) along an axis of length
    S with reflect padding."""
    B = kernel.shape[0]
    offsets = torch.arange(-radius, radius + 1, device=kernel.device)
    idx = torch.arange(size, device=kernel.device)[:, None] + offsets[None]
    idx = idx.abs()
    idx = torch.where(idx > size - 1, 2 * (size - 1) - idx, idx)
    G = torch.zeros(B, size, size, dtype=kernel.dtype, device=kernel.device)
    weights = kernel[:, None, :].expand(-1, size, -1).contiguous()
    return G.scatter_add_(2, idx[None].expand(B, -1, -1), weights)


def _gaussian_blur(x: torch.Tensor, sigma: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample (0: unchanged), reflect padding, as
    two batched matrix products (one kernel per sample, fast on CPU and GPU alike)."""
    B, _, H, W = x.shape
    radius = min(max(1, math.ceil(3 * max(sigma))), H - 1, W - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = torch.tensor(sigma, device=x.device, dtype=x.dtype)[:, None]
    kernel = torch.exp(-0.5 * (t[None] / s.clamp(min=1e-6)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    delta = (t == 0).to(x.dtype)[None].expand(B, -1)
    kernel = torch.where(s > 0, kernel, delta)
    gh = _blur_matrices(kernel, H, radius)[:, None]
    gw = _blur_matrices(kernel, W, radius)[:, None]
    return gh @ x @ gw.transpose(-1, -2)
