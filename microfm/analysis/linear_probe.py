"""Linear probe: multinomial logistic regression on frozen, standardised features, its
regularisation chosen on a validation split (scikit-learn)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.scores import classification_scores
from microfm.analysis.splits import stratified_split, train_test_indices

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny or separable sets
        model.fit(x, y)
    return model


def select_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
) -> tuple[float, dict[float, float]]:
    """The inverse regularisation strength ``C`` with the best validation balanced accuracy
    (the smallest ``C`` among equals), and the score of each."""
    from sklearn.metrics import balanced_accuracy_score

    scores = {}
    for c in cs:
        pred = _fit(train_x, train_y, float(c), max_iter).predict(val_x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores[float(c)] = float(balanced_accuracy_score(val_y, pred))
    best = max(scores.values())
    return min(c for c, s in scores.items() if s == best), scores


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    cs: Sequence[float] = DEFAULT_CS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
) -> dict[str, object]:
    """Choose ``C`` on the validation images (given, or a seeded stratified
    ``val_fraction`` of the training images), refit on training + validation images, score
    the test images.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``C`` and ``pred`` (test
        predictions).

    Example:
        >>> r = linear_probe(x_train, y_train, x_test, y_test)  # doctest: +SKIP
        >>> r["accuracy"], r["C"]  # doctest: +SKIP
    """
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    if val_x is None or val_y is None or not len(val_y):
        keep, held = stratified_split(train_y, val_fraction, seed)
        val_x, val_y = train_x[held], train_y[held]
        train_x, train_y = train_x[keep], train_y[keep]
    c, _ = select_c(train_x, train_y, val_x, val_y, cs, max_iter)
    model = _fit(np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y]), c, max_iter)
    pred = model.predict(test_x)
    return {**classification_scores(test_y, pred), "C": c, "pred": pred}


class LinearProbeAnalysis(Analysis):
    """``analysis=linear_probe``: logistic regression on frozen features.

    Args:
        cs: candidate inverse regularisation strengths.
        split: ``auto``, ``dataset`` or ``random`` (see :func:`train_test_indices`).
        test_fraction: held-out fraction of a random split.
        val_fraction: fraction of the training images used to choose ``C`` when the dataset
            has no validation split.
        max_iter: iterations of the solver (lbfgs).
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> LinearProbeAnalysis(feature="cls+mean_patch").run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "linear_probe"

    def __init__(
        self,
        cs: Sequence[float] = DEFAULT_CS,
        split: str = "auto",
        test_fraction: float = 0.3,
        val_fraction: float = 0.2,
        max_iter: int = 1000,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.cs = [float(c) for c in cs]
        self.split, self.test_fraction = split, float(test_fraction)
        self.val_fraction, self.max_iter = float(val_fraction), int(max_iter)

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_confusion

        labels = self.need_labels(fs)
        x = fs.feature(self.feature)
        fit, test = train_test_indices(fs.splits, labels, self.split, self.test_fraction, self.seed)
        train = fit[fs.splits[fit] == "train"]
        val = fit[fs.splits[fit] == "val"]
        if not len(val) or not len(train) or self.split == "random":
            train, val = fit, None
        r = linear_probe(
            x[train],
            labels[train],
            x[test],
            labels[test],
            None if val is None else x[val],
            None if val is None else labels[val],
            self.cs,
            self.val_fraction,
            self.seed,
            self.max_iter,
        )
        plot_confusion(labels[test], r["pred"], fs.class_names, figs / f"{self.name}_confusion.png")
        out = {self.key(m): r[m] for m in ("accuracy", "balanced_accuracy", "macro_f1", "C")}
        out[self.key("n_train")] = len(fit)
        out[self.key("n_test")] = len(test)
        return out
