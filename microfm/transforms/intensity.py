"""Per-channel intensity normalisation of raw (8/16/32-bit or float) microscopy images."""

from __future__ import annotations

import numpy as np


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6
) -> np.ndarray:
    """Map each channel's ``low``/``high`` percentiles to 0/1 (values outside are not clipped).

    The computation happens in float32 on the original bit depth: there is no 8-bit step.

    Args:
        image: (C, H, W) array of any numeric dtype.
        low: lower percentile (0-100).
        high: upper percentile (0-100), greater than ``low``.

    Returns:
        float32 array of the same shape.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    x = image.astype(np.float32, copy=False)
    lo, hi = np.percentile(x.reshape(x.shape[0], -1), [low, high], axis=1)
    scale = np.maximum(hi - lo, eps).astype(np.float32)
    out = (x - lo[:, None, None].astype(np.float32)) / scale[:, None, None]
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)
