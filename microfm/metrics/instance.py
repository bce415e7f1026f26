"""Instance segmentation scores computed in memory: Cell Tracking Challenge SEG and DET.

Definitions (Matula et al. 2015; Ulman et al. 2017), as implemented by ``py-ctcmetrics``:

* a reference object R is *matched* by a predicted object S when |R ∩ S| > 0.5 |R| (so each
  reference object has at most one match);
* SEG: the Jaccard index |R ∩ S| / |R ∪ S| of each reference object with its match (0 when
  unmatched), averaged over all reference objects;
* DET: 1 - min(AOGM-D, AOGM-D0) / AOGM-D0 with AOGM-D = 5·NS + 10·FN + 1·FP, where FN counts
  unmatched reference objects, FP predicted objects matching nothing and NS the extra
  reference objects covered by one predicted object (splits needed), and AOGM-D0 = 10·|R|;
* OP_CSB = (SEG + DET) / 2.

Over several images the counts are summed before the ratios are taken, as for all the frames of
one CTC sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

W_NS, W_FN, W_FP = 5.0, 10.0, 1.0


@dataclass
class Matching:
    """Overlaps between reference (``gt``) and predicted objects of one image.

    Attributes:
        gt_ids, pred_ids: object ids present (background 0 excluded).
        gt_areas, pred_areas: pixel counts of those objects.
        pair_gt, pair_pred, pair_inter: every overlapping (gt, pred) pair and its intersection.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray

    def iou(self) -> np.ndarray:
        """Intersection over union of each overlapping pair."""
        gt_area = self.gt_areas[np.searchsorted(self.gt_ids, self.pair_gt)]
        pred_area = self.pred_areas[np.searchsorted(self.pred_ids, self.pair_pred)]
        return self.pair_inter / (gt_area + pred_area - self.pair_inter)


def _check_labels(img: np.ndarray, name: str) -> np.ndarray:
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label image, got dtype {img.dtype}")
    if img.size and img.min() < 0:
        raise ValueError(f"{name} has negative labels")
    return img.astype(np.int64, copy=False)


def match_objects(pred: np.ndarray, gt: np.ndarray) -> Matching:
    """Compute object areas and pairwise intersections of two label images of equal shape."""
    pred, gt = _check_labels(pred, "pred"), _check_labels(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    gt_ids, gt_areas = np.unique(gt[gt > 0], return_counts=True)
    pred_ids, pred_areas = np.unique(pred[pred > 0], return_counts=True)
    both = (gt > 0) & (pred > 0)
    if both.any():
        base = int(pred.max()) + 1
        codes, inter = np.unique(gt[both] * base + pred[both], return_counts=True)
        pair_gt, pair_pred = codes // base, codes % base
    else:
        pair_gt = pair_pred = inter = np.zeros(0, dtype=np.int64)
    return Matching(
        gt_ids,
        pred_ids,
        gt_areas.astype(np.float64),
        pred_areas.astype(np.float64),
        pair_gt,
        pair_pred,
        inter.astype(np.float64),
    )


def ctc_counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """SEG and DET sufficient statistics of one image: ``seg_iou_sum``, ``n_gt``, ``n_pred``,
    ``ns``, ``fn``, ``fp`` (sum them over images, then call :func:`ctc_scores`)."""
    m = match_objects(pred, gt)
    gt_area = m.gt_areas[np.searchsorted(m.gt_ids, m.pair_gt)]
    matched = m.pair_inter > 0.5 * gt_area
    iou_sum = float(m.iou()[matched].sum())
    match_pred = m.pair_pred[matched]
    n_gt, n_pred = len(m.gt_ids), len(m.pred_ids)
    tp = int(matched.sum())  # reference objects with a match (at most one each)
    _, per_pred = np.unique(match_pred, return_counts=True)
    ns = int((per_pred - 1).sum())
    fp = n_pred - len(per_pred)
    return {
        "seg_iou_sum": iou_sum,
        "n_gt": float(n_gt),
        "n_pred": float(n_pred),
        "ns": float(ns),
        "fn": float(n_gt - tp),
        "fp": float(fp),
    }


def ctc_scores(counts: Mapping[str, float]) -> dict[str, float]:
    """SEG, DET and OP_CSB from (summed) :func:`ctc_counts`.

    With no reference objects SEG is 0 and DET is 1 when nothing was predicted, 0 otherwise.
    """
    n_gt = counts["n_gt"]
    seg = counts["seg_iou_sum"] / max(n_gt, 1.0)
    aogm = W_NS * counts["ns"] + W_FN * counts["fn"] + W_FP * counts["fp"]
    aogm0 = W_FN * n_gt
    if aogm0 > 0:
        det = 1.0 - min(aogm, aogm0) / aogm0
    else:
        det = 1.0 if counts["n_pred"] == 0 else 0.0
    return {"seg": float(seg), "det": float(det), "op_csb": 0.5 * float(seg + det)}


def sum_counts(items: Sequence[Mapping[str, float]]) -> dict[str, float]:
    keys = ("seg_iou_sum", "n_gt", "n_pred", "ns", "fn", "fp")
    return {k: float(sum(c[k] for c in items)) for k in keys}


def instance_scores(
    pred: np.ndarray | Sequence[np.ndarray], gt: np.ndarray | Sequence[np.ndarray]
) -> dict[str, float]:
    """Scores of one pair of label images, or of two lists aggregated over the whole set.

    Returns:
        ``seg``, ``det`` and ``op_csb``.
    """
    if isinstance(pred, np.ndarray) and pred.ndim == 2:
        pred, gt = [pred], [gt]
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predictions for {len(gt)} ground-truth images")
    return ctc_scores(sum_counts([ctc_counts(p, g) for p, g in zip(pred, gt)]))
