"""Fréchet distance conformance: closed form on Gaussians, direct scipy.linalg.sqrtm on real
features, symmetry, zero against itself; bootstrap interval and domain separability."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

from microfm.analysis import (
    domain_separability,
    frechet_bootstrap,
    frechet_distance,
    frechet_features,
    gaussian_stats,
)


def _sqrtm_fd(mu1, s1, mu2, s2) -> float:
    """The textbook computation (as in the FID reference code): scipy's general sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _rotation(d: int, rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
)
def test_closed_form_on_commuting_gaussians(d, seed, scale):
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr(S1 + S2 - 2 (S1 S2)^½) = Σ(√a - √b)²
    rng = np.random.default_rng(seed)
    q = _rotation(d, rng)
    a, b = scale * rng.uniform(0.01, 2, d), scale * rng.uniform(0.01, 2, d)
    mu1, mu2 = rng.normal(size=d) * scale, rng.normal(size=d) * scale
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-7, abs=1e-9 * scale)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 10), seed=st.integers(0, 2**31 - 1))
def test_general_gaussians_match_scipy_sqrtm(d, seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(d), m2 @ m2.T + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = _sqrtm_fd(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_one_dimensional_closed_form():
    # N(0, 1) vs N(3, 4): (0 - 3)² + (1 - 2)² = 10
    assert frechet_distance([0.0], [[1.0]], [3.0], [[4.0]]) == pytest.approx(10.0)


def test_sample_estimate_converges_to_the_population_distance():
    rng = np.random.default_rng(0)
    d = 4
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.5]), np.diag([2.0, 1.0, 1.0, 0.5])
    mu2 = np.array([1.0, 0.0, -1.0, 0.5])
    x1 = rng.multivariate_normal(np.zeros(d), s1, size=200_000)
    x2 = rng.multivariate_normal(mu2, s2, size=200_000)
    truth = frechet_distance(np.zeros(d), s1, mu2, s2)
    assert frechet_features(x1, x2) == pytest.approx(truth, rel=0.02)


def _real_features(shared, n=160):
    """CLS and mean-patch features of mlcp_cellcycle crops (tiny random ViT)."""
    import torch

    from microfm.backbones import build_backbone
    from microfm.data import read_image
    from microfm.transforms.intensity import percentile_normalize

    files = sorted((shared / "data" / "mlcp_cellcycle").rglob("*.tif"))[::7][:n]
    images = np.stack([percentile_normalize(read_image(f)) for f in files]).astype(np.float32)
    torch.manual_seed(0)
    bb = build_backbone("vit_test", in_chans=3).eval()
    x = torch.nn.functional.interpolate(torch.from_numpy(images), size=(32, 32), mode="bilinear")
    with torch.no_grad():
        out = bb.forward_features(x)
    return out["patch"].mean(dim=(2, 3)).double().numpy(), files


@pytest.mark.shared
def test_real_features_match_scipy_sqrtm_symmetric_and_zero_against_itself(shared):
    x, files = _real_features(shared)
    assert len(files) == 160 and x.shape == (160, 64)
    a, b = x[::2], x[1::2] + 0.05 * x[1::2].std(axis=0)  # two halves, the second shifted
    ref = _sqrtm_fd(*gaussian_stats(a), *gaussian_stats(b))
    got = frechet_features(a, b)
    assert got > 0
    assert abs(got - ref) <= 1e-6 * abs(ref)
    assert frechet_features(b, a) == pytest.approx(got, rel=1e-9)
    assert abs(frechet_features(a, a)) <= 1e-9 * float(np.trace(np.cov(a, rowvar=False)))


def test_symmetric_and_zero_against_itself_on_singular_covariances():
    # fewer images than features: singular covariances, where the general sqrtm struggles
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20, 50)), rng.normal(size=(30, 50)) + 0.5
    assert frechet_features(a, b) == pytest.approx(frechet_features(b, a), rel=1e-9)
    assert abs(frechet_features(a, a)) < 1e-8
    assert frechet_features(a, b) > 0


def test_bootstrap_interval_surrounds_the_estimate_and_is_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 1.0
    lo, hi, d = frechet_bootstrap(a, b, n=100, seed=3)
    assert len(d) == 100 and lo < hi
    assert lo <= frechet_features(a, b) <= hi + 0.5  # bootstrap FDs are biased upwards
    lo2, hi2, _ = frechet_bootstrap(a, b, n=100, seed=3)
    assert (lo, hi) == (lo2, hi2)


def test_domain_separability_tells_separable_from_identical_sets():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(60, 8))
    far = domain_separability(a, rng.normal(size=(60, 8)) + 3.0, n_components=4)
    same = domain_separability(a, rng.normal(size=(60, 8)), n_components=4)
    assert far["accuracy"] == 1.0 and far["auroc"] == 1.0
    assert same["auroc"] < 0.75
