"""Intensity normalisation: modes against hand-computed values, dataset-level statistics,
CLAHE, and the property that any input gives finite float32."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from microfm.errors import ConfigError
from microfm.transforms.intensity import (
    Normalizer,
    clahe,
    image_stats,
    meanstd_normalize,
    minmax_normalize,
    percentile_normalize,
)


def test_modes_against_hand_computed_values():
    img = np.array([[[0, 10, 20, 30, 40]], [[100, 100, 100, 100, 300]]], dtype=np.uint16)
    mm = minmax_normalize(img)
    np.testing.assert_allclose(mm[0, 0], [0, 0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(mm[1, 0], [0, 0, 0, 0, 1.0], rtol=1e-6)
    ms = meanstd_normalize(img)
    x = np.array([0, 10, 20, 30, 40.0])
    np.testing.assert_allclose(ms[0, 0], (x - 20) / np.sqrt(200), rtol=1e-5)
    # percentiles with linear interpolation: p25 of channel 0 is 10, p75 is 30
    pc = percentile_normalize(img, 25, 75)
    np.testing.assert_allclose(pc[0, 0], [-0.5, 0, 0.5, 1.0, 1.5], rtol=1e-6)
    offset, scale = image_stats(img, "percentile", 25, 75)
    np.testing.assert_allclose(offset, [10, 100])
    np.testing.assert_allclose(scale, [20, 0])
    constant = np.full((1, 4, 4), 7, np.uint16)
    for mode in ("percentile", "minmax", "meanstd"):
        assert np.all(Normalizer(mode)(constant) == 0)  # constant channel -> 0, no NaN


def test_16_bit_range_survives():
    img = np.arange(0, 65536, 16, dtype=np.uint16).reshape(1, 64, 64)
    out = Normalizer("minmax")(img)
    assert len(np.unique(out)) == 4096  # every distinct 16-bit value stays distinct


def test_dataset_scope_uses_pooled_statistics():
    a = np.full((2, 8, 8), 100, np.uint16)
    a[1] = 7
    b = np.full((2, 8, 8), 300, np.uint16)
    b[1] = 9
    norm = Normalizer("minmax", scope="dataset")
    offset, scale = norm.fit([a, b])
    np.testing.assert_allclose(offset, [100, 7])
    np.testing.assert_allclose(scale, [200, 2])
    np.testing.assert_allclose(norm(a)[0], 0.0)
    np.testing.assert_allclose(norm(b)[0], 1.0)
    ms = Normalizer("meanstd", scope="dataset")
    mean, std = ms.fit([a, b])
    pooled = np.concatenate([a.reshape(2, -1), b.reshape(2, -1)], 1).astype(float)
    np.testing.assert_allclose(mean, pooled.mean(1))
    np.testing.assert_allclose(std, pooled.std(1))
    pc = Normalizer("percentile", 1, 99, scope="dataset")
    lo_hi = pc.fit([a, b])
    expected = np.percentile(pooled, [1, 99], axis=1)
    np.testing.assert_allclose(lo_hi[0], expected[0])
    np.testing.assert_allclose(lo_hi[0] + lo_hi[1], expected[1])


def test_state_round_trip_keeps_dataset_statistics():
    img = np.random.default_rng(1).integers(0, 4000, (2, 16, 16)).astype(np.uint16)
    norm = Normalizer("percentile", 2, 98, scope="dataset", clahe=True)
    norm.fit([img, img // 2])
    again = Normalizer.from_state(norm.state())
    assert again.settings() == norm.settings()
    np.testing.assert_array_equal(again(img), norm(img))


def test_clahe_keeps_range_and_shape():
    rng = np.random.default_rng(0)
    img = (rng.random((2, 64, 64)) ** 3 * 4000).astype(np.uint16)
    out = Normalizer("percentile", clahe=True, clahe_tiles=4)(img)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    # equalisation spreads a skewed histogram: the median moves up
    assert np.median(out) > np.median(percentile_normalize(img).clip(0, 1))


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="data.normalize.mode"):
        Normalizer("zscore")
    with pytest.raises(ConfigError, match="data.normalize.low/high"):
        Normalizer("percentile", 99, 1)
    with pytest.raises(ConfigError, match="data.normalize.scope"):
        Normalizer(scope="batch")


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        st.sampled_from(
            [np.uint8, np.uint16, np.int8, np.int32, np.float16, np.float32, np.float64]
        ),
        st.tuples(st.integers(1, 5), st.integers(1, 20), st.integers(1, 20)),
    ),
    st.sampled_from(["percentile", "minmax", "meanstd", "none"]),
    st.booleans(),
)
def test_any_input_gives_finite_float32(image, mode, clip):
    """Property: any dtype, shape and values (NaN, inf, extremes) -> finite float32, same
    shape; per-image and dataset scope alike."""
    out = Normalizer(mode, clip=clip)(image)
    assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()
    ds = Normalizer(mode, scope="dataset", clip=clip)
    ds.fit([image, image])
    out = ds(image)
    assert out.dtype == np.float32 and np.isfinite(out).all()


def _opencv_clahe_8bit(x: np.ndarray, limit: float, tiles: int = 8) -> np.ndarray:
    """The reference for the documented meaning of the clip limit: OpenCV's CLAHE on the
    8-bit quantised [0, 1] image."""
    import cv2

    op = cv2.createCLAHE(clipLimit=float(limit), tileGridSize=(tiles, tiles))
    q = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return np.stack([op.apply(ch) for ch in q]).astype(np.float32) / 255


def _bbbc039_image(shared) -> np.ndarray:
    import tifffile

    files = sorted((shared / "data" / "bbbc039_nuclei" / "images").glob("*.tif"))
    if not files:
        pytest.skip(f"no BBBC039 images under {shared / 'data' / 'bbbc039_nuclei'}")
    return tifffile.imread(files[0])[None]  # 520 x 696 uint16 (12-bit values)


def _check_clip_limit_acts(img: np.ndarray) -> None:
    x = percentile_normalize(img)
    base = np.clip(x, 0, 1)
    out = {c: clahe(x, c, 8) for c in (1, 2, 40)}
    # limits 1 and 40 must differ (OpenCV on 16-bit gave identical or nearly equal outputs)
    assert np.abs(out[40] - out[1]).mean() > 0.1
    # a larger limit equalises more
    changes = [np.abs(out[c] - base).mean() for c in (1, 2, 40)]
    assert changes[0] < changes[1] < changes[2]
    # and each limit tracks OpenCV's 8-bit CLAHE with that limit: closer to it than half of
    # the change the reference itself makes
    for c in (2, 40):
        ref = _opencv_clahe_8bit(x, c)
        assert np.abs(out[c] - ref).mean() < 0.5 * np.abs(ref - base).mean(), c


def test_clahe_clip_limit_acts_on_16bit_synthetic():
    rng = np.random.default_rng(0)
    _check_clip_limit_acts((rng.random((1, 256, 256)) ** 3 * 4000).astype(np.uint16))


def test_clahe_clip_limit_acts_on_16bit_bbbc039(shared):
    _check_clip_limit_acts(_bbbc039_image(shared))


def test_clahe_leaves_constant_channels():
    img = np.stack([np.full((32, 32), 0.25, np.float32), np.zeros((32, 32), np.float32)])
    np.testing.assert_array_equal(clahe(img, 2.0, 8), img)
