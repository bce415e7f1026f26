"""Out-of-distribution scores of test images against a reference (in-distribution) set:
Mahalanobis distance under a shrunk covariance (Ledoit–Wolf or OAS, as scikit-learn computes
them) and the distance to the k-th nearest reference image (Sun et al. 2022); AUROC and
FPR at 95 % TPR."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.scores import l2_normalize
from microfm.analysis.splits import stratified_split
from microfm.errors import ConfigError

SHRINKAGE = ("ledoit_wolf", "oas", "empirical")


def ledoit_wolf_shrinkage(xc: np.ndarray) -> float:
    """Ledoit–Wolf shrinkage of centred data ``xc`` (n, p) towards ``trace(S)/p · I``."""
    n, p = xc.shape
    x2 = xc**2
    trace_terms = x2.sum(axis=0) / n
    mu = trace_terms.sum() / p
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum((xc.T @ xc) ** 2)) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * trace_terms.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


def oas_shrinkage(emp_cov: np.ndarray, n: int) -> float:
    """Oracle-approximating shrinkage (Chen et al. 2010, Eq. 23 without the 2/p factor, as in
    scikit-learn) of an empirical covariance of ``n`` samples."""
    p = emp_cov.shape[0]
    alpha = float(np.mean(emp_cov**2))
    mu2 = (np.trace(emp_cov) / p) ** 2
    den = (n + 1) * (alpha - mu2 / p)
    return 1.0 if den == 0 else min((alpha + mu2) / den, 1.0)


def fit_gaussian(
    x: np.ndarray, shrinkage: str = "ledoit_wolf"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, shrunk covariance ``(1 - s) S + s · trace(S)/p · I`` and shrinkage ``s`` of the
    rows of ``x`` (``S`` the maximum-likelihood covariance)."""
    if shrinkage not in SHRINKAGE:
        raise ConfigError(f"analysis.shrinkage must be one of {SHRINKAGE}, got {shrinkage!r}")
    x = np.asarray(x, dtype=np.float64)
    n, p = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    emp = xc.T @ xc / n
    if shrinkage == "empirical" or p == 1:
        return mean, emp, 0.0
    s = ledoit_wolf_shrinkage(xc) if shrinkage == "ledoit_wolf" else oas_shrinkage(emp, n)
    cov = (1.0 - s) * emp
    cov.flat[:: p + 1] += s * np.trace(emp) / p
    return mean, cov, float(s)


def mahalanobis_scores(
    reference: np.ndarray, test: np.ndarray, shrinkage: str = "ledoit_wolf"
) -> np.ndarray:
    """Squared Mahalanobis distance of each test row to the Gaussian fit of ``reference``
    (precision: pseudo-inverse of the shrunk covariance, as ``sklearn.covariance``)."""
    from scipy.linalg import pinvh

    mean, cov, _ = fit_gaussian(reference, shrinkage)
    precision = pinvh(cov, check_finite=False)
    d = np.asarray(test, dtype=np.float64) - mean
    return np.einsum("ij,jk,ik->i", d, precision, d)


def knn_distance_scores(reference: np.ndarray, test: np.ndarray, k: int = 10) -> np.ndarray:
    """Euclidean distance between unit-normalised features of each test row and its k-th
    nearest reference row."""
    a, b = l2_normalize(reference), l2_normalize(test)
    k = min(int(k), len(a))
    out = np.empty(len(b))
    for start in range(0, len(b), 1024):
        sim = b[start : start + 1024] @ a.T
        kth = -np.partition(-sim, k - 1, axis=1)[:, k - 1]
        out[start : start + 1024] = np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))
    return out


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC of telling out-of-distribution images (positives, higher scores) from
    in-distribution ones, and FPR@95%TPR: the fraction of out-of-distribution images accepted
    as in-distribution at the smallest threshold that accepts 95 % of in-distribution images.

    Example:
        >>> ood_metrics(np.array([0.0, 1.0]), np.array([2.0, 3.0]))["auroc"]
        1.0
    """
    from sklearn.metrics import roc_auc_score

    id_scores = np.sort(np.asarray(id_scores, dtype=np.float64))
    ood_scores = np.asarray(ood_scores, dtype=np.float64)
    y = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    auroc = float(roc_auc_score(y, np.r_[id_scores, ood_scores]))
    threshold = id_scores[math.ceil(0.95 * len(id_scores)) - 1]
    return {"auroc": auroc, "fpr95": float(np.mean(ood_scores <= threshold))}


class OODAnalysis(Analysis):
    """``analysis=ood``: how well frozen features flag images unlike a reference set.

    In-distribution images are those of the ``reference`` domain (default: the first), or,
    with ``ood_classes``, those of the other classes. Their training images fit the scores;
    their test images (the dataset's test split, else a seeded ``test_fraction``) are scored
    with every out-of-distribution image.

    Args:
        reference: in-distribution domain (name or index; None: domain 0).
        ood_classes: class names treated as out-of-distribution (instead of domains).
        shrinkage: ``ledoit_wolf``, ``oas`` or ``empirical`` covariance.
        k: neighbour of the k-NN distance score.
        test_fraction: held-out in-distribution fraction when there is no test split.
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> OODAnalysis(reference="bbbc039").run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "ood"

    def __init__(
        self,
        reference: str | int | None = None,
        ood_classes: Sequence[str] | None = None,
        shrinkage: str = "ledoit_wolf",
        k: int = 10,
        test_fraction: float = 0.3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if shrinkage not in SHRINKAGE:
            raise ConfigError(f"analysis.shrinkage must be one of {SHRINKAGE}, got {shrinkage!r}")
        self.reference = reference
        self.ood_classes = [str(c) for c in ood_classes] if ood_classes else None
        self.shrinkage, self.k, self.test_fraction = shrinkage, int(k), float(test_fraction)

    def partition(self, fs: FeatureSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Indices of (reference fit, in-distribution test, out-of-distribution) images."""
        if self.ood_classes:
            labels = self.need_labels(fs)
            unknown = [c for c in self.ood_classes if c not in fs.class_names]
            if unknown:
                raise ConfigError(f"analysis.ood_classes: {unknown} not in {fs.class_names}")
            out = np.isin(labels, [fs.class_names.index(c) for c in self.ood_classes])
        else:
            domains = self.need_domains(fs)
            out = domains != self.domain_index(fs, self.reference, 0)
        inside = np.flatnonzero(~out)
        test = inside[fs.splits[inside] == "test"]
        if len(test) and len(test) < len(inside):
            fit = inside[fs.splits[inside] != "test"]
        else:
            keep, held = stratified_split(np.zeros(len(inside)), self.test_fraction, self.seed)
            fit, test = inside[keep], inside[held]
        return fit, test, np.flatnonzero(out)

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_histograms

        x = fs.feature(self.feature)
        fit, test, out = self.partition(fs)
        if not len(out):
            raise ConfigError("analysis=ood: no out-of-distribution images")
        scorers = {
            "mahalanobis": lambda a, b: mahalanobis_scores(a, b, self.shrinkage),
            "knn": lambda a, b: knn_distance_scores(a, b, self.k),
        }
        metrics: dict[str, float] = {}
        hists = {}
        for name, score in scorers.items():
            s_in, s_out = score(x[fit], x[test]), score(x[fit], x[out])
            for m, v in ood_metrics(s_in, s_out).items():
                metrics[self.key(f"{name}_{m}")] = v
            hists[name] = (s_in, s_out)
        metrics[self.key("shrinkage")] = fit_gaussian(x[fit], self.shrinkage)[2]
        metrics[self.key("n_reference")] = len(fit)
        metrics[self.key("n_in")] = len(test)
        metrics[self.key("n_out")] = len(out)
        plot_histograms(hists, ("in-distribution", "out-of-distribution"), figs / "ood_scores.png")
        return metrics
