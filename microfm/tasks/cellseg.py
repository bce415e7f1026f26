"""Cell instance segmentation by distance-map regression and watershed (SAMCell / DINOCell)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microfm.inference.postprocess import Watershed
from microfm.metrics.cellseg import InstanceMetrics
from microfm.tasks.base import Task
from microfm.utils.figures import plot_instance_overlays


class CellSegTask(Task):
    """Regress per-cell normalised distance maps; watershed them into instances.

    Args:
        head: a dense head called as ``head(layers, image)`` returning (B, 1, H, W) in [0, 1]
            (e.g. :class:`microfm.heads.UNetDecoder` with ``activation="sigmoid"``).
        layers: backbone blocks fed to the head (DINOCell: 2, 5, 8, 11).
        postprocess: distance map -> label image (default SAMCell thresholds 0.47 / 0.09).
        name, monitor, mode, targets: see :class:`Task`.

    Example:
        >>> from microfm.heads import UNetDecoder
        >>> task = CellSegTask(UNetDecoder(64, 4, in_chans=1), layers=[0, 1, 2, 3])
        >>> task.name, task.target
        ('cellseg', 'dist')
    """

    target = "dist"

    def __init__(
        self,
        head: nn.Module,
        layers: Sequence[int],
        postprocess: Watershed | None = None,
        name: str = "cellseg",
        monitor: str = "val/cellseg/op_csb",
        mode: str = "max",
        targets: Sequence[str] = ("dist",),
    ) -> None:
        super().__init__(name, monitor=monitor, mode=mode, layers=layers, targets=targets)
        self.head = head
        self.postprocess = postprocess or Watershed()

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        return self.head(features["layers"], image)

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(pred.float(), batch["dist"].float())

    def metrics(self) -> InstanceMetrics:
        return InstanceMetrics()

    def predict_instances(self, pred: torch.Tensor) -> list[np.ndarray]:
        """(B, 1, H, W) distance maps -> B label images (watershed)."""
        return [self.postprocess(d) for d in pred.detach().float().cpu().numpy()[:, 0]]

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """(1, H, W) distance map -> ``{"labels": instance labels, "dist": distance map}``."""
        dist = np.asarray(output, dtype=np.float32)[0]
        return {"labels": self.postprocess(dist), "dist": dist}

    def update_metrics(self, metric, pred, batch) -> list[np.ndarray]:
        labels = self.predict_instances(pred)
        metric.update(labels, batch["instances"])
        return labels

    def plot_examples(self, examples, path) -> None:
        plot_instance_overlays(examples, path)
