"""Losses against hand computations and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from microfm.errors import ConfigError
from microfm.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    SILogLoss,
    TverskyLoss,
    segmentation_loss,
)


def test_cross_entropy_matches_torch_with_weights_and_smoothing():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 1])
    w = [1.0, 2.0, 0.5, 3.0]
    ours = CrossEntropyLoss(4, w, label_smoothing=0.1)(logits, target)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w), label_smoothing=0.1)
    assert torch.isclose(ours, ref)
    # hand-computed weighted NLL without smoothing
    logp = logits.log_softmax(1)
    wt = torch.tensor(w)[target]
    hand = -(wt * logp[torch.arange(6), target]).sum() / wt.sum()
    assert torch.isclose(CrossEntropyLoss(4, w)(logits, target), hand)


def test_cross_entropy_ignores_targets_and_all_ignored_is_zero_not_nan():
    logits = torch.randn(3, 2, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (3, 4, 4))
    target[1] = -1
    loss = CrossEntropyLoss(2)
    assert torch.isclose(loss(logits, target), F.cross_entropy(logits, target, ignore_index=-1))
    empty = loss(logits, torch.full((3, 4, 4), -1))
    empty.backward()
    assert float(empty.detach()) == 0.0 and float(logits.grad.abs().sum()) == 0.0


def test_cross_entropy_rejects_bad_weights():
    with pytest.raises(ValueError, match="3 finite"):
        CrossEntropyLoss(3, [1.0, 2.0])
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(3, label_smoothing=1.0)
    loss = CrossEntropyLoss(2)
    loss.set_class_weights([0.5, 2.0])
    assert "class_weights" in loss.state_dict()  # travels with the checkpoint


def _onehot_logits(target: torch.Tensor, k: int, scale: float = 40.0) -> torch.Tensor:
    return F.one_hot(target, k).permute(0, 3, 1, 2).float() * scale


def test_dice_hand_computed():
    target = torch.tensor([[[0, 1], [1, 1]]])
    # predict class 1 everywhere with certainty: class 0 TP=0 FN=1 FP=0; class 1 TP=3 FP=1
    logits = _onehot_logits(torch.ones_like(target), 2)
    d0 = (0 + 1) / (0 + 0 + 1 + 1)
    d1 = (6 + 1) / (6 + 1 + 0 + 1)
    assert float(DiceLoss()(logits, target)) == pytest.approx(1 - (d0 + d1) / 2, abs=1e-6)
    assert float(DiceLoss(include_background=False)(logits, target)) == pytest.approx(1 - d1)
    assert float(DiceLoss()(_onehot_logits(target, 2), target)) < 1e-6


def test_dice_and_tversky_skip_ignored_pixels():
    target = torch.tensor([[[0, 1], [1, -1]]])
    logits = torch.randn(1, 2, 2, 2)
    changed = logits.clone()
    changed[0, :, 1, 1] = torch.tensor([-9.0, 9.0])  # only the ignored pixel differs
    for loss in (DiceLoss(), TverskyLoss()):
        assert torch.isclose(loss(logits, target), loss(changed, target))


def test_tversky_weights_false_negatives_and_reduces_to_dice():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert torch.isclose(
        TverskyLoss(0.5, 0.5, smooth=0)(logits, target), DiceLoss(smooth=0)(logits, target)
    )
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # 8 foreground pixels
    under = torch.zeros(1, 4, 4, dtype=torch.long)
    under[0, 0] = 1  # misses 4 (FN)
    over = torch.zeros(1, 4, 4, dtype=torch.long)
    over[0, :3] = 1  # 4 too many (FP)
    tv = TverskyLoss(alpha=0.3, beta=0.7, include_background=False, smooth=0)
    assert tv(_onehot_logits(under, 2), target) > tv(_onehot_logits(over, 2), target)
    with pytest.raises(ValueError):
        TverskyLoss(0.0, 0.0)


def test_silog_hand_computed_and_scale_invariance():
    target = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])  # last pixel invalid
    pred = torch.tensor([[[[2.0, 2.0], [2.0, 7.0]]]])
    d = torch.log(torch.tensor([2.0, 1.0, 0.5]))
    lam = 0.85
    expected = math.sqrt(float((d**2).mean() - lam * d.mean() ** 2) + 1e-8)
    assert float(SILogLoss(lam)(pred.log(), target)) == pytest.approx(expected, rel=1e-5)
    # lam = 1: a per-image scale is free; lam = 0: the RMS log error
    t = torch.rand(3, 1, 8, 8) + 0.5
    scaled = t * torch.tensor([0.5, 2.0, 7.0]).view(3, 1, 1, 1)
    assert float(SILogLoss(1.0)(scaled.log(), t)) < 1e-3
    assert float(SILogLoss(0.0, eps=0)(scaled.log(), t)) == pytest.approx(
        float(torch.log(torch.tensor([0.5, 2.0, 7.0])).abs().mean()), rel=1e-5
    )


def test_silog_without_valid_pixels_is_zero():
    pred = torch.zeros(2, 1, 4, 4, requires_grad=True)
    loss = SILogLoss()(pred, torch.zeros(2, 1, 4, 4))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(pred.grad.abs().sum()) == 0.0


def test_combined_and_named_segmentation_losses():
    torch.manual_seed(2)
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    ce, dice = CrossEntropyLoss(3)(logits, target), DiceLoss()(logits, target)
    combined = CombinedLoss({"ce": CrossEntropyLoss(3), "dice": DiceLoss()}, {"dice": 0.25})
    assert torch.isclose(combined(logits, target), ce + 0.25 * dice)
    assert set(combined.last) == {"ce", "dice"}
    assert torch.isclose(segmentation_loss("ce", 3)(logits, target), ce)
    assert torch.isclose(segmentation_loss("ce_dice", 3)(logits, target), ce + dice)
    tv = TverskyLoss(0.2, 0.8)(logits, target)
    named = segmentation_loss(
        "ce_tversky", 3, region_weight=2.0, tversky_alpha=0.2, tversky_beta=0.8
    )
    assert torch.isclose(named(logits, target), ce + 2.0 * tv)
    with pytest.raises(ConfigError, match="task.loss.name"):
        segmentation_loss("dice_only", 3)
    with pytest.raises(ValueError, match="unknown loss terms"):
        CombinedLoss({"ce": CrossEntropyLoss(3)}, {"dice": 1.0})
