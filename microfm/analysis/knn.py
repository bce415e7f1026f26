"""Weighted k-NN classification on cosine similarity, as in the DINO evaluation: the ``k``
most similar training images vote for their class with weight ``exp(similarity / T)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.scores import classification_scores, l2_normalize
from microfm.analysis.splits import train_test_indices
from microfm.errors import ConfigError


def knn_votes(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Summed votes (M, C) of each test image's ``k`` nearest training images (cosine
    similarity), each weighted by ``exp(similarity / temperature)``."""
    if k < 1:
        raise ConfigError(f"analysis.k must be >= 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"analysis.temperature must be > 0, got {temperature}")
    train_y = np.asarray(train_y, dtype=np.int64)
    C = int(num_classes or (train_y.max() + 1))
    a = l2_normalize(train_x)
    k = min(int(k), len(a))
    votes = np.zeros((len(test_x), C))
    for start in range(0, len(test_x), chunk):
        b = l2_normalize(test_x[start : start + chunk])
        sim = b @ a.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sim, top, axis=1)
        rows = np.repeat(np.arange(len(b)), k)
        np.add.at(
            votes[start : start + len(b)],
            (rows, train_y[top].ravel()),
            np.exp(s / temperature).ravel(),
        )
    return votes


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Predicted class of each test image (ties go to the lower class index).

    Example:
        >>> x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(x, np.array([0, 0, 1]), np.array([[1.0, 0.05]]), k=2).tolist()
        [0]
    """
    return knn_votes(train_x, train_y, test_x, k, temperature).argmax(axis=1)


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of :func:`knn_predict` on the test images."""
    return classification_scores(test_y, knn_predict(train_x, train_y, test_x, k, temperature))


class KNNAnalysis(Analysis):
    """``analysis=knn``: weighted k-NN accuracy of frozen features.

    Args:
        k: neighbours (20 in the DINO evaluation).
        temperature: vote temperature (0.07).
        split: ``auto`` (the dataset's train+val vs test when both exist, else random),
            ``dataset`` or ``random``.
        test_fraction: held-out fraction of a random split (stratified by class).
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> KNNAnalysis(k=20).run(fs, Path("figs"))  # doctest: +SKIP
        {'knn/cls/accuracy': 0.91, ...}
    """

    name = "knn"

    def __init__(
        self,
        k: int = 20,
        temperature: float = 0.07,
        split: str = "auto",
        test_fraction: float = 0.3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.k, self.temperature = int(k), float(temperature)
        self.split, self.test_fraction = split, float(test_fraction)

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_confusion

        labels = self.need_labels(fs)
        x = fs.feature(self.feature)
        fit, test = train_test_indices(fs.splits, labels, self.split, self.test_fraction, self.seed)
        pred = knn_predict(x[fit], labels[fit], x[test], self.k, self.temperature)
        plot_confusion(labels[test], pred, fs.class_names, figs / f"{self.name}_confusion.png")
        out = {self.key(m): v for m, v in classification_scores(labels[test], pred).items()}
        out[self.key("n_train")] = len(fit)
        out[self.key("n_test")] = len(test)
        return out
