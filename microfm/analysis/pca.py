"""Principal component analysis of image features: 2-D/3-D embeddings coloured by class and
by domain, and the explained-variance spectrum."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.errors import ConfigError


def pca(x: np.ndarray, n_components: int | None = None) -> dict[str, np.ndarray]:
    """PCA by SVD of the centred rows of ``x``.

    Component signs are fixed (the largest-magnitude loading of each component is positive),
    so the same data give the same embedding in every run.

    Returns:
        ``embedding`` (N, k), ``components`` (k, D), ``mean`` (D,), ``explained_variance``
        (k,) and ``explained_variance_ratio`` (k,) (of the total variance).

    Example:
        >>> r = pca(np.random.default_rng(0).normal(size=(20, 5)), 2)
        >>> r["embedding"].shape, r["explained_variance_ratio"].shape
        ((20, 2), (2,))
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    k = min(n, d) if n_components is None else int(n_components)
    if not 1 <= k <= min(n, d):
        raise ConfigError(f"PCA with {k} components of {n} images x {d} features is impossible")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1
    vt = vt * signs[:, None]
    var = s**2 / max(n - 1, 1)
    total = var.sum()
    return {
        "embedding": (x - mean) @ vt[:k].T,
        "components": vt[:k],
        "mean": mean,
        "explained_variance": var[:k],
        "explained_variance_ratio": var[:k] / total if total > 0 else np.zeros(k),
    }


def silhouette(embedding: np.ndarray, groups: np.ndarray | None) -> float | None:
    """Silhouette score of ``groups`` in an embedding (None with fewer than 2 groups)."""
    from sklearn.metrics import silhouette_score

    if groups is None or len(np.unique(groups)) < 2 or len(np.unique(groups)) >= len(groups):
        return None
    return float(silhouette_score(embedding, groups))


def colourings(fs: FeatureSet) -> dict[str, tuple[np.ndarray, list[str]]]:
    """What to colour embeddings by: ``class`` and/or ``domain`` (else one colour)."""
    out = {}
    if fs.labels is not None:
        out["class"] = (fs.labels, list(fs.class_names))
    if fs.domains is not None:
        out["domain"] = (fs.domains, list(fs.domain_names))
    if not out:
        out["split"] = (
            np.unique(fs.splits, return_inverse=True)[1],
            [str(s) for s in np.unique(fs.splits)],
        )
    return out


class EmbeddingAnalysis(Analysis):
    """Common part of ``pca`` and ``umap``: embed, score, plot (PNG and interactive HTML)."""

    def __init__(self, n_components: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if int(n_components) not in (2, 3):
            raise ConfigError(f"analysis.n_components must be 2 or 3, got {n_components}")
        self.n_components = int(n_components)

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        raise NotImplementedError

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.html import write_scatter_html
        from microfm.analysis.plots import plot_embedding

        emb, metrics = self.embed(fs.feature(self.feature))
        colours = colourings(fs)
        title = f"{self.name.upper()} of {self.feature} features"
        plot_embedding(emb, colours, title, figs / f"{self.name}.png")
        write_scatter_html(
            emb, colours, [str(p) for p in fs.paths], title, figs / f"{self.name}.html"
        )
        out = {self.key(m): v for m, v in metrics.items()}
        for by, (values, _) in colours.items():
            score = silhouette(emb, values) if by != "split" else None
            if score is not None:
                out[self.key(f"silhouette_{by}")] = score
        return out


class PCAAnalysis(EmbeddingAnalysis):
    """``analysis=pca``: PCA embedding (``figs/pca.png``, ``figs/pca.html``) and the
    explained-variance spectrum (``figs/pca_variance.png``).

    Metrics: the explained-variance ratio of each embedding component and the silhouette score
    of classes and domains in the embedding.

    Args:
        n_components: 2 or 3.
        spectrum: components shown in the explained-variance plot.
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> PCAAnalysis(n_components=2).run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "pca"

    def __init__(self, n_components: int = 2, spectrum: int = 50, **kwargs) -> None:
        super().__init__(n_components, **kwargs)
        self.spectrum = int(spectrum)
        self._ratio: np.ndarray | None = None

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        full = pca(x, min(max(self.spectrum, self.n_components), *x.shape))
        self._ratio = full["explained_variance_ratio"]
        metrics = {
            f"explained_variance_{i + 1}": float(v)
            for i, v in enumerate(self._ratio[: self.n_components])
        }
        return full["embedding"][:, : self.n_components], metrics

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_explained_variance

        out = super().run(fs, figs, images)
        plot_explained_variance(self._ratio, figs / "pca_variance.png")
        return out
