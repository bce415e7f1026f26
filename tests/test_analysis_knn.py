"""k-NN, linear probe and retrieval against scikit-learn and brute force; splits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from microfm.analysis import (
    classification_scores,
    knn_classify,
    knn_predict,
    linear_probe,
    retrieval_scores,
    stratified_split,
    top_k_neighbours,
    train_test_indices,
)
from microfm.errors import ConfigError


def _sklearn_dino_knn(k: int, temperature: float) -> KNeighborsClassifier:
    """DINO's weighted k-NN in scikit-learn: cosine distance d = 1 - sim, weights
    exp(sim / T) = exp((1 - d) / T), brute-force search."""
    return KNeighborsClassifier(
        n_neighbors=k,
        metric="cosine",
        algorithm="brute",
        weights=lambda d: np.exp((1.0 - d) / temperature),
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_train=st.integers(5, 80),
    dim=st.integers(2, 16),
    classes=st.integers(2, 5),
    k=st.integers(1, 25),
    temperature=st.sampled_from([0.03, 0.07, 0.1, 0.5, 1.0]),
)
def test_weighted_knn_equals_sklearn(seed, n_train, dim, classes, k, temperature):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n_train)
    x = centres[y] + rng.normal(size=(n_train, dim))
    q = rng.normal(size=(30, dim)) + centres[rng.integers(0, classes, 30)]
    k = min(k, n_train)
    ours = knn_predict(x, y, q, k=k, temperature=temperature)
    ref = _sklearn_dino_knn(k, temperature).fit(x, y).predict(q)
    assert (ours == ref).all()


def test_knn_classify_reports_sklearn_accuracy_and_scores():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 10)) * 2
    ytr, yte = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    xtr = centres[ytr] + rng.normal(size=(200, 10))
    xte = centres[yte] + rng.normal(size=(100, 10))
    scores = knn_classify(xtr, ytr, xte, yte)  # k=20, T=0.07
    ref = _sklearn_dino_knn(20, 0.07).fit(xtr, ytr)
    assert scores["accuracy"] == pytest.approx(ref.score(xte, yte))
    assert scores == classification_scores(yte, ref.predict(xte))
    assert scores["accuracy"] > 0.7


def test_classification_scores_by_hand():
    s = classification_scores(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]))
    assert s["accuracy"] == 0.75
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2)


def test_linear_probe_chooses_c_on_validation_and_separates_classes():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 6))
    x[:, 0] += 10 * y  # separable along one axis, noise elsewhere
    keep, test = stratified_split(y, 0.3, seed=0)
    r = linear_probe(x[keep], y[keep], x[test], y[test], cs=[1e-4, 1.0], seed=0)
    assert r["accuracy"] == 1.0 and r["balanced_accuracy"] == 1.0
    assert r["C"] == 1.0  # C=1e-4 squeezes the weights to chance on validation
    assert len(r["pred"]) == len(test)


def test_stratified_split_keeps_every_class_and_is_seeded():
    y = np.array([0] * 10 + [1] * 3 + [2] * 1)
    keep, held = stratified_split(y, 0.3, seed=4)
    assert sorted(np.r_[keep, held].tolist()) == list(range(14))
    assert set(y[held]) == {0, 1} and 2 in y[keep]  # a single image stays on the fitting side
    assert (stratified_split(y, 0.3, seed=4)[1] == held).all()
    with pytest.raises(ConfigError, match="fraction"):
        stratified_split(y, 1.5)


def test_train_test_indices_use_dataset_splits_when_there_are_any():
    splits = np.array(["train", "train", "val", "test", "test"])
    fit, test = train_test_indices(splits, np.array([0, 1, 0, 1, 0]), "auto")
    assert fit.tolist() == [0, 1, 2] and test.tolist() == [3, 4]
    with pytest.raises(ConfigError, match="no test"):
        train_test_indices(np.array(["train"] * 4), None, "dataset")
    fit, test = train_test_indices(np.array(["train"] * 10), np.zeros(10, int), "auto", 0.3)
    assert len(test) == 3 and len(fit) == 7


def test_top_k_neighbours_equal_sklearn_cosine_search():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 7))
    idx, sims = top_k_neighbours(x, 5)
    nn = NearestNeighbors(n_neighbors=6, metric="cosine", algorithm="brute").fit(x)
    dist, ref = nn.kneighbors(x)
    assert (idx == ref[:, 1:]).all()  # sklearn's first neighbour is the query itself
    assert np.allclose(sims, 1 - dist[:, 1:])


def test_precision_at_k_by_brute_force():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    scores = retrieval_scores(x, y, ks=[1, 5])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    np.fill_diagonal(sim, -np.inf)
    per = []
    for i in range(40):
        order = np.argsort(-sim[i], kind="stable")[:5]
        per.append(np.mean(y[order] == y[i]))
    per = np.array(per)
    assert scores["precision@5"] == pytest.approx(per.mean())
    by_class = np.mean([per[y == c].mean() for c in range(3)])
    assert scores["class_precision@5"] == pytest.approx(by_class)
