"""A task bundles what one prediction target needs: head, loss, metrics and figures.

Tasks are plain ``torch.nn.Module`` objects (they own their head); LightningModules combine a
backbone with one or several tasks. Keeping this out of the LightningModule makes multitask
training a matter of holding several tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric


class Task(nn.Module):
    """Base class of microfm tasks.

    Args:
        name: used in metric keys ``{stage}/{name}/{metric}``.
        monitor, mode: the metric that selects checkpoints and stops early, and its direction.
        layers: backbone blocks the head reads (None when it only needs ``cls``/``patch``).
        targets: derived targets the dataset must compute for this task (e.g. ``["dist"]``).

    Subclasses set ``target`` (the batch key of the ground truth) and implement ``forward``,
    ``loss`` and ``metrics``.
    """

    target: str = ""

    def __init__(
        self,
        name: str,
        monitor: str,
        mode: str = "max",
        layers: Sequence[int] | None = None,
        targets: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"task.mode must be 'min' or 'max', got {mode!r}")
        self.name = name
        self.targets = tuple(targets)
        self.monitor = monitor
        self.mode = mode
        self.layers = tuple(layers) if layers is not None else None

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def metrics(self) -> Metric:
        """A fresh metric collection (one per stage)."""
        raise NotImplementedError

    def update_metrics(
        self, metric: Metric, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> object:
        """Feed a batch to ``metric``; may return per-sample outputs for figures."""
        return metric.update(pred, batch[self.target])

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """Turn the raw output of one whole image (C, H, W), e.g. blended sliding-window
        predictions, into the named results a user keeps (label images, masks, maps)."""
        raise NotImplementedError

    def plot_examples(self, examples: Sequence[Mapping[str, object]], path: Path) -> None:
        """Write a figure of test examples (``image``, ``target``, ``pred``) to ``path``."""
