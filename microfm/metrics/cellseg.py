"""torchmetrics wrapper over instance label images (CTC SEG/DET/OP_CSB, AP, F1, PQ),
DDP-reducible: the states are summable counts."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from microfm.metrics.ap import DEFAULT_THRESHOLDS
from microfm.metrics.instance import count_keys, instance_counts, scores_from_counts


def as_label_list(targets: torch.Tensor | Sequence[np.ndarray]) -> list[np.ndarray]:
    """(B, H, W) tensor or sequence of arrays -> list of numpy label images."""
    if isinstance(targets, torch.Tensor):
        return list(targets.detach().cpu().numpy())
    return [np.asarray(t) for t in targets]


class InstanceMetrics(Metric):
    """Accumulates the counts of predicted vs ground-truth instance label images; ``compute``
    returns every score of :func:`microfm.metrics.instance_scores` over everything seen
    (summed over DDP ranks), equal to calling it on the whole set at once.

    Args:
        thresholds: IoU thresholds of the ``ap<T>`` scores.

    Example:
        >>> m = InstanceMetrics()
        >>> gt = torch.zeros(1, 8, 8, dtype=torch.int32); gt[0, 2:6, 2:6] = 1
        >>> m.update([gt[0].numpy()], gt)
        >>> float(m.compute()["op_csb"]), float(m.compute()["ap90"])
        (1.0, 1.0)
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.keys = count_keys(self.thresholds)
        for key in self.keys:
            self.add_state(
                key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(  # type: ignore[override]
        self, preds: Sequence[np.ndarray], targets: torch.Tensor | Sequence[np.ndarray]
    ) -> None:
        """Add predicted label images and their (B, H, W) ground truth."""
        targets = as_label_list(targets)
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, gt in zip(preds, targets):
            for key, value in instance_counts(np.asarray(pred), gt, self.thresholds).items():
                setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = {k: float(getattr(self, k)) for k in self.keys}
        return {k: torch.tensor(v) for k, v in scores_from_counts(counts, self.thresholds).items()}
