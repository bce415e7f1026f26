"""Depth / height-map regression with a scale-invariant log loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from microfm.losses.silog import SILogLoss
from microfm.metrics.depth import DepthMetrics
from microfm.tasks.base import Task

MAX_LOG = 20.0


class DepthTask(Task):
    """Predict a positive depth (height) per pixel. The head outputs log-depth, so the model's
    raw output (what a sliding window blends) is log-depth, and :meth:`finalize` returns depth.

    Args:
        head: dense head called as ``head(layers, image)`` returning (B, 1, H, W) with no
            output activation (e.g. :class:`microfm.heads.DPTHead`).
        layers: backbone blocks fed to the head.
        loss: ``(pred_log, target) -> scalar``; default :class:`~microfm.losses.SILogLoss`.
        median_scaling: score predictions after median scaling (scale-ambiguous models).
        name, monitor, mode, targets: see :class:`Task`.

    Example:
        >>> from microfm.heads import DPTHead
        >>> task = DepthTask(DPTHead(64, 4, features=16), layers=[0, 1, 2, 3])
        >>> task({"layers": [torch.randn(1, 64, 4, 4)] * 4}, torch.rand(1, 1, 32, 32)).shape
        torch.Size([1, 1, 32, 32])
    """

    target = "depth"

    def __init__(
        self,
        head: nn.Module,
        layers: Sequence[int],
        loss: nn.Module | None = None,
        median_scaling: bool = False,
        name: str = "depth",
        monitor: str = "val/depth/absrel",
        mode: str = "min",
        targets: Sequence[str] = (),
    ) -> None:
        super().__init__(name, monitor=monitor, mode=mode, layers=layers, targets=targets)
        self.head = head
        self.criterion = loss or SILogLoss()
        self.median_scaling = median_scaling

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        return self.head(features["layers"], image).clamp(-MAX_LOG, MAX_LOG)

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.criterion(pred, batch["depth"])

    def metrics(self, stage: str = "val") -> DepthMetrics:
        return DepthMetrics(median_scaling=self.median_scaling)

    def score(self, metric, pred, batch) -> list[np.ndarray]:
        depth = pred.detach().float().exp()
        metric.update(depth, batch["depth"])
        return list(depth.cpu().numpy()[:, 0])

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """(1, H, W) log-depth -> ``{"depth": (H, W) float32}``."""
        return {"depth": np.exp(np.asarray(output, dtype=np.float32)[0])}

    def plot_examples(self, examples, path) -> None:
        from microfm.tasks.figures import plot_map_examples

        plot_map_examples(examples, path, "depth")
