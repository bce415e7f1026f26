"""Sliding-window inference over images of any size (plain torch).

The image (already normalised from whole-image statistics) is reflect-padded by a margin at
its borders (and up to one tile when it is smaller than a tile); tiles whose sides are
multiples of the patch size are cut at a regular stride, with the last tile flush with the
padded border, run through the model in batches, and their *raw* outputs (distance maps,
logits, log-depth) are blended with a Hann (cosine) window: each pixel gets the window-weighted
mean of every tile covering it. The window is strictly positive, so a model that is the
identity gives back its input, and it falls smoothly to almost zero at tile edges, so tile
borders leave no seams. Post-processing (watershed, argmax) then runs once on the blended
whole image.

Outputs with a spatial size (B, K, h, w) are blended; global outputs (B, K) (classification)
are averaged over the tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

Model = Callable[[torch.Tensor], "dict[str, torch.Tensor]"]
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``tile`` covering ``[0, length)`` at ``stride``; the last
    tile ends at ``length`` (``length >= tile``)."""
    if length < tile:
        raise ValueError(f"length {length} is smaller than the tile {tile}")
    if not 1 <= stride <= tile:
        raise ValueError(f"stride must be in [1, tile={tile}], got {stride}")
    n = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(n)})


def hann_window(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(h, w) separable Hann window ``sin²(π (i + ½) / n)``: strictly positive, 1 at the
    centre, almost 0 at the edges."""

    def one(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=torch.float64)
        return torch.sin(math.pi * (i + 0.5) / n) ** 2

    return (one(h)[:, None] * one(w)[None, :]).to(dtype)


@dataclass(frozen=True)
class Plan:
    """Where the tiles of one image go.

    ``pad`` = (top, bottom, left, right) reflect padding; ``tile`` = (th, tw); ``ys``/``xs``
    tile starts in padded coordinates; ``shape`` = (H, W) of the unpadded image.
    """

    shape: tuple[int, int]
    pad: tuple[int, int, int, int]
    tile: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, int]:
        t, b, left, r = self.pad
        return self.shape[0] + t + b, self.shape[1] + left + r

    @property
    def num_tiles(self) -> int:
        return len(self.ys) * len(self.xs)


def reflect_pad(image: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Reflect-pad the last two axes by (top, bottom, left, right) (any amount: images smaller
    than the padding are reflected repeatedly)."""
    t, b, left, r = pad
    if not any(pad):
        return image
    widths = [(0, 0)] * (image.ndim - 2) + [(t, b), (left, r)]
    mode = "reflect" if min(image.shape[-2:]) > 1 else "edge"
    return np.pad(image, widths, mode=mode)


def flip_tta(model: Model, flips: Sequence[tuple[int, ...]] = FLIPS) -> Model:
    """Test-time augmentation: the mean of ``model`` over flipped inputs, each spatial output
    flipped back (global outputs are averaged as they are)."""

    def run(x: torch.Tensor) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        for dims in flips:
            out = model(torch.flip(x, dims) if dims else x)
            for key, value in out.items():
                value = value.float()
                if dims and value.ndim == 4:
                    value = torch.flip(value, dims)
                total[key] = total[key] + value if key in total else value
        return {k: v / len(flips) for k, v in total.items()}

    return run


class SlidingWindow:
    """Tile, batch, blend.

    Args:
        tile_size: tile side in pixels, snapped down to a multiple of ``patch_size`` (images
            smaller than a tile use a smaller tile, the padded image size snapped up).
        overlap: overlap of neighbouring tiles in pixels (``0 <= overlap < tile_size``).
        patch_size: tile sides are multiples of this (the ViT patch size).
        batch_size: tiles per model call.
        margin: reflect padding added at the image borders (default ``overlap // 2``).

    Example:
        >>> sw = SlidingWindow(tile_size=32, overlap=8, patch_size=8)
        >>> x = torch.rand(1, 50, 70)
        >>> out = sw(lambda t: {"id": t}, x)["id"]
        >>> out.shape, bool(torch.allclose(out, x, atol=1e-6))
        (torch.Size([1, 50, 70]), True)
    """

    def __init__(
        self,
        tile_size: int,
        overlap: int = 0,
        patch_size: int = 1,
        batch_size: int = 8,
        margin: int | None = None,
    ) -> None:
        patch_size = int(patch_size)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if int(tile_size) < patch_size:
            raise ValueError(f"tile_size {tile_size} is smaller than the patch size {patch_size}")
        self.patch_size = patch_size
        self.tile_size = int(tile_size) // patch_size * patch_size
        self.overlap = int(overlap)
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(
                f"overlap must be in [0, tile_size={self.tile_size}), got {self.overlap}"
            )
        self.batch_size = max(1, int(batch_size))
        self.margin = self.overlap // 2 if margin is None else int(margin)
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    def _axis(self, length: int) -> tuple[int, int, int, list[int]]:
        """(pad before, pad after, tile, starts) along one axis."""
        p = self.patch_size
        before = after = self.margin
        total = length + before + after
        tile = min(self.tile_size, math.ceil(total / p) * p)
        after += max(0, tile - total)
        starts = tile_starts(length + before + after, tile, min(self.stride, tile))
        return before, after, tile, starts

    def plan(self, height: int, width: int) -> Plan:
        """The tiles of an image of ``height`` × ``width``."""
        if height < 1 or width < 1:
            raise ValueError(f"empty image of size {height}x{width}")
        t, b, th, ys = self._axis(height)
        left, r, tw, xs = self._axis(width)
        return Plan((height, width), (t, b, left, r), (th, tw), tuple(ys), tuple(xs))

    def __call__(
        self, model: Model, image: torch.Tensor | np.ndarray, device=None
    ) -> dict[str, torch.Tensor]:
        """Blended outputs of ``model`` over ``image`` (C, H, W): spatial outputs as
        (K, H, W), global outputs as (K,), float32 on ``device`` (default: the image's)."""
        if isinstance(image, torch.Tensor):
            device = device or image.device
            image = image.detach().cpu().numpy()
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
        plan = self.plan(*image.shape[-2:])
        padded = torch.from_numpy(np.ascontiguousarray(reflect_pad(image, plan.pad)))
        padded = padded.to(device or "cpu")
        acc = Accumulator(plan.padded, plan.tile, device=padded.device)
        acc.run(model, padded, plan.ys, plan.xs, self.batch_size)
        t, _, left, _ = plan.pad
        H, W = plan.shape
        return acc.result((slice(t, t + H), slice(left, left + W)))


class Accumulator:
    """Window-weighted sums of tile outputs over a canvas of ``shape`` (H, W).

    Args:
        shape: canvas size (the padded image or a block of it).
        tile: (th, tw) of every tile.
        device: where the sums live.
    """

    def __init__(self, shape: tuple[int, int], tile: tuple[int, int], device=None) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.tile = tuple(int(s) for s in tile)
        self.device = device
        self.window = hann_window(*self.tile, device=device)
        self.weight = torch.zeros(self.shape, device=device)
        self.sums: dict[str, torch.Tensor] = {}
        self.global_sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, outputs: dict[str, torch.Tensor], positions: Sequence[tuple[int, int]]) -> None:
        """Add the outputs of a batch of tiles at ``positions`` (y, x) of the canvas."""
        th, tw = self.tile
        for y, x in positions:
            self.weight[y : y + th, x : x + tw] += self.window
        self.count += len(positions)
        for key, value in outputs.items():
            value = value.detach().float()
            if value.ndim == 2:  # (B, K) global output
                s = value.sum(0)
                self.global_sums[key] = self.global_sums[key] + s if key in self.global_sums else s
                continue
            if value.ndim != 4 or tuple(value.shape[-2:]) != self.tile:
                raise ValueError(
                    f"output {key!r} of shape {tuple(value.shape)} is neither (B, K) nor "
                    f"(B, K, {th}, {tw}) for tiles of {th}x{tw}"
                )
            if key not in self.sums:
                self.sums[key] = torch.zeros((value.shape[1], *self.shape), device=self.device)
            target = self.sums[key]
            weighted = value.to(target.device) * self.window
            for i, (y, x) in enumerate(positions):
                target[:, y : y + th, x : x + tw] += weighted[i]

    def run(
        self,
        model: Model,
        canvas: torch.Tensor,
        ys: Iterable[int],
        xs: Iterable[int],
        batch_size: int,
        offset: tuple[int, int] = (0, 0),
    ) -> None:
        """Cut the tiles at ``(y, x)`` for every y in ``ys`` and x in ``xs`` (coordinates of
        the canvas plus ``offset``) from ``canvas`` (C, H, W), run ``model`` in batches and
        add the outputs."""
        th, tw = self.tile
        oy, ox = offset
        positions = [(y - oy, x - ox) for y in ys for x in xs]
        for batch in _chunks(positions, batch_size):
            tiles = torch.stack([canvas[:, y : y + th, x : x + tw] for y, x in batch])
            self.add(model(tiles), batch)

    def result(self, region: tuple[slice, slice] | None = None) -> dict[str, torch.Tensor]:
        """Blended spatial outputs (K, h, w) over ``region`` of the canvas, and global outputs
        (K,) averaged over the tiles."""
        region = region or (slice(None), slice(None))
        weight = self.weight[region]
        out = {k: v[(slice(None), *region)] / weight for k, v in self.sums.items()}
        out.update({k: v / max(self.count, 1) for k, v in self.global_sums.items()})
        return out


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
