"""Distance-map targets, normalisation and joint augmentation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from microfm.data.synthetic import generate_sample, sample_rng
from microfm.transforms import DenseAugment, distance_map, percentile_normalize


def reference_distance_map(labels: np.ndarray) -> np.ndarray:
    """Direct definition: one full-image transform per label (slow, obviously right)."""
    out = np.zeros(labels.shape, np.float32)
    for i in np.unique(labels):
        if i == 0:
            continue
        mask = labels == i
        edt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        out[mask] = edt[mask] / edt.max()
    return out


def test_distance_map_matches_reference_on_synthetic_cells():
    labels = generate_sample(sample_rng(0, "train", 1))["instances"]
    np.testing.assert_allclose(distance_map(labels), reference_distance_map(labels), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.int32, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, 5))
)
def test_distance_map_matches_reference_on_random_labels(labels):
    # random label maps include objects split in several pieces and touching the border
    np.testing.assert_allclose(distance_map(labels), reference_distance_map(labels), atol=1e-6)


def test_distance_map_properties():
    labels = np.zeros((20, 30), np.int32)
    labels[2:9, 2:9] = 1
    labels[2:9, 9:20] = 7  # touching neighbour, non-consecutive id
    d = distance_map(labels)
    assert d.dtype == np.float32
    assert d[labels == 0].max() == 0
    for i in (1, 7):
        assert np.isclose(d[labels == i].max(), 1.0)
    assert d[5, 8] < 0.5 and d[5, 9] < 0.5  # valley between touching cells


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64]),
        st.tuples(st.integers(1, 3), st.integers(1, 16), st.integers(1, 16)),
        elements=st.integers(0, 255),
    )
)
def test_percentile_normalize_any_dtype(image):
    out = percentile_normalize(image)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert np.isfinite(out).all()


def test_percentile_normalize_keeps_16_bit_information():
    img = np.array([[[0, 1000, 40000, 65535]]], dtype=np.uint16)
    out = percentile_normalize(img, 0, 100)
    np.testing.assert_allclose(out[0, 0], img[0, 0] / 65535.0, rtol=1e-6)
    assert len(np.unique(out)) == 4  # nothing collapsed by an 8-bit step


def test_augment_keeps_image_and_labels_aligned():
    s = generate_sample(sample_rng(0, "train", 2))
    sample = {
        "image": percentile_normalize(s["image"]),
        "instances": s["instances"].astype(np.int32),
        "semantic": s["semantic"],
        "depth": s["depth"],
    }
    aug = DenseAugment(brightness=None, invert=0.0)
    for seed in range(5):
        out = aug(sample, seed=seed)
        assert out["image"].shape == sample["image"].shape and out["image"].dtype == np.float32
        inst = out["instances"]
        assert set(np.unique(inst)) <= set(np.unique(sample["instances"]))  # no new ids
        # semantic mask moved exactly like the instance labels (nearest neighbour)
        assert np.array_equal(out["semantic"] > 0, inst > 0)
        # bright pixels follow the cells
        assert out["image"][0][inst > 0].mean() > out["image"][0][inst == 0].mean()


def test_augment_is_a_function_of_the_seed():
    img = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    aug = DenseAugment()
    a, b, c = aug({"image": img}, seed=1), aug({"image": img}, seed=1), aug({"image": img}, seed=2)
    assert np.array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].shape == (3, 32, 32)


def test_augment_many_channels():
    img = np.random.default_rng(0).random((6, 32, 32)).astype(np.float32)
    out = DenseAugment()({"image": img, "instances": np.ones((32, 32), np.int32)}, seed=0)
    assert out["image"].shape == (6, 32, 32)
