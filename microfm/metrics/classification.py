"""Classification scores from a confusion matrix: accuracy, balanced accuracy, macro-F1 and
per-class recall, with the conventions of scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows true class, columns predicted class (int64)."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if target.numel() and (target.min() < 0 or target.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, {num_classes}), got {target.unique().tolist()}")
    idx = target * num_classes + pred
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def classification_scores(cm: np.ndarray) -> dict[str, float]:
    """``acc``, ``balanced_acc`` and ``macro_f1`` of a confusion matrix.

    * balanced accuracy: mean recall over the classes present in the targets
      (``sklearn.metrics.balanced_accuracy_score``);
    * macro-F1: mean F1 over the classes present in the targets or the predictions, F1 = 0 for
      a class with no true positive (``f1_score(average="macro", zero_division=0)``).
    """
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    support, predicted = cm.sum(1), cm.sum(0)
    present = support > 0
    seen = present | (predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "acc": float(tp.sum() / total) if total else 0.0,
        "balanced_acc": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
    }


class ClassificationMetrics(Metric):
    """Accumulates a confusion matrix of predicted vs true class labels (DDP-summed).

    ``compute`` returns ``acc``, ``balanced_acc``, ``macro_f1`` and ``recall_<class>`` for each
    class with support; the matrix itself is ``self.confmat``.

    Args:
        num_classes: number of classes K.
        class_names: names used in the per-class keys (default ``"0"`` .. ``"K-1"``).

    Example:
        >>> m = ClassificationMetrics(2)
        >>> m.update(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]]), torch.tensor([0, 1, 1]))
        >>> {k: round(float(v), 3) for k, v in m.compute().items()}["balanced_acc"]
        0.75
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, **kw) -> None:
        super().__init__(**kw)
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in (class_names or range(num_classes))]
        self.add_state(
            "confmat",
            default=torch.zeros(num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Add (B, K) logits (or (B,) predicted labels) and (B,) true labels."""
        pred = logits.argmax(1) if logits.ndim == 2 else logits
        self.confmat += confusion_matrix(pred.to(target.device), target, self.num_classes).to(
            self.confmat.device
        )

    def compute(self) -> dict[str, torch.Tensor]:
        cm = self.confmat.cpu().numpy()
        out = {k: torch.tensor(v) for k, v in classification_scores(cm).items()}
        support = cm.sum(1)
        for k, name in enumerate(self.class_names):
            if support[k] > 0:
                out[f"recall_{name}"] = torch.tensor(cm[k, k] / support[k], dtype=torch.float64)
        return out
