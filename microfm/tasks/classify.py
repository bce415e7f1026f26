"""Image classification on the CLS token (e.g. cell-cycle phase of single-cell crops)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from microfm.losses.cross_entropy import CrossEntropyLoss
from microfm.metrics.classification import ClassificationMetrics
from microfm.tasks.base import Task

log = logging.getLogger(__name__)


def dataset_labels(dataset: object) -> np.ndarray:
    """The class labels of every sample of a dataset, read without loading images when the
    dataset exposes them (``labels``/``targets`` attributes, or in-memory ``samples``)."""
    for attr in ("labels", "targets"):
        values = getattr(dataset, attr, None)
        if values is not None and not callable(values) and len(values) == len(dataset):
            return np.asarray(values, dtype=np.int64)
    samples = getattr(dataset, "samples", None)
    if samples is not None and len(samples) and isinstance(samples[0], Mapping):
        return np.asarray([int(s["label"]) for s in samples], dtype=np.int64)
    log.info("reading every training sample once to count the classes")
    return np.asarray([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=np.int64)


def balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (K · n_k) per class (scikit-learn's ``class_weight="balanced"``); classes without a
    training sample get weight 0."""
    labels = labels[labels >= 0]
    counts = np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.float64)
    weights = np.zeros(num_classes)
    seen = counts > 0
    weights[seen] = len(labels) / (seen.sum() * counts[seen])
    return weights


class ClassifyTask(Task):
    """Cross-entropy classification of whole images from the CLS token (optionally with the
    mean patch token), scored by accuracy, balanced accuracy, macro-F1 and per-class recall,
    with a confusion-matrix figure at test time.

    Args:
        head: called as ``head(cls, patch)`` returning (B, K) logits, e.g.
            :class:`microfm.heads.ClassificationHead`.
        num_classes: K.
        class_weights: None, ``"balanced"`` (n / (K·n_k) from the training labels, computed
            before fitting) or one weight per class.
        label_smoothing: cross-entropy label smoothing.
        class_names: names for keys and figures (default: the datamodule's ``class_names``).
        name, monitor, mode, targets: see :class:`Task`.

    Example:
        >>> from microfm.heads import ClassificationHead
        >>> task = ClassifyTask(ClassificationHead(64, 3), num_classes=3)
        >>> feats = {"cls": torch.randn(2, 64), "patch": torch.randn(2, 64, 4, 4)}
        >>> task(feats, torch.rand(2, 1, 32, 32)).shape
        torch.Size([2, 3])
    """

    target = "label"

    def __init__(
        self,
        head: nn.Module,
        num_classes: int,
        class_weights: str | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        class_names: Sequence[str] | None = None,
        name: str = "classify",
        monitor: str = "val/classify/balanced_acc",
        mode: str = "max",
        targets: Sequence[str] = (),
    ) -> None:
        super().__init__(name, monitor=monitor, mode=mode, layers=None, targets=targets)
        if num_classes is None or int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a list or null: {class_weights!r}")
        self.balance = class_weights == "balanced"
        self.head = head
        fixed = None if class_weights is None or self.balance else class_weights
        self.criterion = CrossEntropyLoss(self.num_classes, fixed, label_smoothing)
        self.class_names = self._names(class_names)
        self.confmat: np.ndarray | None = None

    def _names(self, names: Sequence[str] | None) -> list[str]:
        names = [str(n) for n in names] if names else [str(k) for k in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes: {names}")
        return names

    def get_extra_state(self) -> Any:
        return {"class_names": self.class_names}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, Mapping) and state.get("class_names"):
            self.class_names = list(state["class_names"])

    def prepare(self, datamodule: object) -> None:
        names = getattr(datamodule, "class_names", None)
        if names and self.class_names == [str(k) for k in range(self.num_classes)]:
            self.class_names = self._names(names)
        if self.balance:
            train = getattr(datamodule, "datasets", {}).get("train")
            if train is None:
                raise ValueError("class_weights=balanced needs the datamodule's train split")
            weights = balanced_weights(dataset_labels(train), self.num_classes)
            self.criterion.set_class_weights(weights)
            log.info("%s class weights: %s", self.name, np.round(weights, 3).tolist())

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        return self.head(features["cls"], features.get("patch"))

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.criterion(pred, batch["label"])

    def metrics(self, stage: str = "val") -> ClassificationMetrics:
        return ClassificationMetrics(self.num_classes, self.class_names)

    def score(self, metric, pred, batch) -> list[int]:
        metric.update(pred.detach(), batch["label"])
        return pred.detach().argmax(1).cpu().tolist()

    def epoch_end(self, stage, metric, values) -> None:
        # the metric was built before prepare() could rename classes: rename the keys now
        metric.class_names = self.class_names
        for k, name in enumerate(self.class_names):
            old = f"recall_{k}"
            if old in values and name != str(k):
                values[f"recall_{name}"] = values.pop(old)
        if stage == "test":
            self.confmat = metric.confmat.detach().cpu().numpy().copy()

    def example_target(self, batch, index: int) -> np.ndarray:
        return batch["label"][index].detach().cpu().numpy()

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """(K,) logits of one image -> ``{"label": class index, "probabilities": (K,)}``."""
        logits = torch.as_tensor(np.asarray(output, dtype=np.float32)).flatten()
        prob = logits.softmax(0).numpy()
        return {"label": np.asarray(int(prob.argmax())), "probabilities": prob}

    def plot_examples(self, examples, path) -> None:
        from microfm.tasks.figures import plot_class_examples, plot_confusion_matrix

        plot_class_examples(examples, self.class_names, path)
        if self.confmat is not None:
            plot_confusion_matrix(
                self.confmat,
                self.class_names,
                path.parent / f"{self.name}_confusion_matrix.png",
                title=f"{self.name}: test confusion matrix (counts, recall per row)",
            )
