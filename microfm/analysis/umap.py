"""UMAP embeddings of image features (umap-learn), coloured by class and by domain."""

from __future__ import annotations

import warnings

import numpy as np

from microfm.analysis.pca import EmbeddingAnalysis


def umap_embedding(
    x: np.ndarray,
    n_components: int = 2,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
    seed: int = 0,
) -> np.ndarray:
    """A seeded UMAP embedding (N, n_components) of the rows of ``x`` (deterministic: a fixed
    ``random_state`` makes umap-learn run single-threaded).

    Example:
        >>> umap_embedding(np.random.default_rng(0).normal(size=(50, 8))).shape  # doctest: +SKIP
        (50, 2)
    """
    import umap

    x = np.asarray(x, dtype=np.float32)
    reducer = umap.UMAP(
        n_components=int(n_components),
        n_neighbors=max(2, min(int(n_neighbors), len(x) - 1)),
        min_dist=float(min_dist),
        metric=metric,
        random_state=int(seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_jobs overridden by random_state, tiny-set notices
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


class UMAPAnalysis(EmbeddingAnalysis):
    """``analysis=umap``: UMAP embedding (``figs/umap.png``, ``figs/umap.html``) and the
    silhouette score of classes and domains in it.

    Args:
        n_components: 2 or 3.
        n_neighbors, min_dist, metric: UMAP settings.
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> UMAPAnalysis(n_neighbors=30).run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "umap"

    def __init__(
        self,
        n_components: int = 2,
        n_neighbors: int = 15,
        min_dist: float = 0.1,
        metric: str = "cosine",
        **kwargs,
    ) -> None:
        super().__init__(n_components, **kwargs)
        self.n_neighbors, self.min_dist, self.metric = int(n_neighbors), float(min_dist), metric

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        emb = umap_embedding(
            x, self.n_components, self.n_neighbors, self.min_dist, self.metric, self.seed
        )
        return emb, {}
