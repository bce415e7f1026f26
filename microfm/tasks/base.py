"""A task bundles what one prediction target needs: head, loss, metrics and figures.

Tasks are plain ``torch.nn.Module`` objects (they own their head); LightningModules combine a
backbone with one or several tasks. Keeping this out of the LightningModule makes multitask
training a matter of holding several tasks.

Samples may lack a task's target (multitask data sets rarely label everything): a batch without
the task's key has no target at all, and inside a batch a sample's target is missing when it
holds only the "no label" value (``label`` -1, every ``semantic``/``instances`` pixel -1, no
finite positive ``depth``). Such samples contribute nothing to the task's loss or metrics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric


def select_samples(batch: Mapping[str, object], keep: torch.Tensor) -> dict[str, object]:
    """The samples of ``batch`` where ``keep`` (B,) is true (tensors with a batch dimension are
    indexed, everything else is passed through)."""
    B = keep.shape[0]
    return {
        k: v[keep] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == B else v
        for k, v in batch.items()
    }


class Task(nn.Module):
    """Base class of microfm tasks.

    Args:
        name: used in metric keys ``{stage}/{name}/{metric}``.
        monitor, mode: the metric that selects checkpoints and stops early, and its direction.
        layers: backbone blocks the head reads (None when it only needs ``cls``/``patch``).
        targets: derived targets the dataset must compute for this task (e.g. ``["dist"]``).

    Subclasses set ``target`` (the batch key of the ground truth) and implement ``forward``,
    ``loss`` and ``metrics``; ``label_key`` (default ``target``) is the batch key whose values
    tell whether a sample is labelled for this task.
    """

    target: str = ""
    label_key: str = ""

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
        """The loss over samples that all have a target (see :meth:`compute_loss`)."""
        raise NotImplementedError

    def metrics(self, stage: str = "val") -> Metric:
        """A fresh metric collection for ``stage`` (``val`` or ``test``)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ missing targets
    def valid_samples(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """(B,) bool: which samples carry this task's target; None when the batch has none."""
        key = self.label_key or self.target
        value = batch.get(key)
        if value is None:
            return None
        value = torch.as_tensor(value)
        if value.dtype.is_floating_point:
            ok = torch.isfinite(value) & (value > 0)
        else:
            ok = value >= 0
        return ok.reshape(ok.shape[0], -1).any(1) if ok.ndim > 1 else ok

    def compute_loss(
        self,
        pred: torch.Tensor,
        batch: Mapping[str, torch.Tensor],
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`loss` over the samples that have a target; zero (still differentiable, with
        zero gradients) when none has."""
        valid = self.valid_samples(batch) if valid is None else valid
        if valid is None or not bool(valid.any()):
            return pred.sum() * 0.0
        if not bool(valid.all()):
            pred, batch = pred[valid], select_samples(batch, valid)
        return self.loss(pred, batch)

    def update_metrics(
        self, metric: Metric, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]
    ) -> list | None:
        """Feed the labelled samples of a batch to ``metric``; returns per-sample outputs for
        figures (a list over the batch, None for unlabelled samples) or None."""
        valid = self.valid_samples(batch)
        if valid is None or not bool(valid.any()):
            return None
        sub = select_samples(batch, valid) if not bool(valid.all()) else batch
        out = self.score(metric, pred[valid], sub)
        if out is None:
            return None
        full: list = [None] * len(valid)
        for i, o in zip(torch.nonzero(valid).flatten().tolist(), out):
            full[i] = o
        return full

    def score(self, metric: Metric, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]):
        """Update ``metric`` with labelled samples only; may return per-sample outputs."""
        metric.update(pred, batch[self.target])
        return None

    # ------------------------------------------------------------------ hooks
    def prepare(self, datamodule: object) -> None:
        """Called once before fitting with the datamodule (class names, class weights...)."""

    def epoch_end(self, stage: str, metric: Metric, values: dict[str, torch.Tensor]) -> None:
        """Called with the computed metrics at the end of a val/test epoch, before they are
        logged (only scalar values are logged; the task may add or remove entries)."""

    def example_target(self, batch: Mapping[str, torch.Tensor], index: int) -> np.ndarray:
        """The ground truth of one sample, as shown in figures."""
        return torch.as_tensor(batch[self.target][index]).detach().cpu().numpy()

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """Turn the raw output of one whole image (C, H, W), e.g. blended sliding-window
        predictions, into the named results a user keeps (label images, masks, maps)."""
        raise NotImplementedError

    def plot_examples(self, examples: Sequence[Mapping[str, object]], path: Path) -> None:
        """Write a figure of test examples (``image``, ``target``, ``pred``) to ``path``."""
