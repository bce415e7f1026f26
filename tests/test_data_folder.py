"""data=folder: batches, 16-bit values, splits, crops, cache, domains, channel statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from microfm.data import DomainBalancedDataset, FolderDataModule
from microfm.data.synthetic import SyntheticConfig, generate_sample, sample_rng
from microfm.transforms import DenseAugment, distance_map, percentile_normalize


def make_folder(
    root: Path,
    n: int = 6,
    size: int = 48,
    masks: bool = False,
    depth: bool = False,
    channels: int = 1,
    seed: int = 0,
) -> Path:
    """A toy ``images/ + labels/ (+ masks/, depth/)`` dataset of 16-bit synthetic nuclei."""
    for sub in ("images", "labels") + (("masks",) if masks else ()) + (("depth",) if depth else ()):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        s = generate_sample(sample_rng(seed, "train", i), SyntheticConfig(image_size=size))
        img = s["image"][0]
        if channels > 1:  # channel c = image scaled by (c + 1), clipped to 16 bit
            stack = np.stack(
                [np.clip(img.astype(int) * (c + 1), 0, 65535) for c in range(channels)]
            )
            tifffile.imwrite(
                root / "images" / f"img{i:02d}.tif",
                stack.astype(np.uint16),
                imagej=True,
                metadata={"axes": "CYX"},
            )
        else:
            tifffile.imwrite(root / "images" / f"img{i:02d}.tif", img)
        tifffile.imwrite(root / "labels" / f"img{i:02d}.tif", s["instances"])
        if masks:
            tifffile.imwrite(root / "masks" / f"img{i:02d}.tif", s["semantic"])
        if depth:
            tifffile.imwrite(root / "depth" / f"img{i:02d}.tif", s["depth"])
    return root


def dm_for(root: Path, tmp: Path, **kwargs) -> FolderDataModule:
    defaults = dict(
        crop_size=32,
        batch_size=2,
        num_workers=0,
        pad_multiple=8,
        cache_dir=str(tmp / "cache"),
        targets=["dist"],
    )
    defaults.update(kwargs)
    return FolderDataModule(str(root), **defaults)


def test_batches_follow_the_contract(tmp_path):
    root = make_folder(tmp_path / "d", n=6, size=50, masks=True, depth=True)
    dm = dm_for(root, tmp_path, augment=DenseAugment(), split={"val": 0.34, "test": 0.0})
    dm.setup()
    assert set(dm.datasets) == {"train", "val"}
    b = next(iter(dm.train_dataloader()))
    assert b["image"].dtype == torch.float32 and b["image"].shape == (2, 1, 32, 32)
    assert b["instances"].dtype == torch.int32 and b["instances"].shape == (2, 32, 32)
    assert b["semantic"].dtype == torch.int64 and b["depth"].shape == (2, 1, 32, 32)
    assert b["dist"].dtype == torch.float32 and b["dist"].shape == (2, 1, 32, 32)
    # the distance map is computed from the augmented labels
    for inst, dist in zip(b["instances"].numpy(), b["dist"].numpy()):
        np.testing.assert_allclose(dist[0], distance_map(inst), atol=1e-6)
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (2, 1, 56, 56)  # 50 padded to a multiple of 8
    assert (v["instances"][:, 50:] == 0).all() and (v["image"][:, :, :, 50:] == 0).all()


def test_16_bit_values_reach_the_model_without_an_8_bit_step(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 60000, (40, 40)).astype(np.uint16) for _ in range(4)]
    for i, im in enumerate(imgs):
        tifffile.imwrite(root / "images" / f"{i}.tif", im)
    dm = dm_for(root, tmp_path, crop_size=None, targets=[], split={"val": 0.0, "test": 0.0})
    dm.setup()
    ds = dm.datasets["train"]
    for i in range(4):
        item = ds[i]["image"].numpy()[:, :40, :40]
        expected = percentile_normalize(imgs[int(ds.records[i].name)][None])
        np.testing.assert_allclose(item, expected, rtol=1e-5, atol=1e-6)
        assert len(np.unique(item)) > 1000


def test_split_fractions_lists_and_folders(tmp_path):
    root = make_folder(tmp_path / "d", n=10, size=32)
    a = dm_for(root, tmp_path, split={"val": 0.2, "test": 0.2, "seed": 3})
    a.setup()
    sizes = {s: len(v) for s, v in a.records.items()}
    assert sizes == {"train": 6, "val": 2, "test": 2}
    b = dm_for(root, tmp_path, split={"val": 0.2, "test": 0.2, "seed": 3})
    b.setup()
    assert {s: [r.name for r in v] for s, v in a.records.items()} == {
        s: [r.name for r in v] for s, v in b.records.items()
    }
    all_names = sorted(r.name for v in a.records.values() for r in v)
    assert all_names == [f"img{i:02d}" for i in range(10)]  # a partition
    (root / "val.txt").write_text("img03\nimg07.tif  # comment\n")
    c = dm_for(root, tmp_path, split={"val": "val.txt", "test": 0.1})
    c.setup()
    assert [r.name for r in c.records["val"]] == ["img03", "img07"]
    assert len(c.records["test"]) == 1 and "img03" not in [r.name for r in c.records["test"]]
    # split folders fix the splits
    make_folder(tmp_path / "s" / "train", n=4, size=32)
    make_folder(tmp_path / "s" / "test", n=2, size=32, seed=1)
    d = dm_for(tmp_path / "s", tmp_path, split={"val": 0.25, "test": 0.5})
    d.setup()
    assert {s: len(v) for s, v in d.records.items()} == {"train": 3, "val": 1, "test": 2}


def test_cache_serves_later_runs_without_reading_files(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", n=4, size=40)
    first = dm_for(root, tmp_path, split={"val": 0.5})
    first.setup()
    expected = first.datasets["val"][0]

    import microfm.data.formats as io_mod

    def boom(*a, **k):
        raise AssertionError("a file was read although the cache holds it")

    monkeypatch.setattr(io_mod, "_stored_uncached", boom)
    io_mod._stored_cached.cache_clear()
    second = dm_for(root, tmp_path, split={"val": 0.5})
    second.setup()
    item = second.datasets["val"][0]
    for key in ("image", "instances", "dist"):
        assert torch.equal(item[key], expected[key])
    # the cached distance map is the distance map of the labels
    np.testing.assert_allclose(item["dist"][0].numpy(), distance_map(item["instances"].numpy()))
    next(iter(second.train_dataloader()))  # crops come from the memory-mapped cache too


def test_random_crops_with_minimum_foreground(tmp_path):
    root = tmp_path / "d"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 100, (200, 200)).astype(np.uint16)
        lab = np.zeros((200, 200), np.uint16)
        lab[150:170, 20:40] = 1  # one small object in a large image
        tifffile.imwrite(root / "images" / f"{i}.tif", img)
        tifffile.imwrite(root / "labels" / f"{i}.tif", lab)

    def fg_fraction(min_fg):
        dm = dm_for(
            root,
            tmp_path,
            crop_size=32,
            min_foreground=min_fg,
            targets=[],
            split={"val": 0.0, "test": 0.0},
            batch_size=1,
        )
        dm.setup()
        ds = dm.datasets["train"]
        hits = 0
        for epoch in range(20):
            ds.epoch = epoch
            hits += sum(int(ds[i]["instances"].any()) for i in range(2))
        return hits / 40

    assert fg_fraction(0.0) < 0.3
    assert fg_fraction(0.1) > 0.9


def test_domains_and_balanced_sampling(tmp_path):
    root = make_folder(tmp_path / "d", n=12, size=32)
    rows = ["filename,domain"] + [
        f"img{i:02d}.tif,{'rare' if i < 2 else 'common'}" for i in range(12)
    ]
    (root / "domains.csv").write_text("\n".join(rows) + "\n")
    dm = dm_for(
        root,
        tmp_path,
        domains="domains.csv",
        domain_balanced=True,
        split={"val": 0.0, "test": 0.0},
        batch_size=4,
    )
    dm.setup()
    assert dm.domain_names == ["common", "rare"]
    ds = dm.datasets["train"]
    assert isinstance(ds, DomainBalancedDataset)
    drawn = []
    for epoch in range(30):
        ds.epoch = epoch
        drawn += [ds.draw(i) for i in range(len(ds))]
    domains = np.array([ds.dataset.records[j].domain for j in drawn])
    assert abs((domains == 1).mean() - 0.5) < 0.06  # 2 of 12 images, half of the draws
    ds.epoch = 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["domain"].dtype == torch.int64 and batch["domain"].shape == (4,)
    # draws depend only on (seed, epoch, index): DDP ranks sharding indices see one epoch
    again = [ds.draw(i) for i in range(len(ds))]
    ds.epoch = 3
    assert again == [ds.draw(i) for i in range(len(ds))]


def test_channel_selection_and_channel_stats(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "d", n=4, size=32, channels=3)
    dm = dm_for(
        root,
        tmp_path,
        channels=[2, 0],
        in_chans=2,
        crop_size=None,
        targets=[],
        split={"val": 0.0, "test": 0.0},
    )
    dm.setup()
    ds = dm.datasets["train"]
    raw = tifffile.imread(root / "images" / f"{ds.records[0].name}.tif")
    np.testing.assert_allclose(ds.image(0), percentile_normalize(raw[[2, 0]]), rtol=1e-5)
    mean, std = dm.channel_stats()
    images = np.stack([ds.image(i) for i in range(len(ds))])
    np.testing.assert_allclose(mean, images.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(std, images.std(axis=(0, 2, 3)), rtol=1e-4)
    # cached on disk: a new DataModule does not recompute
    from microfm.data.datamodule import MicroscopyDataModule

    again = dm_for(
        root,
        tmp_path,
        channels=[2, 0],
        in_chans=2,
        crop_size=None,
        targets=[],
        split={"val": 0.0, "test": 0.0},
    )
    monkeypatch.setattr(MicroscopyDataModule, "channel_stats", lambda *a, **k: 1 / 0)
    assert again.channel_stats() == (mean, std)


def test_stacks_give_one_sample_per_plane(tmp_path):
    root = tmp_path / "d"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    vol = np.random.default_rng(0).integers(0, 4000, (5, 32, 32)).astype(np.uint16)
    lab = np.zeros((5, 32, 32), np.uint16)
    for z in range(5):
        lab[z, 4 + z : 12 + z, 4:12] = z + 1
    tifffile.imwrite(root / "images" / "vol.tif", vol, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(root / "labels" / "vol.tif", lab, imagej=True, metadata={"axes": "ZYX"})
    dm = dm_for(root, tmp_path, crop_size=None, split={"val": 0.0, "test": 0.0})
    dm.setup()
    ds = dm.datasets["train"]
    assert [r.name for r in ds.records] == [f"vol@{z}" for z in range(5)]
    for i, r in enumerate(ds.records):
        assert int(ds[i]["instances"].max()) == r.plane + 1


def test_dataset_level_normalisation(tmp_path):
    root = make_folder(tmp_path / "d", n=4, size=32)
    dm = dm_for(
        root,
        tmp_path,
        crop_size=None,
        targets=[],
        split={"val": 0.0, "test": 0.0},
        normalize={"mode": "minmax", "scope": "dataset"},
    )
    dm.setup()
    raws = [tifffile.imread(root / "images" / f"{r.name}.tif") for r in dm.records["train"]]
    lo = min(int(r.min()) for r in raws)
    hi = max(int(r.max()) for r in raws)
    ds = dm.datasets["train"]
    for i, raw in enumerate(raws):
        np.testing.assert_allclose(ds.image(i)[0], (raw - lo) / (hi - lo), rtol=1e-5, atol=1e-6)


def test_zarr_images_are_cropped_lazily(tmp_path):
    import zarr

    root = tmp_path / "d"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    big = rng.integers(0, 60000, (1, 512, 600)).astype(np.uint16)
    z = zarr.open_array(
        root / "images" / "big.zarr",
        mode="w",
        shape=big.shape,
        chunks=(1, 128, 128),
        dtype="uint16",
    )
    z[:] = big
    lab = np.arange(1, 512 * 600 + 1, dtype=np.int32).reshape(512, 600)  # encodes y, x
    tifffile.imwrite(root / "labels" / "big.tif", lab)
    dm = dm_for(
        root, tmp_path, crop_size=64, targets=[], split={"val": 0.0, "test": 0.0}, batch_size=1
    )
    dm.setup()
    ds = dm.datasets["train"]
    full = dm.store.norm_fn(ds.records[0])(big)
    for epoch in range(3):
        ds.epoch = epoch
        item = ds[0]
        y, x = divmod(int(item["instances"][0, 0]) - 1, 600)
        assert np.array_equal(item["instances"].numpy(), lab[y : y + 64, x : x + 64])
        np.testing.assert_allclose(
            item["image"][0].numpy(), full[0, y : y + 64, x : x + 64], rtol=1e-5, atol=1e-6
        )
