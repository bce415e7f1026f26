"""Cross-entropy with class weights, label smoothing and ignored targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropyLoss(nn.Module):
    """Cross-entropy over (B, K) logits and (B,) labels, or (B, K, H, W) and (B, H, W).

    Targets equal to ``ignore_index`` contribute nothing; a batch where every target is ignored
    gives a zero loss that still back-propagates (zero gradients) instead of NaN.

    Args:
        num_classes: K.
        class_weights: per-class weights (imbalanced classes), or None. Stored as a buffer, so
            they travel with the checkpoint; :meth:`set_class_weights` replaces them.
        label_smoothing: mass spread uniformly over the classes (0: none).
        ignore_index: target value to ignore.

    Example:
        >>> loss = CrossEntropyLoss(3, class_weights=[1.0, 2.0, 1.0], label_smoothing=0.1)
        >>> logits, labels = torch.randn(4, 3), torch.tensor([0, 1, -1, 2])  # -1: no label
        >>> bool(torch.isclose(loss(logits, labels), loss(logits[[0, 1, 3]], labels[[0, 1, 3]])))
        True
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -1,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.register_buffer("class_weights", torch.ones(self.num_classes))
        self.weighted = class_weights is not None
        if class_weights is not None:
            self.set_class_weights(class_weights)

    def set_class_weights(self, weights: Sequence[float] | torch.Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if w.numel() != self.num_classes or (w < 0).any() or not torch.isfinite(w).all():
            raise ValueError(
                f"class_weights needs {self.num_classes} finite non-negative values, "
                f"got {w.tolist()}"
            )
        self.class_weights.copy_(w.to(self.class_weights.device))
        self.weighted = True

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        if not (target != self.ignore_index).any():
            return logits.sum() * 0.0
        return F.cross_entropy(
            logits.float(),
            target,
            weight=self.class_weights if self.weighted else None,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
        )
