"""Instance segmentation scores of label images, computed in memory (no files, one pass).

``instance_scores(pred, gt)`` returns, for one pair of label images or aggregated over two
lists of them:

* ``seg``, ``det``, ``op_csb``: Cell Tracking Challenge measures, equal to ``py-ctcmetrics``
  with each image a frame of one sequence and the ground truth as both SEG and TRA markers
  (see :mod:`microfm.metrics.ctc`);
* ``ap50``, ``ap75``, ``ap90`` (TP / (TP + FP + FN) at each IoU threshold) and ``f1``,
  ``precision``, ``recall``, ``pq``, ``sq`` at IoU 0.5, equal to ``stardist.matching`` and
  ``matching_dataset`` (see :mod:`microfm.metrics.ap`).

Per-image counts (:func:`instance_counts`) add up, so a set of images, or the shards of a
validation set under DDP, is scored by summing counts first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from microfm.metrics.ap import DEFAULT_THRESHOLDS, ap_counts_from_matching, ap_scores
from microfm.metrics.ctc import CTC_KEYS, ctc_counts, ctc_counts_from_matching, ctc_scores
from microfm.metrics.matching import Matching, match_objects

__all__ = [
    "Matching",
    "count_keys",
    "ctc_counts",
    "ctc_scores",
    "instance_counts",
    "instance_scores",
    "match_objects",
    "scores_from_counts",
    "sum_counts",
]


def _thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    ts = tuple(float(t) for t in thresholds)
    return ts if 0.5 in ts else (0.5, *ts)


def count_keys(thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> tuple[str, ...]:
    """Names of the summable counts :func:`instance_counts` returns."""
    from microfm.metrics.ap import threshold_key

    keys = list(CTC_KEYS)
    for t in _thresholds(thresholds):
        keys += [f"tp_{threshold_key(t)}", f"iou_sum_{threshold_key(t)}"]
    return tuple(keys)


def instance_counts(
    pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """Summable statistics of one pair of label images (CTC and IoU-threshold matching)."""
    m = match_objects(pred, gt)
    return {**ctc_counts_from_matching(m), **ap_counts_from_matching(m, _thresholds(thresholds))}


def sum_counts(items: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Add per-image counts key by key."""
    keys = items[0].keys() if items else CTC_KEYS
    return {k: float(sum(c[k] for c in items)) for k in keys}


def scores_from_counts(
    counts: Mapping[str, float], thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """All scores from (summed) counts."""
    return {**ctc_scores(counts), **ap_scores(counts, _thresholds(thresholds))}


def instance_scores(
    pred: np.ndarray | Sequence[np.ndarray],
    gt: np.ndarray | Sequence[np.ndarray],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, float]:
    """Scores of one pair of label images, or of two lists aggregated over the whole set.

    Args:
        pred: predicted label image (H, W) (any integer dtype, 0 = background, ids need not be
            consecutive), or a list of them.
        gt: ground-truth label image(s) of the same shapes.
        thresholds: IoU thresholds of the ``ap<T>`` scores (multiples of 0.01).

    Returns:
        ``seg``, ``det``, ``op_csb``, ``ap50``, ``ap75``, ``ap90``, ``f1``, ``precision``,
        ``recall``, ``pq``, ``sq``.

    Example:
        >>> gt = np.zeros((8, 8), np.uint16); gt[1:4, 1:4] = 1; gt[5:8, 5:8] = 7
        >>> pred = np.zeros((8, 8), np.int32); pred[1:4, 1:4] = 3
        >>> s = instance_scores(pred, gt)
        >>> s["seg"], s["det"], s["ap50"], s["f1"]
        (0.5, 0.5, 0.5, 0.6666666666666666)
    """
    if isinstance(pred, np.ndarray) and pred.ndim == 2:
        pred, gt = [pred], [gt]
    if len(pred) != len(gt):
        raise ValueError(f"{len(pred)} predictions for {len(gt)} ground-truth images")
    if len(pred) == 0:
        raise ValueError("instance_scores needs at least one pair of label images")
    counts = sum_counts([instance_counts(p, g, thresholds) for p, g in zip(pred, gt)])
    return scores_from_counts(counts, thresholds)
