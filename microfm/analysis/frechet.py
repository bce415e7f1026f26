"""Fréchet distance between the Gaussian fits of two sets of features (FD-DINOv2 style), its
bootstrap confidence interval, and a linear domain-separability score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.errors import ConfigError


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of the rows of ``x`` (as FID and FD-DINOv2 compute them)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ConfigError(f"the Fréchet distance needs at least 2 images per set, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """``|mu1 - mu2|² + tr(S1 + S2 - 2 (S1 S2)^½)`` for Gaussians N(mu1, S1), N(mu2, S2).

    The trace of ``(S1 S2)^½`` is computed as the sum of the square roots of the eigenvalues
    of the symmetric ``S1^½ S2 S1^½`` (same spectrum as ``S1 S2``), which stays real and
    accurate for singular covariances, where the general matrix square root does not.

    Example:
        >>> frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2))
        4.0
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    a = _psd_sqrt(s1)
    m = a @ s2 @ a
    w = np.linalg.eigvalsh((m + m.T) / 2)
    # eigenvalues at round-off level are zero (their square roots would add noise of
    # ~sqrt(eps) each: singular covariances, fewer images than features)
    w[w < w.max(initial=0.0) * len(w) * np.finfo(np.float64).eps] = 0.0
    tr_sqrt = float(np.sum(np.sqrt(w)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def frechet_features(x1: np.ndarray, x2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets (rows are images)."""
    return frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2))


def frechet_bootstrap(
    x1: np.ndarray, x2: np.ndarray, n: int = 200, level: float = 0.95, seed: int = 0
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap interval of the Fréchet distance: both sets are resampled with
    replacement ``n`` times. Returns ``(low, high, distances)``."""
    rng = np.random.default_rng(seed)
    x1, x2 = np.asarray(x1, np.float64), np.asarray(x2, np.float64)
    d = np.array(
        [
            frechet_features(
                x1[rng.integers(0, len(x1), len(x1))], x2[rng.integers(0, len(x2), len(x2))]
            )
            for _ in range(int(n))
        ]
    )
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(d, [tail, 100 - tail]) if len(d) else (np.nan, np.nan)
    return float(lo), float(hi), d


def domain_separability(
    x1: np.ndarray, x2: np.ndarray, n_components: int = 50, folds: int = 5, seed: int = 0
) -> dict[str, float]:
    """How linearly separable two feature sets are: cross-validated logistic regression on
    standardised features reduced by PCA (fitted inside each fold). Returns ``accuracy``,
    ``balanced_accuracy`` and ``auroc`` of the out-of-fold predictions (0.5: inseparable)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([x1, x2]).astype(np.float64)
    y = np.r_[np.zeros(len(x1), int), np.ones(len(x2), int)]
    folds = min(int(folds), len(x1), len(x2))
    if folds < 2:
        raise ConfigError("domain separability needs at least 2 images of each domain")
    n_train = len(x) - (len(x) + folds - 1) // folds
    k = max(1, min(int(n_components), x.shape[1], n_train - 1))
    model = make_pipeline(
        StandardScaler(), PCA(k, random_state=seed), LogisticRegression(max_iter=2000)
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    proba = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    pred = (proba >= 0.5).astype(int)
    return {
        "accuracy": float(np.mean(pred == y)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "auroc": float(roc_auc_score(y, proba)),
    }


class FrechetAnalysis(Analysis):
    """``analysis=frechet``: the Fréchet distance between two domains' features, with a
    bootstrap interval and a linear domain-separability score.

    Compare the same backbone with and without adaptation (``ckpt=`` a LoRA run) to see whether
    adaptation closed the domain gap.

    Args:
        a, b: the two domains (names or indices; default the first two).
        n_bootstrap: bootstrap resamples (0: no interval).
        level: confidence level of the interval.
        n_components: PCA components of the separability classifier.
        folds: cross-validation folds of the separability classifier.
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> FrechetAnalysis(a="em", b="fluorescence").run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "frechet"

    def __init__(
        self,
        a: str | int | None = None,
        b: str | int | None = None,
        n_bootstrap: int = 200,
        level: float = 0.95,
        n_components: int = 50,
        folds: int = 5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.a, self.b = a, b
        self.n_bootstrap, self.level = int(n_bootstrap), float(level)
        self.n_components, self.folds = int(n_components), int(folds)

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_bootstrap

        domains = self.need_domains(fs)
        a, b = self.domain_index(fs, self.a, 0), self.domain_index(fs, self.b, 1)
        if a == b:
            raise ConfigError(f"analysis.a and analysis.b name the same domain ({a})")
        x = fs.feature(self.feature)
        x1, x2 = x[domains == a], x[domains == b]
        out = {self.key("fd"): frechet_features(x1, x2)}
        if self.n_bootstrap:
            lo, hi, d = frechet_bootstrap(x1, x2, self.n_bootstrap, self.level, self.seed)
            out[self.key("fd_ci_low")], out[self.key("fd_ci_high")] = lo, hi
            plot_bootstrap(d, out[self.key("fd")], (lo, hi), figs / "frechet_bootstrap.png")
        sep = domain_separability(x1, x2, self.n_components, self.folds, self.seed)
        out.update({self.key(f"separability_{m}"): v for m, v in sep.items()})
        out[self.key("n_a")], out[self.key("n_b")] = len(x1), len(x2)
        return out
