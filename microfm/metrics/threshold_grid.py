"""Post-processing thresholds searched on a grid: instance scores of every (cells_max,
cell_fill) pair of the watershed, accumulated as summable counts (DDP-reducible)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from microfm.metrics.ap import DEFAULT_THRESHOLDS
from microfm.metrics.cellseg import as_label_list
from microfm.metrics.instance import count_keys, instance_counts, scores_from_counts

Segment = Callable[[np.ndarray, float, float], np.ndarray]


def watershed_segment(min_area: int = 0) -> Segment:
    """``(dist, cells_max, cell_fill) -> labels`` with :class:`microfm.inference.Watershed`."""
    from microfm.inference.postprocess import Watershed

    def segment(dist: np.ndarray, cells_max: float, cell_fill: float) -> np.ndarray:
        return Watershed(cells_max=cells_max, cell_fill=cell_fill, min_area=min_area)(dist)

    return segment


def _finish(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Remove objects under ``min_area`` pixels and relabel 1..N in id order (as
    ``Watershed`` does), with one bincount."""
    counts = np.bincount(labels.ravel())
    keep = counts > 0
    keep[0] = False
    if min_area > 0:
        keep &= counts >= min_area
    lut = np.zeros(len(counts), dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def watershed_fill_sweep(
    dist: np.ndarray, cells_max: float, cell_fill: Sequence[float], min_area: int = 0
) -> list[np.ndarray]:
    """``Watershed(cells_max, cf, min_area)(dist)`` for every ``cf`` in ``cell_fill`` (each
    <= ``cells_max``) from a single watershed, label for label.

    The watershed floods from the seeds in order of decreasing ``dist``, so with the lowest
    foreground threshold every pixel above a higher threshold ``cf`` that is connected to a seed
    through pixels above ``cf`` is labelled exactly as in the flood restricted to ``dist > cf``,
    before any lower pixel is reached. The labels for ``cf`` are those of the lowest flood on
    the seeded connected components of ``dist > cf`` (tested against the direct watershed).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    dist = np.asarray(dist, dtype=np.float32)
    markers, n = ndi.label(dist > cells_max)
    if n == 0:
        return [np.zeros(dist.shape, dtype=np.int32) for _ in cell_fill]
    low = min(float(cf) for cf in cell_fill)
    base = watershed(-dist, markers, mask=dist > low).astype(np.int32)
    out = []
    for cf in cell_fill:
        if float(cf) == low:
            labels = base.copy()
        else:
            comp, n_comp = ndi.label(dist > cf)
            seeded = np.zeros(n_comp + 1, dtype=bool)
            seeded[comp[markers > 0]] = True
            seeded[0] = False
            labels = np.where(seeded[comp], base, 0).astype(np.int32)
        out.append(_finish(labels, min_area))
    return out


def grid_pairs(cells_max: Sequence[float], cell_fill: Sequence[float]) -> list[tuple[int, int]]:
    """Indices (i, j) of the valid pairs (cell_fill <= cells_max) of the grid."""
    return [
        (i, j)
        for i, cm in enumerate(cells_max)
        for j, cf in enumerate(cell_fill)
        if float(cf) <= float(cm)
    ]


def grid_counts(
    dists: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    cells_max: Sequence[float],
    cell_fill: Sequence[float],
    segment: Segment | None = None,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    min_area: int = 0,
) -> np.ndarray:
    """Summed instance counts (len(cells_max), len(cell_fill), K) of every grid pair over the
    images (invalid pairs, cell_fill > cells_max, stay 0); K follows
    :func:`microfm.metrics.instance.count_keys`.

    ``segment`` is ``(dist, cells_max, cell_fill) -> labels``; by default the SAMCell watershed
    (with ``min_area``), run once per ``cells_max`` (:func:`watershed_fill_sweep`).
    """
    keys = count_keys(thresholds)
    out = np.zeros((len(cells_max), len(cell_fill), len(keys)))
    for dist, gt in zip(dists, gts):
        dist, gt = np.asarray(dist), np.asarray(gt)
        for i, cm in enumerate(cells_max):
            cols = [j for j, cf in enumerate(cell_fill) if float(cf) <= float(cm)]
            if not cols:
                continue
            fills = [float(cell_fill[j]) for j in cols]
            if segment is None:
                labels = watershed_fill_sweep(dist, float(cm), fills, min_area)
            else:
                labels = [segment(dist, float(cm), cf) for cf in fills]
            for j, lab in zip(cols, labels):
                c = instance_counts(lab, gt, thresholds)
                out[i, j] += [c[k] for k in keys]
    return out


def grid_scores(
    counts: np.ndarray,
    cells_max: Sequence[float],
    cell_fill: Sequence[float],
    score: str = "op_csb",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> tuple[np.ndarray, tuple[int, int], dict[str, float]]:
    """The ``score`` of every pair (NaN for invalid pairs), the best pair's indices and all
    scores of the best pair (ties go to the first pair in row-major order)."""
    keys = count_keys(thresholds)
    grid = np.full((len(cells_max), len(cell_fill)), np.nan)
    all_scores: dict[tuple[int, int], dict[str, float]] = {}
    for i, j in grid_pairs(cells_max, cell_fill):
        s = scores_from_counts(dict(zip(keys, counts[i, j])), thresholds)
        all_scores[(i, j)] = s
        grid[i, j] = s[score]
    if not all_scores:
        raise ValueError("the threshold grid has no pair with cell_fill <= cells_max")
    best = max(all_scores, key=lambda ij: (grid[ij], -ij[0], -ij[1]))
    return grid, best, all_scores[best]


class ThresholdGridMetrics(Metric):
    """Instance scores of every (cells_max, cell_fill) watershed pair of a grid over distance
    maps; ``compute`` returns all scores of the best pair by ``score``, the pair itself
    (``cells_max``, ``cell_fill``) and the ``grid`` of ``score`` values (a 2-D tensor).

    Args:
        cells_max: seed thresholds of the grid (rows).
        cell_fill: foreground thresholds of the grid (columns).
        score: the score that selects the pair (e.g. ``op_csb``).
        min_area: objects smaller than this are removed (default watershed).
        segment: ``(dist, cells_max, cell_fill) -> labels``; default the SAMCell watershed.
        thresholds: IoU thresholds of the ``ap<T>`` scores.

    Example:
        >>> m = ThresholdGridMetrics([0.3, 0.5], [0.1, 0.2])
        >>> d = np.zeros((16, 16), np.float32); d[4:12, 4:12] = 0.6
        >>> gt = torch.zeros(1, 16, 16, dtype=torch.int32); gt[0, 4:12, 4:12] = 1
        >>> m.update(d[None], gt)
        >>> float(m.compute()["op_csb"])
        1.0
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        cells_max: Sequence[float],
        cell_fill: Sequence[float],
        score: str = "op_csb",
        min_area: int = 0,
        segment: Segment | None = None,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.cells_max = [float(v) for v in cells_max]
        self.cell_fill = [float(v) for v in cell_fill]
        if not grid_pairs(self.cells_max, self.cell_fill):
            raise ValueError("the threshold grid has no pair with cell_fill <= cells_max")
        self.score = score
        self.min_area = int(min_area)
        self.segment = segment
        self.thresholds = tuple(float(t) for t in thresholds)
        shape = (len(self.cells_max), len(self.cell_fill), len(count_keys(self.thresholds)))
        self.add_state(
            "counts", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(  # type: ignore[override]
        self, dists: np.ndarray | Sequence[np.ndarray], targets: torch.Tensor | Sequence
    ) -> None:
        """Add (B, H, W) distance maps and their (B, H, W) ground-truth label images."""
        gts = as_label_list(targets)
        counts = grid_counts(
            list(dists),
            gts,
            self.cells_max,
            self.cell_fill,
            self.segment,
            self.thresholds,
            self.min_area,
        )
        self.counts += torch.as_tensor(counts, dtype=torch.float64, device=self.counts.device)

    def compute(self) -> dict[str, torch.Tensor]:
        grid, (i, j), best = grid_scores(
            self.counts.cpu().numpy(), self.cells_max, self.cell_fill, self.score, self.thresholds
        )
        out = {k: torch.tensor(v) for k, v in best.items()}
        out["cells_max"] = torch.tensor(self.cells_max[i], dtype=torch.float64)
        out["cell_fill"] = torch.tensor(self.cell_fill[j], dtype=torch.float64)
        out["grid"] = torch.as_tensor(grid, dtype=torch.float32)
        return out
