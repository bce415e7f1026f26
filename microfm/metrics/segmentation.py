"""Semantic segmentation scores from a pixel confusion matrix: per-class and mean IoU and
Dice, and foreground (every class but background, merged) IoU and Dice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from microfm.metrics.classification import confusion_matrix


def segmentation_scores(
    cm: np.ndarray, class_names: Sequence[str], background: int | None = 0
) -> dict[str, float]:
    """``miou``, ``mdice``, ``iou_<class>``, ``dice_<class>``, ``fg_iou``, ``fg_dice``.

    Classes absent from both targets and predictions (union 0) have no IoU and are left out of
    the means, as in mmsegmentation's ``nanmean``. Foreground merges every class except
    ``background`` (None: no foreground scores).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - tp
    both = cm.sum(0) + cm.sum(1)
    out: dict[str, float] = {}
    ious, dices = [], []
    for k, name in enumerate(class_names):
        if union[k] > 0:
            out[f"iou_{name}"] = float(tp[k] / union[k])
            out[f"dice_{name}"] = float(2 * tp[k] / both[k])
            ious.append(out[f"iou_{name}"])
            dices.append(out[f"dice_{name}"])
    out["miou"] = float(np.mean(ious)) if ious else 0.0
    out["mdice"] = float(np.mean(dices)) if dices else 0.0
    if background is not None:
        fg = np.ones(len(cm), dtype=bool)
        fg[background] = False
        inter = cm[np.ix_(fg, fg)].sum()
        t, p = cm[fg].sum(), cm[:, fg].sum()
        out["fg_iou"] = float(inter / (t + p - inter)) if t + p > 0 else 0.0
        out["fg_dice"] = float(2 * inter / (t + p)) if t + p > 0 else 0.0
    return out


class SegmentationMetrics(Metric):
    """Accumulates the pixel confusion matrix of predicted vs true class maps (DDP-summed).

    Args:
        num_classes: number of classes K (class 0 is the background unless ``background`` says
            otherwise).
        class_names: names in the per-class keys (default ``"0"`` .. ``"K-1"``).
        ignore_index: target value of pixels that are not scored.
        background: index of the background class for the foreground scores (None: none).

    Example:
        >>> m = SegmentationMetrics(2)
        >>> target = torch.tensor([[[0, 1], [1, 1]]])
        >>> logits = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]]])
        >>> round(float(m(logits, target)["fg_iou"]), 3)
        0.667
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int = -1,
        background: int | None = 0,
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in (class_names or range(num_classes))]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.ignore_index = ignore_index
        self.background = background
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Add (B, K, H, W) logits (or (B, H, W) predicted classes) and (B, H, W) targets."""
        pred = logits.argmax(1) if logits.ndim == 4 else logits
        keep = target != self.ignore_index
        cm = confusion_matrix(pred[keep], target[keep], self.num_classes)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> dict[str, torch.Tensor]:
        scores = segmentation_scores(self.confmat.cpu().numpy(), self.class_names, self.background)
        return {k: torch.tensor(v) for k, v in scores.items()}
