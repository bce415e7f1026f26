"""Augmentation recipes (conf/augment): joint geometry on image, labels, masks, depth and
distance maps for any channel count; float data beyond [0, 1]; seeds; ``none`` is identity."""

from __future__ import annotations

import numpy as np
import pytest
from hydra.utils import instantiate

from microfm.data.synthetic import SyntheticConfig, generate_sample, sample_rng
from microfm.run.config import compose, config_dir
from microfm.transforms import DenseAugment, distance_map

RECIPES = sorted(p.stem for p in (config_dir() / "augment").glob("*.yaml"))


def _sample(channels: int = 5):
    s = generate_sample(sample_rng(0, "train", 3), SyntheticConfig(image_size=64))
    inst = s["instances"].astype(np.int32)
    rng = np.random.default_rng(0)
    image = rng.random((channels, 64, 64)).astype(np.float32) * 0.1
    image[0] = (inst > 0) * 3.0  # channel 0 marks the cells, above 1 like real data
    return {
        "image": image,
        "instances": inst,
        "semantic": (inst > 0).astype(np.uint8),
        "depth": (inst > 0).astype(np.float32),
        "dist": distance_map(inst),
    }


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_moves_everything_together(recipe):
    aug = instantiate(compose([f"augment={recipe}"]).augment)
    sample = _sample()
    for seed in range(4):
        out = aug(sample, seed=seed)
        assert out["image"].shape == (5, 64, 64) and out["image"].dtype == np.float32
        assert np.isfinite(out["image"]).all()
        fg = out["instances"] > 0
        assert set(np.unique(out["instances"])) <= set(np.unique(sample["instances"]))
        assert np.array_equal(out["semantic"] > 0, fg)  # nearest neighbour, same geometry
        assert _iou(out["depth"] > 0.5, fg) > 0.9  # bilinear, same geometry
        # the moved distance map agrees with the distance map of the moved labels
        r = np.corrcoef(out["dist"].ravel(), distance_map(out["instances"]).ravel())[0, 1]
        assert r > 0.9
        if fg.any() and not getattr(aug, "invert", 0):
            # the marked channel still marks the cells
            assert out["image"][0][fg].mean() > out["image"][0][~fg].mean() + 1.0


def test_none_is_identity_and_float_values_are_not_clipped():
    aug = instantiate(compose(["augment=none"]).augment)
    assert aug.identity
    sample = _sample()
    out = aug(sample, seed=0)
    assert np.array_equal(out["image"], sample["image"])
    flips = DenseAugment(hflip=1.0, rotate=None, scale=None, brightness=None, invert=0.0)
    assert not flips.identity
    out = flips(sample, seed=0)
    assert np.array_equal(out["image"], sample["image"][:, :, ::-1])
    assert out["image"].max() == pytest.approx(3.0)  # no clipping to [0, 1]


def test_em_recipe_never_inverts_and_is_seeded():
    aug = instantiate(compose(["augment=em_default"]).augment)
    assert aug.invert == 0.0
    sample = _sample(channels=1)
    a, b = aug(sample, seed=5), aug(sample, seed=5)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["instances"], b["instances"])
    inside = [aug(sample, seed=s) for s in range(10)]
    # no inversion: cells (bright channel) stay brighter than background for every seed
    for o in inside:
        fg = o["instances"] > 0
        assert o["image"][0][fg].mean() > o["image"][0][~fg].mean()


def test_intensity_options_validate():
    with pytest.raises(ValueError, match="augment.blur_p"):
        DenseAugment(blur=[0.5, 1.0], blur_p=1.5)
    with pytest.raises(ValueError, match="augment.gamma"):
        DenseAugment(gamma=[1.5, 0.5])
