"""Semantic segmentation: a class per pixel (e.g. mitochondria in EM, nucleus phases)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from microfm.errors import DataError
from microfm.losses.combined import segmentation_loss
from microfm.metrics.segmentation import SegmentationMetrics
from microfm.tasks.base import Task


class SemSegTask(Task):
    """Per-pixel classification from a dense head over intermediate ViT layers.

    Args:
        head: dense head called as ``head(layers, image)`` returning (B, K, H, W) logits
            (:class:`~microfm.heads.LinearHead`, :class:`~microfm.heads.UNetDecoder`,
            :class:`~microfm.heads.DPTHead`).
        layers: backbone blocks fed to the head.
        num_classes: K (class 0 is the background).
        loss: a loss ``(logits, target) -> scalar``; default CE + Dice.
        class_names: names in the per-class keys (``iou_<name>``) and figures.
        ignore_index: target value of unlabelled pixels.
        name, monitor, mode, targets: see :class:`Task`.

    Example:
        >>> from microfm.heads import LinearHead
        >>> task = SemSegTask(LinearHead(64, 1, out_channels=3), layers=[3], num_classes=3)
        >>> task({"layers": [torch.randn(2, 64, 4, 4)]}, torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    target = "semantic"

    def __init__(
        self,
        head: nn.Module,
        layers: Sequence[int],
        num_classes: int,
        loss: nn.Module | None = None,
        class_names: Sequence[str] | None = None,
        ignore_index: int = -1,
        name: str = "semseg",
        monitor: str = "val/semseg/miou",
        mode: str = "max",
        targets: Sequence[str] = (),
    ) -> None:
        super().__init__(name, monitor=monitor, mode=mode, layers=layers, targets=targets)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.head = head
        self.criterion = loss or segmentation_loss("ce_dice", self.num_classes)
        self.ignore_index = int(ignore_index)
        names = [str(c) for c in class_names] if class_names else None
        if names is not None and len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        self.class_names = names or [str(k) for k in range(self.num_classes)]

    def valid_samples(self, batch):
        value = batch.get(self.target)
        if value is None:
            return None
        return (value != self.ignore_index).reshape(value.shape[0], -1).any(1)

    def prepare(self, datamodule: object) -> None:
        names = getattr(datamodule, "semantic_names", None)
        if names and len(names) == self.num_classes and self.class_names[0] == "0":
            self.class_names = [str(n) for n in names]

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        return self.head(features["layers"], image)

    def _check(self, target: torch.Tensor) -> torch.Tensor:
        labelled = target[target != self.ignore_index]
        if labelled.numel() and (labelled.min() < 0 or labelled.max() >= self.num_classes):
            raise DataError(
                f"semantic targets hold classes {labelled.unique().tolist()[:10]} but "
                f"task.num_classes={self.num_classes} (classes 0..{self.num_classes - 1}, "
                f"{self.ignore_index} = unlabelled): set task.num_classes"
            )
        return target.long()

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.criterion(pred, self._check(batch["semantic"]))

    def metrics(self, stage: str = "val") -> SegmentationMetrics:
        return SegmentationMetrics(self.num_classes, self.class_names, self.ignore_index)

    def score(self, metric, pred, batch) -> list[np.ndarray]:
        target = self._check(batch["semantic"])
        metric.class_names = self.class_names
        metric.update(pred.detach(), target)
        return list(pred.detach().argmax(1).cpu().numpy().astype(np.int32))

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """(K, H, W) logits -> ``{"labels": (H, W) int32 classes, "probabilities": (K, H, W)}``."""
        logits = torch.as_tensor(np.asarray(output, dtype=np.float32))
        prob = logits.softmax(0)
        return {"labels": prob.argmax(0).numpy().astype(np.int32), "probabilities": prob.numpy()}

    def plot_examples(self, examples, path) -> None:
        from microfm.tasks.figures import plot_map_examples

        plot_map_examples(examples, path, "semantic", self.num_classes)
