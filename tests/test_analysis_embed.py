"""PCA against scikit-learn, PCA-RGB basis (signs, mask, saved colours), the HTML scatter,
UMAP determinism, and the analyses' figures."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.decomposition import PCA

from microfm.analysis import RGBBasis, fit_rgb_basis, otsu_threshold, pca
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.html import scatter_html
from microfm.analysis.pca import PCAAnalysis
from microfm.analysis.pca_rgb import PCARGBAnalysis
from microfm.errors import ConfigError


def test_pca_equals_sklearn_up_to_sign_and_fixes_signs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)) @ rng.normal(size=(8, 8))
    ours = pca(x, 3)
    ref = PCA(3).fit(x)
    assert np.allclose(ours["explained_variance_ratio"], ref.explained_variance_ratio_)
    assert np.allclose(ours["explained_variance"], ref.explained_variance_)
    assert np.allclose(np.abs(ours["embedding"]), np.abs(ref.transform(x)), atol=1e-8)
    comps = ours["components"]
    assert (comps[np.arange(3), np.abs(comps).argmax(axis=1)] > 0).all()
    # the same data in another order: the same components, signs included
    again = pca(x[rng.permutation(60)], 3)
    assert np.allclose(again["components"], comps)
    with pytest.raises(ConfigError, match="impossible"):
        pca(x, 9)


def _blobs_patches(rng, n=6, h=8, w=8, d=16):
    """Patch features: background (one direction) with a square object (another)."""
    bg, fg = rng.normal(size=d), rng.normal(size=d) * 3
    p = np.tile(bg, (n, h, w, 1)) + 0.1 * rng.normal(size=(n, h, w, d))
    mask = np.zeros((n, h, w), bool)
    for i in range(n):
        y, x = rng.integers(0, h - 3, 2)
        mask[i, y : y + 3, x : x + 3] = True
    p[mask] = fg + rng.normal(size=(mask.sum(), d))
    return p.astype(np.float32), mask


def test_pca_rgb_finds_the_object_and_keeps_colours_across_runs(tmp_path):
    rng = np.random.default_rng(1)
    patches, truth = _blobs_patches(rng)
    basis = fit_rgb_basis(patches)
    rgb, mask = basis.rgb(patches)
    assert rgb.shape == (*patches.shape[:3], 3) and rgb.min() >= 0 and rgb.max() <= 1
    assert (mask == truth).mean() > 0.98  # Otsu on the first component separates the object
    assert (rgb[~mask] == 0).all()
    # the images in another order fit the same basis: colours mean the same
    again = fit_rgb_basis(patches[::-1])
    assert np.allclose(again.components, basis.components)
    assert np.allclose(again.rgb(patches)[0], rgb, atol=1e-6)
    basis.save(tmp_path / "basis.npz")
    loaded = RGBBasis.load(tmp_path / "basis.npz")
    assert np.array_equal(loaded.rgb(patches)[0], rgb)
    assert fit_rgb_basis(patches, "none").foreground(patches).all()


def test_otsu_threshold_splits_two_modes():
    values = np.r_[np.zeros(100), np.ones(30) * 10]
    assert 0 < otsu_threshold(values) < 10


def test_pca_rgb_analysis_writes_grid_and_basis(tmp_path):
    rng = np.random.default_rng(2)
    patches, _ = _blobs_patches(rng, n=5)
    fs = FeatureSet({"cls": patches.mean(axis=(1, 2)), "patch": patches.astype(np.float16)})
    figs = tmp_path / "figs"
    figs.mkdir()
    m = PCARGBAnalysis(n_images=4).run(fs, figs, images=lambda i: np.ones((1, 64, 64)))
    assert m["pca_rgb/patch/n_images"] == 4 and 0 < m["pca_rgb/patch/foreground_fraction"] < 0.5
    assert (figs / "pca_rgb.png").is_file() and (tmp_path / "pca_rgb_basis.npz").is_file()
    # the saved basis colours another run identically
    again = PCARGBAnalysis(n_images=4, basis=str(tmp_path / "pca_rgb_basis.npz"))
    again.run(fs, figs)
    with pytest.raises(ConfigError, match="patch tokens"):
        PCARGBAnalysis().run(FeatureSet({"cls": np.zeros((3, 2))}), figs)


def test_scatter_html_is_self_contained_and_holds_the_points():
    pts = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    text = scatter_html(pts, {"class": (np.array([0, 1, 1]), ["a", "b"])}, ["x", "y", "</z>"], "t")
    assert "http" not in text.replace("http-equiv", "")  # no network resources
    payload = re.search(r"id='data'>(.*?)</script>", text, re.S).group(1)
    data = json.loads(payload.replace("<\\/", "</"))
    assert data["points"] == pts.tolist() and data["names"][2] == "</z>"
    assert data["colourings"]["class"] == {"values": [0, 1, 1], "names": ["a", "b"]}


def test_pca_analysis_metrics_and_figures(tmp_path):
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 10)) + 5 * y[:, None]
    fs = FeatureSet({"cls": x}, labels=y, class_names=["g1", "m"])
    m = PCAAnalysis(n_components=3).run(fs, tmp_path)
    ratio = PCA(3).fit(x).explained_variance_ratio_
    for i in range(3):
        assert m[f"pca/cls/explained_variance_{i + 1}"] == pytest.approx(ratio[i])
    assert m["pca/cls/silhouette_class"] > 0.5
    for name in ("pca.png", "pca.html", "pca_variance.png"):
        assert (tmp_path / name).is_file()


@pytest.mark.slow
def test_umap_is_seeded_and_separates_clusters(tmp_path):
    from microfm.analysis import umap_embedding
    from microfm.analysis.umap import UMAPAnalysis

    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 40)
    x = rng.normal(size=(120, 12)) + 6 * np.eye(12)[y * 3]
    a = umap_embedding(x, seed=1)
    assert np.array_equal(a, umap_embedding(x, seed=1))
    fs = FeatureSet({"cls": x}, labels=y, class_names=["a", "b", "c"])
    m = UMAPAnalysis(seed=1).run(fs, tmp_path)
    assert m["umap/cls/silhouette_class"] > 0.5
    assert (tmp_path / "umap.html").is_file()
