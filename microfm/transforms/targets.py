"""Training targets derived from instance label maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def distance_map(instances: np.ndarray) -> np.ndarray:
    """Per-cell normalised distance map, the SAMCell/DINOCell regression target.

    Each cell's Euclidean distance transform (distance of each of its pixels to the nearest pixel
    outside the cell) is divided by its own maximum, so every cell peaks at 1 at its centre and
    touching cells are separated by a valley. The transform runs on each object's bounding box
    padded by one pixel, not on the whole image once per label.

    Args:
        instances: (H, W) integer label image, 0 = background.

    Returns:
        (H, W) float32 map in [0, 1].
    """
    if instances.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {instances.shape}")
    out = np.zeros(instances.shape, dtype=np.float32)
    labels = np.ascontiguousarray(instances)
    for label_id, region in enumerate(ndi.find_objects(labels), start=1):
        if region is None:
            continue
        padded = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(region, labels.shape)
        )
        mask = labels[padded] == label_id
        # Pad so that an object touching the image border still has background around it,
        # like the image continuing as background beyond its edge.
        edt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        peak = edt.max()
        if peak > 0:
            out[padded][mask] = (edt[mask] / peak).astype(np.float32)
    return out
