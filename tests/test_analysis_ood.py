"""OOD scores: Ledoit–Wolf / OAS shrinkage and Mahalanobis distances equal scikit-learn's
estimators; k-NN distance and the AUROC / FPR@95%TPR definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.covariance import OAS, EmpiricalCovariance, LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from microfm.analysis import fit_gaussian, knn_distance_scores, mahalanobis_scores, ood_metrics
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.ood import OODAnalysis
from microfm.errors import ConfigError

ESTIMATORS = {"ledoit_wolf": LedoitWolf, "oas": OAS, "empirical": EmpiricalCovariance}


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 60),
    p=st.integers(2, 30),
    method=st.sampled_from(sorted(ESTIMATORS)),
)
def test_shrunk_covariance_and_mahalanobis_equal_sklearn(seed, n, p, method):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(p, p)) * rng.uniform(0.1, 3)
    x = rng.normal(size=(n, p)) @ mix + rng.normal(size=p)
    y = rng.normal(size=(10, p)) @ mix
    ref = ESTIMATORS[method]().fit(x)
    mean, cov, shrinkage = fit_gaussian(x, method)
    assert np.allclose(mean, ref.location_)
    assert np.allclose(cov, ref.covariance_, rtol=1e-9, atol=1e-12 * np.abs(cov).max())
    if method != "empirical":
        assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-9, abs=1e-12)
    ours = mahalanobis_scores(x, y, method)
    assert np.allclose(ours, ref.mahalanobis(y), rtol=1e-6, atol=1e-9)


def test_knn_distance_is_the_kth_neighbour_of_unit_vectors():
    rng = np.random.default_rng(0)
    ref, test = rng.normal(size=(80, 6)), rng.normal(size=(20, 6))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    dist, _ = NearestNeighbors(n_neighbors=5).fit(unit(ref)).kneighbors(unit(test))
    assert np.allclose(knn_distance_scores(ref, test, k=5), dist[:, 4])


def test_ood_metrics_by_hand():
    inside = np.arange(20.0)  # 95 % of them (19) are <= 18
    outside = np.array([10.5, 18.0, 19.5, 30.0])
    m = ood_metrics(inside, outside)
    y = np.r_[np.zeros(20), np.ones(4)]
    assert m["auroc"] == pytest.approx(roc_auc_score(y, np.r_[inside, outside]))
    assert m["fpr95"] == 0.5  # 10.5 and 18.0 are accepted at the threshold 18
    perfect = ood_metrics(np.zeros(10), np.ones(5))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0}


def test_analysis_flags_a_shifted_domain_and_names_bad_settings(tmp_path):
    rng = np.random.default_rng(1)
    x = np.r_[rng.normal(size=(80, 5)), rng.normal(size=(40, 5)) + 4.0].astype(np.float32)
    fs = FeatureSet(
        {"cls": x},
        domains=np.r_[np.zeros(80, int), np.ones(40, int)],
        domain_names=["a", "b"],
    )
    m = OODAnalysis(reference="a", shrinkage="oas").run(fs, tmp_path)
    assert m["ood/cls/mahalanobis_auroc"] == 1.0 and m["ood/cls/knn_auroc"] > 0.8
    assert m["ood/cls/n_out"] == 40 and m["ood/cls/n_in"] + m["ood/cls/n_reference"] == 80
    assert (tmp_path / "ood_scores.png").is_file()
    with pytest.raises(ConfigError, match="'c' is not one of"):
        OODAnalysis(reference="c").run(fs, tmp_path)
    with pytest.raises(ConfigError, match="shrinkage"):
        OODAnalysis(shrinkage="lw")
    with pytest.raises(ConfigError, match="needs class labels"):
        OODAnalysis(ood_classes=["x"]).run(fs, tmp_path)
