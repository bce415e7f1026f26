"""Matched-object scores at IoU thresholds, as ``stardist.matching`` computes them.

At a threshold t, predicted and reference objects are paired one-to-one so that the number of
pairs with IoU >= t is maximal (StarDist solves this with a linear assignment); those pairs are
the true positives (TP), the other predicted objects false positives (FP) and the other
reference objects false negatives (FN). Then, with the IoUs of the TP pairs summed as S:

* AP_t ("accuracy" in StarDist, the cellpose/DSB2018 "average precision") = TP / (TP + FP + FN);
* F1 = 2 TP / (2 TP + FP + FN), precision = TP / (TP + FP), recall = TP / (TP + FN);
* PQ (panoptic quality, Kirillov et al. 2019) = S / (TP + FP/2 + FN/2); SQ = S / TP.

As in StarDist, every ratio is 0 when TP is 0 (also when both images are empty), and a set of
images is scored from its summed counts (``matching_dataset(..., by_image=False)``).

For t >= 0.5 an IoU above t pairs each object with at most one other, so the assignment is read
off directly; the linear assignment is solved only when a tie (IoU exactly 0.5) or a threshold
below 0.5 leaves an object with several candidates. IoUs are compared in float32, like
StarDist, so decisions at a threshold agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from microfm.metrics.matching import Matching

DEFAULT_THRESHOLDS = (0.5, 0.75, 0.9)


def threshold_key(t: float) -> str:
    """``0.5 -> "50"``: the suffix of ``ap50``, ``tp_50``, ... (thresholds in steps of 0.01)."""
    pct = round(float(t) * 100)
    if not 0 < pct <= 100 or abs(pct - float(t) * 100) > 1e-6:
        raise ValueError(f"IoU thresholds must be multiples of 0.01 in (0, 1], got {t}")
    return str(pct)


def _assign(m: Matching, iou: np.ndarray, t: float) -> tuple[int, float]:
    """TP count and summed TP IoU at threshold ``t`` (StarDist's assignment)."""
    iou32 = iou.astype(np.float32)
    ok = iou32 >= np.float32(t)
    gi, pi = m.gt_index()[ok], m.pred_index()[ok]
    if len(gi) == len(np.unique(gi)) and len(pi) == len(np.unique(pi)):
        return int(ok.sum()), float(iou[ok].sum())
    # several candidates for one object: the linear assignment StarDist solves
    n_matched = min(m.n_gt, m.n_pred)
    scores = np.zeros((m.n_gt, m.n_pred), dtype=np.float32)
    scores[m.gt_index(), m.pred_index()] = iou32
    costs = -(scores >= np.float32(t)).astype(float) - scores / (2 * n_matched)
    rows, cols = linear_sum_assignment(costs)
    exact = np.zeros((m.n_gt, m.n_pred))
    exact[m.gt_index(), m.pred_index()] = iou
    hit = scores[rows, cols] >= np.float32(t)
    return int(hit.sum()), float(exact[rows, cols][hit].sum())


def ap_counts_from_matching(
    m: Matching, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """``tp_<T>`` and ``iou_sum_<T>`` for each threshold (sum them over images)."""
    iou = m.iou()
    out: dict[str, float] = {}
    for t in thresholds:
        key = threshold_key(t)
        tp, iou_sum = _assign(m, iou, float(t)) if len(iou) else (0, 0.0)
        out[f"tp_{key}"] = float(tp)
        out[f"iou_sum_{key}"] = iou_sum
    return out


def _ratio(num: float, den: float, tp: float) -> float:
    return float(num / den) if tp > 0 else 0.0


def ap_scores(
    counts: Mapping[str, float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """``ap<T>`` for each threshold and, at IoU 0.5, ``f1``, ``precision``, ``recall``, ``pq``,
    ``sq`` from summed counts (``n_gt``, ``n_pred``, ``tp_<T>``, ``iou_sum_<T>``)."""
    n_gt, n_pred = counts["n_gt"], counts["n_pred"]
    out: dict[str, float] = {}
    for t in thresholds:
        key = threshold_key(t)
        tp = counts[f"tp_{key}"]
        fp, fn = n_pred - tp, n_gt - tp
        out[f"ap{key}"] = _ratio(tp, tp + fp + fn, tp)
        if key == "50":
            s = counts[f"iou_sum_{key}"]
            out["f1"] = _ratio(2 * tp, 2 * tp + fp + fn, tp)
            out["precision"] = _ratio(tp, tp + fp, tp)
            out["recall"] = _ratio(tp, tp + fn, tp)
            out["pq"] = float(s / (tp + fp / 2 + fn / 2)) if tp + fp + fn > 0 else 0.0
            out["sq"] = float(s / tp) if tp > 0 else 0.0
    return out
