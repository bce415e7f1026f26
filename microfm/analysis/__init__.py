"""Representation analysis: features of any backbone on any dataset, and what they show.

Every analysis is a plain function of arrays (NumPy in, numbers out), so notebooks can call
them on any features; ``microfm-analyze`` runs the same functions through the
:class:`~microfm.analysis.base.Analysis` classes and writes metrics and figures.

Example:
    >>> from microfm.analysis import FeatureSet, knn_classify, frechet_features
    >>> fs = FeatureSet.load("results/features/run/features.npz")  # doctest: +SKIP
    >>> x, y = fs.feature("cls"), fs.labels  # doctest: +SKIP
"""

from microfm.analysis.base import Analysis
from microfm.analysis.cache import FeatureCache, cache_key, data_fingerprint
from microfm.analysis.featureset import FeatureSet, concat
from microfm.analysis.frechet import (
    FrechetAnalysis,
    domain_separability,
    frechet_bootstrap,
    frechet_distance,
    frechet_features,
    gaussian_stats,
)
from microfm.analysis.knn import KNNAnalysis, knn_classify, knn_predict, knn_votes
from microfm.analysis.linear_probe import LinearProbeAnalysis, linear_probe
from microfm.analysis.ood import (
    OODAnalysis,
    fit_gaussian,
    knn_distance_scores,
    mahalanobis_scores,
    ood_metrics,
)
from microfm.analysis.pca import PCAAnalysis, pca, silhouette
from microfm.analysis.pca_rgb import PCARGBAnalysis, RGBBasis, fit_rgb_basis, otsu_threshold
from microfm.analysis.retrieval import RetrievalAnalysis, retrieval_scores, top_k_neighbours
from microfm.analysis.scores import classification_scores
from microfm.analysis.splits import stratified_split, train_test_indices
from microfm.analysis.umap import UMAPAnalysis, umap_embedding

# analysis name -> class (conf/analysis/<name>.yaml builds one)
ANALYSES = {
    cls.name: cls
    for cls in (
        PCAAnalysis,
        UMAPAnalysis,
        PCARGBAnalysis,
        KNNAnalysis,
        LinearProbeAnalysis,
        OODAnalysis,
        FrechetAnalysis,
        RetrievalAnalysis,
    )
}


def extract_features(*args, **kwargs):
    """See :func:`microfm.analysis.features.extract_features` (imported on first use)."""
    from microfm.analysis.features import extract_features as _extract

    return _extract(*args, **kwargs)


def backbone_from_checkpoint(*args, **kwargs):
    """See :func:`microfm.analysis.features.backbone_from_checkpoint`."""
    from microfm.analysis.features import backbone_from_checkpoint as _load

    return _load(*args, **kwargs)


__all__ = [
    "ANALYSES",
    "Analysis",
    "FeatureCache",
    "FeatureSet",
    "FrechetAnalysis",
    "KNNAnalysis",
    "LinearProbeAnalysis",
    "OODAnalysis",
    "PCAAnalysis",
    "PCARGBAnalysis",
    "RGBBasis",
    "RetrievalAnalysis",
    "UMAPAnalysis",
    "backbone_from_checkpoint",
    "cache_key",
    "classification_scores",
    "concat",
    "data_fingerprint",
    "domain_separability",
    "extract_features",
    "fit_gaussian",
    "fit_rgb_basis",
    "frechet_bootstrap",
    "frechet_distance",
    "frechet_features",
    "gaussian_stats",
    "knn_classify",
    "knn_distance_scores",
    "knn_predict",
    "knn_votes",
    "linear_probe",
    "mahalanobis_scores",
    "ood_metrics",
    "otsu_threshold",
    "pca",
    "retrieval_scores",
    "silhouette",
    "stratified_split",
    "top_k_neighbours",
    "train_test_indices",
    "umap_embedding",
]
