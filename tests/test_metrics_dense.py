"""Classification, semantic segmentation and depth metrics against scikit-learn and
hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    jaccard_score,
    recall_score,
)

from microfm.metrics.classification import ClassificationMetrics
from microfm.metrics.depth import DepthMetrics, depth_errors
from microfm.metrics.segmentation import SegmentationMetrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 5
    # imbalanced, one class absent from the targets, one never predicted
    y = rng.choice([0, 0, 0, 0, 1, 1, 2, 4], size=60)
    logits = rng.normal(size=(60, k))
    logits[np.arange(60), y] += rng.uniform(0, 2.5, 60)
    logits[:, 3] -= 10
    pred = logits.argmax(1)
    m = ClassificationMetrics(k, ["a", "b", "c", "d", "e"])
    for sl in (slice(0, 25), slice(25, 60)):
        m.update(torch.from_numpy(logits[sl]), torch.from_numpy(y[sl]))
    out = {key: float(v) for key, v in m.compute().items()}
    assert out["acc"] == pytest.approx(accuracy_score(y, pred))
    assert out["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert out["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    recalls = recall_score(y, pred, labels=[0, 1, 2, 4], average=None)
    for name, r in zip("abce", recalls):
        assert out[f"recall_{name}"] == pytest.approx(r)
    assert "recall_d" not in out  # no support
    assert int(m.confmat.sum()) == 60


def test_classification_rejects_out_of_range_targets():
    m = ClassificationMetrics(3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.update(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_segmentation_matches_sklearn_and_ignores_pixels():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 3, (2, 16, 16))
    pred = np.where(rng.random((2, 16, 16)) < 0.7, target, rng.integers(0, 3, (2, 16, 16)))
    target[0, :2] = -1  # unlabelled rows
    logits = torch.nn.functional.one_hot(torch.from_numpy(pred), 3).permute(0, 3, 1, 2).float()
    m = SegmentationMetrics(3, ["bg", "a", "b"])
    out = {k: float(v) for k, v in m(logits, torch.from_numpy(target)).items()}
    keep = target >= 0
    t, p = target[keep], pred[keep]
    ious = jaccard_score(t, p, average=None)
    for name, iou in zip(["bg", "a", "b"], ious):
        assert out[f"iou_{name}"] == pytest.approx(iou)
        assert out[f"dice_{name}"] == pytest.approx(2 * iou / (1 + iou))
    assert out["miou"] == pytest.approx(ious.mean())
    assert out["fg_iou"] == pytest.approx(jaccard_score(t > 0, p > 0))
    assert out["fg_dice"] == pytest.approx(f1_score(t > 0, p > 0))


def test_segmentation_absent_class_left_out_of_means():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    m = SegmentationMetrics(3)
    out = m(target.clone(), target)  # class 2 never appears
    assert "iou_2" not in out and float(out["miou"]) == 1.0


def test_depth_errors_hand_computed():
    t = torch.tensor([1.0, 2.0, 4.0, 0.0])  # the last pixel has no target
    p = torch.tensor([1.0, 3.0, 2.1, 5.0])  # ratios 1, 1.5, 1.905
    e = depth_errors(p, t)
    assert e["rmse"] == pytest.approx(np.sqrt((0 + 1 + 1.9**2) / 3))
    assert e["absrel"] == pytest.approx((0 + 0.5 + 1.9 / 4) / 3)
    assert e["delta1"] == pytest.approx(1 / 3)  # < 1.25
    assert e["delta2"] == pytest.approx(2 / 3)  # < 1.5625
    assert e["delta3"] == pytest.approx(1.0)  # < 1.953
    logs = np.log([1.5, 4 / 2.1])
    assert e["rmse_log"] == pytest.approx(np.sqrt((logs**2).sum() / 3))


def test_depth_metric_averages_images_and_median_scaling():
    t = torch.rand(3, 1, 8, 8) + 1
    p = t * torch.tensor([1.0, 2.0, 0.5]).view(3, 1, 1, 1)
    m = DepthMetrics()
    m.update(p[:2], t[:2])
    m.update(p[2:], t[2:])
    per_image = [depth_errors(pi, ti)["absrel"] for pi, ti in zip(p, t)]
    assert float(m.compute()["absrel"]) == pytest.approx(np.mean(per_image), rel=1e-6)
    scaled = DepthMetrics(median_scaling=True)
    scaled.update(p, t)
    assert float(scaled.compute()["absrel"]) < 1e-6
    empty = DepthMetrics()
    empty.update(p, torch.zeros_like(t))  # no valid pixel: skipped
    assert float(empty.n_images) == 0
