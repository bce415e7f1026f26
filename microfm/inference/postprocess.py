"""Post-processing of dense predictions into instance label images."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed


class Watershed:
    """Distance map -> instances, the SAMCell rule.

    Seeds are the connected regions where the distance map exceeds ``cells_max``; the
    foreground is where it exceeds ``cell_fill``; a watershed on the negated map grows the seeds
    over the foreground. Seeds smaller than ``min_seed_area`` pixels are dropped and objects
    smaller than ``min_area`` removed.

    Args:
        cells_max: seed threshold (SAMCell default 0.47).
        cell_fill: foreground threshold (SAMCell default 0.09).
        min_area: remove objects with fewer pixels.

    Example:
        >>> ws = Watershed()
        >>> d = np.zeros((32, 32), np.float32); d[8:24, 8:24] = 0.8
        >>> int(ws(d).max())
        1
    """

    def __init__(self, cells_max: float = 0.47, cell_fill: float = 0.09, min_area: int = 0) -> None:
        if not 0.0 <= cell_fill <= cells_max <= 1.0:
            raise ValueError(
                f"need 0 <= cell_fill <= cells_max <= 1, got cell_fill={cell_fill}, "
                f"cells_max={cells_max}"
            )
        self.cells_max = float(cells_max)
        self.cell_fill = float(cell_fill)
        self.min_area = int(min_area)

    def __call__(self, dist: np.ndarray) -> np.ndarray:
        """(H, W) float map -> (H, W) int32 labels 1..N."""
        dist = np.asarray(dist, dtype=np.float32)
        markers, n = ndi.label(dist > self.cells_max)
        if n == 0:
            return np.zeros(dist.shape, dtype=np.int32)
        labels = watershed(-dist, markers, mask=dist > self.cell_fill).astype(np.int32)
        if self.min_area > 0:
            areas = np.bincount(labels.ravel())
            small = np.flatnonzero(areas < self.min_area)
            labels[np.isin(labels, small[small > 0])] = 0
        # consecutive ids
        ids = np.unique(labels)
        ids = ids[ids > 0]
        lut = np.zeros(labels.max() + 1, dtype=np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        return lut[labels]

    def __repr__(self) -> str:
        return f"Watershed(cells_max={self.cells_max}, cell_fill={self.cell_fill})"
