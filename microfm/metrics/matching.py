"""Object overlaps of two label images, computed in memory in one pass over the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Matching:
    """Overlaps between reference (``gt``) and predicted objects of one image.

    Attributes:
        gt_ids, pred_ids: object ids present, sorted (background 0 excluded).
        gt_areas, pred_areas: pixel counts of those objects.
        pair_gt, pair_pred, pair_inter: every overlapping (gt, pred) pair and its intersection.

    Example:
        >>> gt = np.array([[1, 1, 0], [0, 2, 2]]); pred = np.array([[5, 5, 5], [0, 0, 0]])
        >>> m = match_objects(pred, gt)
        >>> m.pair_gt.tolist(), m.pair_pred.tolist(), m.iou().tolist()
        ([1], [5], [0.6666666666666666])
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    @property
    def n_gt(self) -> int:
        return len(self.gt_ids)

    @property
    def n_pred(self) -> int:
        return len(self.pred_ids)

    def gt_index(self) -> np.ndarray:
        """Row of each pair's reference object in ``gt_ids``."""
        return np.searchsorted(self.gt_ids, self.pair_gt)

    def pred_index(self) -> np.ndarray:
        """Row of each pair's predicted object in ``pred_ids``."""
        return np.searchsorted(self.pred_ids, self.pair_pred)

    def iou(self) -> np.ndarray:
        """Intersection over union of each overlapping pair (float64)."""
        gt_area = self.gt_areas[self.gt_index()]
        pred_area = self.pred_areas[self.pred_index()]
        return self.pair_inter / (gt_area + pred_area - self.pair_inter)


def check_labels(img: np.ndarray, name: str) -> np.ndarray:
    """An integer, non-negative label image as int64 (raises ``ValueError`` otherwise)."""
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image, got dtype {img.dtype}")
    if img.size and img.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return img.astype(np.int64, copy=False)


def _ids_and_areas(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    top = int(img.max()) if img.size else 0
    if top <= 4 * img.size:  # dense ids: one bincount instead of a sort
        counts = np.bincount(img.ravel(), minlength=top + 1)
        ids = np.flatnonzero(counts)
        ids = ids[ids > 0]
        return ids, counts[ids]
    ids, counts = np.unique(img[img > 0], return_counts=True)
    return ids, counts


def match_objects(pred: np.ndarray, gt: np.ndarray) -> Matching:
    """Object areas and pairwise intersections of two label images of equal shape.

    Ids need not be consecutive; any integer dtype works (values must be >= 0).
    """
    pred, gt = check_labels(pred, "pred"), check_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    gt_ids, gt_areas = _ids_and_areas(gt)
    pred_ids, pred_areas = _ids_and_areas(pred)
    both = (gt > 0) & (pred > 0)
    if both.any():
        g, p = gt[both], pred[both]
        # compact codes over the present ids keep the code space small for any id values
        gi, pi = np.searchsorted(gt_ids, g), np.searchsorted(pred_ids, p)
        base = len(pred_ids)
        codes = gi * base + pi
        if len(gt_ids) * base <= 4 * codes.size:
            inter = np.bincount(codes, minlength=len(gt_ids) * base)
            codes = np.flatnonzero(inter)
            inter = inter[codes]
        else:
            codes, inter = np.unique(codes, return_counts=True)
        pair_gt, pair_pred = gt_ids[codes // base], pred_ids[codes % base]
    else:
        pair_gt = pair_pred = inter = np.zeros(0, dtype=np.int64)
    return Matching(
        gt_ids.astype(np.int64),
        pred_ids.astype(np.int64),
        gt_areas.astype(np.float64),
        pred_areas.astype(np.float64),
        pair_gt.astype(np.int64),
        pair_pred.astype(np.int64),
        inter.astype(np.float64),
    )
