"""Nearest-neighbour image retrieval on cosine similarity: top-k neighbours of each image
(itself left out) and precision@k by class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.scores import l2_normalize


def top_k_neighbours(
    x: np.ndarray, k: int, queries: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (Q, k) and cosine similarities of the ``k`` nearest rows of ``x`` to each query
    row (``queries``: indices into ``x``, default all), the query itself excluded, most
    similar first (ties: lower index first)."""
    a = l2_normalize(x)
    q = np.arange(len(a)) if queries is None else np.asarray(queries)
    k = min(int(k), len(a) - 1)
    idx = np.empty((len(q), k), dtype=np.int64)
    sims = np.empty((len(q), k))
    for start in range(0, len(q), 1024):
        rows = q[start : start + 1024]
        sim = a[rows] @ a.T
        sim[np.arange(len(rows)), rows] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        idx[start : start + len(rows)] = order
        sims[start : start + len(rows)] = np.take_along_axis(sim, order, axis=1)
    return idx, sims


def precision_at_k(
    labels: np.ndarray, neighbours: np.ndarray, ks: Sequence[int], queries: np.ndarray | None = None
) -> dict[int, np.ndarray]:
    """For each k, per query: the fraction of its first k neighbours with the query's class."""
    labels = np.asarray(labels)
    q = np.arange(len(labels)) if queries is None else np.asarray(queries)
    same = labels[neighbours] == labels[q][:, None]
    return {int(k): same[:, : int(k)].mean(axis=1) for k in ks if int(k) <= neighbours.shape[1]}


def retrieval_scores(
    x: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean precision@k over all images (leave-one-out), and its mean over classes
    (``class_precision@k``), which weighs rare classes like common ones.

    Example:
        >>> x = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> retrieval_scores(x, np.array([0, 0, 1, 1]), ks=[1])["precision@1"]
        1.0
    """
    idx, _ = top_k_neighbours(x, max(ks))
    out = {}
    for k, p in precision_at_k(labels, idx, ks).items():
        out[f"precision@{k}"] = float(p.mean())
        out[f"class_precision@{k}"] = float(
            np.mean([p[labels == c].mean() for c in np.unique(labels)])
        )
    return out


class RetrievalAnalysis(Analysis):
    """``analysis=retrieval``: precision@k by class (and ``domain_precision@k``, the fraction
    of neighbours from the query's own domain, with ``domain_balanced_precision@k`` its mean
    over domains, when there are domains) and a grid of queries with their top-k neighbours
    (``figs/retrieval.png``).

    Args:
        ks: the k of precision@k.
        n_queries: query rows of the figure (seeded choice, one per class first).
        show_k: neighbours shown per query.
        **kwargs: see :class:`~microfm.analysis.base.Analysis`.

    Example:
        >>> RetrievalAnalysis(ks=[1, 5]).run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "retrieval"

    def __init__(
        self, ks: Sequence[int] = (1, 5, 10), n_queries: int = 6, show_k: int = 5, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.ks = [int(k) for k in ks]
        self.n_queries, self.show_k = int(n_queries), int(show_k)

    def queries(self, fs: FeatureSet) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(fs))
        if fs.labels is None:
            return order[: self.n_queries]
        first = [order[fs.labels[order] == c][0] for c in np.unique(fs.labels)]
        rest = [i for i in order if i not in set(first)]
        return np.asarray((first + rest)[: self.n_queries])

    @staticmethod
    def caption(fs: FeatureSet, i: int) -> str:
        if fs.labels is not None and fs.class_names:
            return fs.class_names[fs.labels[i]]
        if fs.domains is not None and fs.domain_names:
            return fs.domain_names[fs.domains[i]]
        return Path(str(fs.paths[i])).name

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_retrieval

        x = fs.feature(self.feature)
        out: dict[str, float] = {}
        if fs.labels is not None:
            out = {self.key(m): v for m, v in retrieval_scores(x, fs.labels, self.ks).items()}
        if fs.domains is not None and len(np.unique(fs.domains)) > 1:  # same-microscope rate
            scores = retrieval_scores(x, fs.domains, self.ks)
            out.update(
                {
                    self.key("domain_" + m.replace("class_", "balanced_")): v
                    for m, v in scores.items()
                }
            )
        q = self.queries(fs)
        idx, sims = top_k_neighbours(x, self.show_k, q)
        captions = [[self.caption(fs, i) for i in [qi, *row]] for qi, row in zip(q, idx)]
        plot_retrieval(q, idx, sims, captions, images, figs / "retrieval.png")
        out[self.key("n_images")] = len(fs)
        return out
