"""CTC SEG / DET / OP_CSB on hand-made cases, and the watershed post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microfm.inference import Watershed
from microfm.metrics import InstanceMetrics, ctc_counts, instance_scores


def squares(*boxes, shape=(20, 20)):
    img = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        img[y0:y1, x0:x1] = i
    return img


A, B = (0, 4, 0, 4), (10, 14, 10, 14)  # two 16-pixel cells


def test_perfect_prediction():
    gt = squares(A, B)
    pred = gt.copy()
    pred[pred == 1] = 9  # ids need not agree
    scores = instance_scores(pred, gt)
    for key in ("seg", "det", "op_csb", "ap50", "ap75", "ap90", "f1", "pq", "precision", "recall"):
        assert scores[key] == 1.0, key


def test_partial_overlap_jaccard():
    gt = squares(A)
    pred = squares((0, 4, 0, 3))  # covers 12 of 16 pixels (> 50 %), IoU 12/16
    s = instance_scores(pred, gt)
    assert s["seg"] == pytest.approx(12 / 16)
    assert s["det"] == 1.0


def test_half_coverage_is_not_a_match():
    gt = squares(A)
    pred = squares((0, 4, 0, 2))  # exactly 50 %: not > 50 %
    s = instance_scores(pred, gt)
    assert s["seg"] == 0.0
    # one FN (10) and one FP (1) against AOGM-D0 = 10
    assert s["det"] == 0.0


def test_missing_and_spurious_cells():
    gt = squares(A, B)
    pred = squares(A, (16, 20, 16, 20))  # B missed, one spurious object
    c = ctc_counts(pred, gt)
    assert (c["fn"], c["fp"], c["ns"]) == (1, 1, 0)
    s = instance_scores(pred, gt)
    assert s["seg"] == pytest.approx(0.5)
    assert s["det"] == pytest.approx(1 - (10 + 1) / 20)
    assert s["op_csb"] == pytest.approx(0.5 * (0.5 + 1 - 11 / 20))


def test_merged_cells_cost_a_split():
    gt = squares((0, 4, 0, 4), (0, 4, 4, 8))
    pred = squares((0, 4, 0, 8))  # one object covering both
    c = ctc_counts(pred, gt)
    assert (c["ns"], c["fn"], c["fp"]) == (1, 0, 0)
    s = instance_scores(pred, gt)
    assert s["det"] == pytest.approx(1 - 5 / 20)
    assert s["seg"] == pytest.approx(0.5)  # each IoU 16/32


def test_aggregation_sums_counts_over_images():
    gt1, gt2 = squares(A, B), squares(A)
    pred1, pred2 = gt1.copy(), np.zeros_like(gt2)
    s = instance_scores([pred1, pred2], [gt1, gt2])
    assert s["seg"] == pytest.approx(2 / 3)  # 3 reference cells, 2 perfect
    assert s["det"] == pytest.approx(1 - 10 / 30)


def test_empty_cases():
    empty = np.zeros((8, 8), np.int32)
    assert instance_scores(empty, empty)["det"] == 1.0
    assert instance_scores(squares(A, shape=(8, 8)), empty)["det"] == 0.0
    assert instance_scores(empty, squares(A, shape=(8, 8)))["op_csb"] == 0.0


def test_rejects_float_and_mismatched_labels():
    with pytest.raises(ValueError, match="integer"):
        instance_scores(np.zeros((4, 4)), np.zeros((4, 4), np.int32))
    with pytest.raises(ValueError, match="shape"):
        instance_scores(np.zeros((4, 4), np.int32), np.zeros((4, 5), np.int32))


def test_watershed_separates_touching_cells():
    from microfm.transforms import distance_map

    gt = squares((2, 12, 2, 12), (2, 12, 12, 22), shape=(16, 26))
    labels = Watershed()(distance_map(gt))
    assert labels.max() == 2
    assert instance_scores(labels, gt)["det"] == 1.0


def test_watershed_thresholds_validated():
    with pytest.raises(ValueError):
        Watershed(cells_max=0.1, cell_fill=0.5)


def test_torchmetric_accumulates_like_the_function():
    gts = [squares(A, B), squares((3, 9, 3, 9))]
    preds = [squares(A), squares((3, 9, 3, 8))]
    metric = InstanceMetrics()
    metric.update(preds[:1], torch.from_numpy(gts[0][None]))
    metric.update(preds[1:], torch.from_numpy(gts[1][None]))
    out = metric.compute()
    expected = instance_scores(preds, gts)
    assert set(out) == set(expected)
    for key in expected:
        assert float(out[key]) == pytest.approx(expected[key])
    assert float(out["det"]) < 1.0


def test_cellseg_task_postprocesses_and_scores():
    from microfm.heads import UNetDecoder
    from microfm.tasks import CellSegTask
    from microfm.transforms import distance_map

    gts = np.stack([squares((2, 12, 2, 12), (2, 12, 12, 20)), squares(A)])
    dist = torch.from_numpy(np.stack([distance_map(g) for g in gts]))[:, None]
    task = CellSegTask(UNetDecoder(16, 1, channels=[8]), layers=[0])
    metric = task.metrics()
    labels = task.update_metrics(metric, dist, {"instances": torch.from_numpy(gts)})
    assert [int(lab.max()) for lab in labels] == [2, 1]
    scores = metric.compute()
    assert float(scores["det"]) == 1.0
    assert float(scores["seg"]) > 0.97  # watershed ties on the shared border may swap a pixel


def test_ap_f1_pq_hand_computed():
    gt = squares(A, B, (0, 4, 10, 14))
    # A exact (IoU 1), B shifted by one column (IoU 12/20 = 0.6), third missed, one spurious
    pred = squares(A, (10, 14, 11, 15), (16, 20, 16, 20))
    s = instance_scores(pred, gt)
    tp, fp, fn = 2, 1, 1
    assert s["ap50"] == pytest.approx(tp / (tp + fp + fn))
    assert s["ap75"] == pytest.approx(1 / 5)  # only A survives IoU 0.75
    assert s["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert s["precision"] == pytest.approx(2 / 3) and s["recall"] == pytest.approx(2 / 3)
    assert s["pq"] == pytest.approx((1 + 0.6) / (tp + 0.5 * fp + 0.5 * fn))
    assert s["sq"] == pytest.approx(0.8)


def test_custom_iou_thresholds():
    gt, pred = squares(A), squares((0, 4, 0, 3))  # IoU 0.75
    s = instance_scores(pred, gt, thresholds=(0.5, 0.7, 0.8))
    assert (s["ap70"], s["ap80"]) == (1.0, 0.0)
    with pytest.raises(ValueError, match="multiples of 0.01"):
        instance_scores(pred, gt, thresholds=(0.555,))


def test_instance_scores_needs_pairs():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        instance_scores([squares(A)] * 2, [squares(A)])
    with pytest.raises(ValueError, match="at least one"):
        instance_scores([], [])


def test_metric_states_merge_like_ddp():
    """Two ranks' summed states equal one metric over everything (what DDP's sum does)."""
    gts = [squares(A, B), squares((3, 9, 3, 9)), squares(B)]
    preds = [squares(A), squares((3, 9, 3, 8)), squares((10, 14, 10, 12))]
    r0, r1 = InstanceMetrics(), InstanceMetrics()
    r0.update(preds[:2], torch.from_numpy(np.stack(gts[:2])))
    r1.update(preds[2:], torch.from_numpy(np.stack(gts[2:])))
    for key in r0.keys:
        setattr(r0, key, getattr(r0, key) + getattr(r1, key))
    expected = instance_scores(preds, gts)
    assert {k: pytest.approx(float(v)) for k, v in r0.compute().items()} == expected


def test_where_we_depart_from_py_ctcmetrics():
    """py-ctcmetrics assumes both images contain background and shifts predicted ids by
    max(gt) + 1 inside the 16-bit image; we need neither (documented in docs/tasks.md)."""
    full = np.ones((4, 4), np.uint16)
    full[:, 2:] = 2  # no background pixel: py-ctcmetrics ignores object 1
    c = ctc_counts(full.copy(), full)
    assert (c["n_gt"], c["fn"], c["seg_iou_sum"]) == (2, 0, 2.0)
    gt = np.zeros((4, 4), np.uint16)
    gt[:2, :2] = 40000
    pred = np.zeros((4, 4), np.uint16)
    pred[:2, :2] = 30000  # 40001 + 30000 overflows uint16 there: no match found
    assert instance_scores(pred, gt)["seg"] == 1.0
