"""torchmetrics wrapper over instance label images: CTC SEG/DET/OP_CSB, DDP-reducible."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from microfm.metrics.instance import ctc_counts, ctc_scores

_COUNT_KEYS = ("seg_iou_sum", "n_gt", "n_pred", "ns", "fn", "fp")


class InstanceMetrics(Metric):
    """Accumulates CTC counts of predicted vs ground-truth instance label images; ``compute``
    returns ``seg``, ``det`` and ``op_csb`` over everything seen (summed over DDP ranks).

    Example:
        >>> m = InstanceMetrics()
        >>> gt = torch.zeros(1, 8, 8, dtype=torch.int32); gt[0, 2:6, 2:6] = 1
        >>> m.update([gt[0].numpy()], gt)
        >>> float(m.compute()["op_csb"])
        1.0
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for key in _COUNT_KEYS:
            self.add_state(
                key, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum"
            )

    def update(  # type: ignore[override]
        self, preds: Sequence[np.ndarray], targets: torch.Tensor | Sequence[np.ndarray]
    ) -> None:
        """Add predicted label images and their (B, H, W) ground truth."""
        if isinstance(targets, torch.Tensor):
            targets = list(targets.detach().cpu().numpy())
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} targets")
        for pred, gt in zip(preds, targets):
            for key, value in ctc_counts(np.asarray(pred), np.asarray(gt)).items():
                setattr(self, key, getattr(self, key) + value)

    def compute(self) -> dict[str, torch.Tensor]:
        counts = {k: float(getattr(self, k)) for k in _COUNT_KEYS}
        return {k: torch.tensor(v) for k, v in ctc_scores(counts).items()}
