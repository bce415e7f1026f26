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


def _scaled(train_x: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    return [scaler.transform(a) for a in (train_x, *others)]


def _classifier(max_iter: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, warm_start=True)


def _fit(clf, x: np.ndarray, y: np.ndarray, c: float):
    clf.set_params(C=c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny or separable sets
        return clf.fit(x, y)


def select_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 300,
) -> tuple[float, dict[float, float]]:
    """The inverse regularisation strength ``C`` with the best validation balanced accuracy
    (the smallest ``C`` among equals), and the score of each. The candidates are fitted from
    the strongest regularisation up, each starting from the previous solution."""
    from sklearn.metrics import balanced_accuracy_score

    xs, vs = _scaled(train_x, val_x)
    clf = _classifier(max_iter)
    scores = {}
    for c in sorted(float(c) for c in cs):
        pred = _fit(clf, xs, train_y, c).predict(vs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores[c] = float(balanced_accuracy_score(val_y, pred))
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
    max_iter: int = 300,
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
    xs, ts = _scaled(np.concatenate([train_x, val_x]), test_x)
    model = _fit(_classifier(max_iter), xs, np.concatenate([train_y, val_y]), c)
    pred = model.predict(ts)
    return {**classification_scores(test_y, pred), "C": c, "pred": pred}


class LinearProbeAnalysis(Analysis):
    """``analysis=linear_probe``: logistic regression on frozen features.

    Args:
        cs: candidate inverse regularisation strengths.
        split: ``auto``, ``dataset`` or ``random`` (see :func:`train_test_indices`).
        test_fraction: held-out fraction of a random split.
        val_fraction: fraction of the training images used to choose ``C`` when the dataset
            has no validation split.
        max_iter: iterations of the solver (lbfgs) per candidate ``C``.
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
        max_iter: int = 300,
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
