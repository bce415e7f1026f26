"""Random training crops of large images (with a minimum foreground fraction) and padding.

Crops are chosen from a seeded generator and read as regions, so a memory-mapped or zarr image
is never loaded whole; images smaller than the crop are padded.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def random_crop_region(
    shape: tuple[int, int],
    size: int,
    rng: np.random.Generator,
    foreground=None,
    min_foreground: float = 0.0,
    tries: int = 10,
) -> tuple[slice, slice]:
    """A ``size``×``size`` window of an image of (H, W) ``shape`` (clipped to the image).

    With ``foreground`` (an (H, W) array-like supporting slicing, non-zero = object) and
    ``min_foreground`` > 0, up to ``tries`` uniformly random positions are drawn and the first
    whose fraction of foreground pixels reaches ``min_foreground`` is taken; when none does
    (sparse objects), further windows are centred on random foreground pixels, and the window
    with the most foreground wins.

    Example:
        >>> rows, cols = random_crop_region((100, 80), 64, np.random.default_rng(0))
        >>> rows.stop - rows.start, cols.stop - cols.start
        (64, 64)
    """
    H, W = int(shape[0]), int(shape[1])
    h, w = min(size, H), min(size, W)

    def window(y0: int, x0: int) -> tuple[slice, slice]:
        y0, x0 = min(max(y0, 0), H - h), min(max(x0, 0), W - w)
        return (slice(y0, y0 + h), slice(x0, x0 + w))

    def fraction(region) -> float:
        return float(np.count_nonzero(np.asarray(foreground[region]))) / float(h * w)

    first = window(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)))
    if foreground is None or min_foreground <= 0:
        return first
    best, best_frac = first, fraction(first)
    candidates = [first] + [
        window(int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)))
        for _ in range(max(0, tries - 1))
    ]
    for region in candidates:
        frac = fraction(region) if region is not first else best_frac
        if frac >= min_foreground:
            return region
        if frac > best_frac:
            best, best_frac = region, frac
    ys, xs = np.nonzero(np.asarray(foreground))
    if ys.size:
        for _ in range(max(1, tries)):
            k = int(rng.integers(ys.size))
            region = window(int(ys[k]) - h // 2, int(xs[k]) - w // 2)
            frac = fraction(region)
            if frac >= min_foreground:
                return region
            if frac > best_frac:
                best, best_frac = region, frac
    return best


def pad_to(array: np.ndarray, height: int, width: int, value: float = 0) -> np.ndarray:
    """Pad the last two axes of ``array`` at the bottom/right to at least (height, width)."""
    dh, dw = max(0, height - array.shape[-2]), max(0, width - array.shape[-1])
    if not dh and not dw:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, dh), (0, dw)]
    return np.pad(array, pad, mode="constant", constant_values=value)


def crop_sample(sample: Mapping[str, object], region: tuple[slice, slice]) -> dict:
    """Crop every spatial array of a sample (``image`` (C, H, W), targets (H, W) or
    (1, H, W)) to ``region``; scalars are kept."""
    out = {}
    for key, value in sample.items():
        if hasattr(value, "shape") and len(value.shape) >= 2:
            out[key] = np.asarray(value[(Ellipsis, *region)])
        else:
            out[key] = value
    return out


def resize_sample(sample: Mapping[str, object], height: int, width: int) -> dict:
    """Resize spatial arrays: images bilinear (float), label-like maps nearest-neighbour."""
    import cv2

    out = dict(sample)
    for key, value in sample.items():
        if not (isinstance(value, np.ndarray) and value.ndim >= 2):
            continue
        if value.shape[-2:] == (height, width):
            continue
        interp = cv2.INTER_LINEAR if value.dtype.kind == "f" else cv2.INTER_NEAREST
        flat = value.reshape(-1, *value.shape[-2:])
        src = flat if value.dtype.kind == "f" else flat.astype(np.int32)
        res = np.stack(
            [
                cv2.resize(np.ascontiguousarray(ch), (width, height), interpolation=interp)
                for ch in src
            ]
        ).astype(value.dtype, copy=False)
        out[key] = res.reshape(*value.shape[:-2], height, width)
    return out
