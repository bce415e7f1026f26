"""Feature extraction: shapes and values against direct backbone calls, tiles, resizing,
workers; the cache and its key; features from a LoRA checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from microfm.analysis import FeatureCache, FeatureSet, data_fingerprint, extract_features
from microfm.analysis.features import backbone_from_checkpoint
from microfm.backbones import build_backbone
from microfm.data import SyntheticDataModule
from microfm.errors import ConfigError, WeightsError
from microfm.run.config import compose
from microfm.run.features import compute_features, features_key

TINY_DATA = ["data.image_size=32", "data.n_train=8", "data.n_val=4", "data.n_test=6"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    bb = build_backbone("vit_test", in_chans=1).eval()
    dm = SyntheticDataModule(n_train=8, n_val=4, n_test=6, image_size=32, num_workers=0)
    dm.setup()
    return bb, dm


def _stack(ds):
    return torch.stack([ds[i]["image"] for i in range(len(ds))])


def test_features_equal_direct_backbone_calls(setup):
    bb, dm = setup
    fs = extract_features(
        bb, {"train": dm.datasets["train"], "test": dm.datasets["test"]}, batch_size=3,
        layers=[1, 2], patch_tokens=True, progress=False, class_names=dm.class_names,
    )  # fmt: skip
    assert len(fs) == 14 and list(fs.splits) == ["train"] * 8 + ["test"] * 6
    assert fs.index.tolist() == list(range(8)) + list(range(6))
    x = _stack(dm.datasets["test"])
    with torch.no_grad():
        ref = bb.forward_dense(x, [1, 2])
    test = fs.splits == "test"
    assert np.allclose(fs.arrays["cls"][test], ref["cls"].numpy(), atol=1e-5)
    assert np.allclose(fs.arrays["mean_patch"][test], ref["patch"].mean((2, 3)).numpy(), atol=1e-5)
    layer2 = ref["layers"][1].mean((2, 3)).numpy()
    assert np.allclose(fs.arrays["layer2_mean_patch"][test], layer2, atol=1e-5)
    assert fs.arrays["patch"].shape == (14, 4, 4, 64) and fs.arrays["patch"].dtype == np.float16
    labels = [int(dm.datasets["test"][i]["label"]) for i in range(6)]
    assert fs.labels[test].tolist() == labels and fs.class_names == list(dm.class_names)
    assert fs.domains is None and fs.paths[8] == "dataset:test:0"
    assert fs.feature("cls+mean_patch").shape == (14, 128)


def test_tiles_resize_workers_and_subsets(setup):
    bb, dm = setup
    ds = {"val": dm.datasets["val"]}
    tiled = extract_features(bb, ds, batch_size=2, tile_size=16, progress=False)
    assert len(tiled) == 16 and tiled.paths[1] == "dataset:val:0#0,1"
    assert (tiled.index == np.repeat(np.arange(4), 4)).all()
    x = _stack(dm.datasets["val"])
    with torch.no_grad():
        tile01 = bb.forward_features(x[:1, :, 0:16, 16:32])["cls"]
        resized = bb.forward_features(
            F.interpolate(x, size=(48, 48), mode="bilinear", antialias=True)
        )["cls"]
    assert np.allclose(tiled.arrays["cls"][1], tile01[0].numpy(), atol=1e-5)
    big = extract_features(bb, ds, batch_size=4, image_size=48, num_workers=1, progress=False)
    assert np.allclose(big.arrays["cls"], resized.numpy(), atol=1e-5)
    some = extract_features(bb, ds, max_images=2, seed=3, progress=False)
    assert len(some) == 2 and (np.diff(some.index) > 0).all()
    with pytest.raises(ConfigError, match="tile_size=12"):
        extract_features(bb, ds, tile_size=12, progress=False)


def test_features_file_round_trip(setup, tmp_path):
    bb, dm = setup
    fs = extract_features(bb, dm.datasets["val"], progress=False, class_names=dm.class_names)
    fs.meta = {"name": "synthetic"}
    fs.save(tmp_path / "f.npz")
    back = FeatureSet.load(tmp_path / "f.npz")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:  # readable without microfm
        assert {"cls", "mean_patch", "labels", "paths", "splits", "class_names"} <= set(z.files)
    for k in fs.arrays:
        assert np.array_equal(back.arrays[k], fs.arrays[k])
    assert back.labels.tolist() == fs.labels.tolist() and back.meta == {"name": "synthetic"}
    assert list(back.paths) == list(fs.paths) and back.class_names == fs.class_names


def test_cache_hit_and_key_changes(tmp_path):
    base = ["backbone=vit_test", *TINY_DATA, f"extract.cache_dir={tmp_path / 'cache'}"]
    base += ["extract.progress=false", "extract.num_workers=0"]
    cfg = compose(base, config_name="features")
    first, info1 = compute_features(cfg)
    second, info2 = compute_features(compose(base, config_name="features"))
    assert not info1["cached"] and info2["cached"] and info1["key"] == info2["key"]
    assert np.array_equal(first.arrays["cls"], second.arrays["cls"])
    assert first.meta["backbone"] == "vit_test" and first.meta["name"] == "Synthetic"
    for change in ("extract.layers=[1]", "data.image_size=40", "extract.image_size=16", "seed=1"):
        other = features_key(compose([*base, change], config_name="features"))[0]
        assert other != info1["key"], change
    same = features_key(compose([*base, "extract.batch_size=5"], config_name="features"))[0]
    assert same == info1["key"]  # loader settings do not change the features
    assert not FeatureCache(None).put("k", first) and FeatureCache(None).get("k") is None


def test_data_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "x.tif"
    f.write_bytes(b"1")
    before = data_fingerprint(str(tmp_path / "a"))
    assert data_fingerprint([str(tmp_path / "a" / "*.tif")]) != before  # other source spelling
    os.utime(f, ns=(1, 10**18))
    assert data_fingerprint(str(tmp_path / "a")) != before
    assert data_fingerprint(None) is None


def test_bad_settings_fail_before_extraction(tmp_path):
    with pytest.raises(ConfigError, match="extract.tile_size=12"):
        compute_features(compose(["backbone=vit_test", "extract.tile_size=12"], "features"))
    with pytest.raises(ConfigError, match="data.root is not set"):
        compute_features(compose(["backbone=vit_test", "data=folder"], "features"))
    with pytest.raises(ConfigError, match="extract.splits"):
        compute_features(compose(["backbone=vit_test", "extract.splits=[tain]"], "features"))
    with pytest.raises(WeightsError, match="ckpt: file not found"):
        compute_features(compose([f"ckpt={tmp_path / 'no.ckpt'}"], "features"))


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory):
    """A real microfm-train checkpoint of a LoRA run on the tiny ViT (1 step), whose adapters
    then get large random weights and whose LayerScale factors (1e-5 at initialisation, which
    makes a random network's blocks nearly inert) are set to 1, so that the adapters change
    the features clearly."""
    from microfm.run.train import train
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("lora")
    over = [
        *TINY, "finetune=lora", "finetune.allow_random=true", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false",
        f"results_root={root}", "experiment_id=lora",
    ]  # fmt: skip
    train(compose(over))
    path = root / "seg" / "lora" / "ckpts" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    g = torch.Generator().manual_seed(0)
    for k, v in ckpt["state_dict"].items():
        if "lora_B" in k:
            ckpt["state_dict"][k] = 0.2 * torch.randn(v.shape, generator=g)
        if ".gamma_" in k:
            ckpt["state_dict"][k] = torch.ones_like(v)
    torch.save(ckpt, path)
    return path, ckpt


@pytest.mark.slow
def test_features_from_a_lora_checkpoint(lora_ckpt, tmp_path):
    from microfm.finetune import Finetune

    path, ckpt = lora_ckpt
    merged, info = backbone_from_checkpoint(path)
    assert info["finetune"] == "lora" and merged.pretrained
    assert not any("lora" in n for n, _ in merged.named_parameters())  # adapters merged
    # the same weights with adapters kept (unmerged), built by hand
    ref = build_backbone("vit_test", in_chans=1)
    Finetune("lora", "lora", ckpt["microfm"]["config"]["finetune"]["lora"], True).apply(ref)
    sd = {k[len("backbone.") :]: v for k, v in ckpt["state_dict"].items() if "backbone." in k}
    ref.load_state_dict(sd, strict=True)
    base = build_backbone("vit_test", in_chans=1)
    base.load_state_dict(
        {k.replace(".base_layer", ""): v for k, v in sd.items() if "lora_" not in k}
    )
    assert torch.equal(merged.model.blocks[0].gamma_1, torch.ones(64))
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        got, want = merged.eval()(x)["cls"], ref.eval()(x)["cls"]
        without = base.eval()(x)["cls"]
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - without).abs().max() > 0.05  # the adapters matter
    over = [f"ckpt={path}", *TINY_DATA, f"extract.cache_dir={tmp_path}", "extract.progress=false"]
    fs, _ = compute_features(compose(over, config_name="features"))
    assert fs.meta["finetune"] == "lora" and fs.meta["ckpt"] == str(path)
    dm = SyntheticDataModule(n_train=8, n_val=4, n_test=6, image_size=32, num_workers=0)
    dm.setup()
    with torch.no_grad():
        direct = merged(_stack(dm.datasets["test"]))["cls"].numpy()
    assert np.allclose(fs.arrays["cls"][fs.splits == "test"], direct, atol=1e-5)
    with pytest.raises(ConfigError, match="channel"):
        bad = [f"ckpt={path}", "data=classification", f"data.root={tmp_path}", "data.in_chans=3"]
        compute_features(compose(bad, "features"))
