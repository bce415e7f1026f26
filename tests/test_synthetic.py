"""The built-in synthetic microscopy generator and its DataModule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microfm.data import SyntheticDataModule
from microfm.data.synthetic import SyntheticConfig, generate_sample, make_split, sample_rng


def test_sample_contents_and_dtypes():
    s = generate_sample(sample_rng(0, "train", 0), SyntheticConfig(image_size=96))
    assert s["image"].dtype == np.uint16 and s["image"].shape == (1, 96, 96)
    assert s["instances"].dtype == np.uint16 and s["instances"].shape == (96, 96)
    ids = np.unique(s["instances"])
    assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, ids.size))  # consecutive
    assert ids.size > 5
    assert set(np.unique(s["semantic"])) <= {0, 1, 2}
    assert np.array_equal(s["semantic"] > 0, s["instances"] > 0)
    assert s["label"] in (0, 1, 2)
    assert s["depth"].dtype == np.float32 and s["depth"].min() > 0
    # cells are higher than the substrate
    assert s["depth"][s["instances"] > 0].mean() > s["depth"][s["instances"] == 0].mean()


def test_images_use_16_bit_range_and_look_like_fluorescence():
    samples = make_split(1, "val", 8)
    for s in samples:
        img, inst = s["image"][0].astype(float), s["instances"]
        assert img.max() > 255  # not 8-bit data
        assert img[inst > 0].mean() > 1.5 * img[inst == 0].mean()  # nuclei brighter
        assert np.std(img[inst == 0]) > 0  # noisy background


def test_touching_cells_exist():
    from scipy import ndimage as ndi

    touching = 0
    for s in make_split(0, "train", 6):
        inst = s["instances"].astype(int)
        grown = ndi.grey_dilation(inst, size=3)
        touching += int(np.sum((grown != inst) & (inst > 0) & (grown > 0)))
    assert touching > 0


def test_deterministic_and_splits_differ():
    a = make_split(3, "train", 3)
    b = make_split(3, "train", 3)
    c = make_split(3, "test", 3)
    d = make_split(4, "train", 3)
    for x, y in zip(a, b):
        assert np.array_equal(x["image"], y["image"])
        assert np.array_equal(x["instances"], y["instances"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert not np.array_equal(a[0]["image"], d[0]["image"])


def test_unknown_split_rejected():
    with pytest.raises(ValueError, match="unknown split"):
        sample_rng(0, "training", 0)


def test_datamodule_batches():
    dm = SyntheticDataModule(
        n_train=8, n_val=4, n_test=4, image_size=64, batch_size=4, num_workers=0, targets=["dist"]
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["dist"].shape == (4, 1, 64, 64)
    assert batch["instances"].shape == (4, 64, 64)
    assert batch["label"].shape == (4,)
    assert torch.isfinite(batch["image"]).all()


def test_training_order_and_augmentation_depend_on_seed_and_epoch():
    from microfm.transforms import DenseAugment

    def first_batch(seed, epoch):
        dm = SyntheticDataModule(
            n_train=8,
            n_val=2,
            n_test=2,
            image_size=32,
            batch_size=4,
            num_workers=0,
            seed=seed,
            augment=DenseAugment(),
        )
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))

    a, b = first_batch(0, 0), first_batch(0, 0)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["index"], b["index"])
    c = first_batch(0, 1)
    assert not torch.equal(a["image"], c["image"])


def test_batch_larger_than_dataset_is_an_error():
    from microfm.errors import ConfigError

    dm = SyntheticDataModule(
        n_train=4, n_val=2, n_test=2, image_size=32, batch_size=8, num_workers=0
    )
    with pytest.raises(ConfigError, match="data.batch_size=8"):
        dm.setup("fit")
