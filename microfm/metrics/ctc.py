"""Cell Tracking Challenge SEG and DET (Matula et al. 2015; Ulman et al. 2017), in memory.

Definitions as implemented by ``py-ctcmetrics`` (``ctc_metrics``):

* a reference object R is *matched* by a predicted object S when |R ∩ S| > 0.5 |R| (so each
  reference object has at most one match);
* SEG: the Jaccard index |R ∩ S| / |R ∪ S| of each reference object with its match (0 when
  unmatched), averaged over all reference objects;
* DET: 1 - min(AOGM-D, AOGM-D0) / AOGM-D0 with AOGM-D = 5·NS + 10·FN + 1·FP, where FN counts
  unmatched reference objects, FP predicted objects matching nothing and NS the extra
  reference objects covered by one predicted object (splits needed), and AOGM-D0 = 10·|R|;
* OP_CSB = (SEG + DET) / 2.

Over several images the counts are summed before the ratios are taken, as for all the frames of
one CTC sequence. Where py-ctcmetrics is undefined (no reference object in the whole set: it
divides by zero), DET is 1 when nothing was predicted and 0 otherwise, and SEG is 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from microfm.metrics.matching import Matching

W_NS, W_FN, W_FP = 5.0, 10.0, 1.0
CTC_KEYS = ("seg_iou_sum", "n_gt", "n_pred", "ns", "fn", "fp")


def ctc_counts_from_matching(m: Matching) -> dict[str, float]:
    """SEG and DET sufficient statistics of one image (see :func:`ctc_counts`)."""
    gt_area = m.gt_areas[m.gt_index()]
    matched = m.pair_inter > 0.5 * gt_area
    iou_sum = float(m.iou()[matched].sum())
    tp = int(matched.sum())  # reference objects with a match (at most one each)
    _, per_pred = np.unique(m.pair_pred[matched], return_counts=True)
    return {
        "seg_iou_sum": iou_sum,
        "n_gt": float(m.n_gt),
        "n_pred": float(m.n_pred),
        "ns": float((per_pred - 1).sum()),
        "fn": float(m.n_gt - tp),
        "fp": float(m.n_pred - len(per_pred)),
    }


def ctc_counts(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """SEG and DET sufficient statistics of one image: ``seg_iou_sum``, ``n_gt``, ``n_pred``,
    ``ns``, ``fn``, ``fp`` (sum them over images, then call :func:`ctc_scores`)."""
    from microfm.metrics.matching import match_objects

    return ctc_counts_from_matching(match_objects(pred, gt))


def ctc_scores(counts: Mapping[str, float]) -> dict[str, float]:
    """SEG, DET and OP_CSB from (summed) :func:`ctc_counts`."""
    n_gt = counts["n_gt"]
    seg = counts["seg_iou_sum"] / max(n_gt, 1.0)
    aogm = W_NS * counts["ns"] + W_FN * counts["fn"] + W_FP * counts["fp"]
    aogm0 = W_FN * n_gt
    if aogm0 > 0:
        det = 1.0 - min(aogm, aogm0) / aogm0
    else:
        det = 1.0 if counts["n_pred"] == 0 else 0.0
    return {"seg": float(seg), "det": float(det), "op_csb": 0.5 * float(seg + det)}
