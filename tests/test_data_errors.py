"""Bad input fails at setup with an error naming the file (or key), before any training;
``data.on_error=skip`` leaves bad files out with a warning listing them."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from microfm.data import FolderDataModule
from microfm.errors import ConfigError, DataError, MicrofmError
from microfm.run.config import compose
from microfm.run.train import train
from tests.test_data_folder import make_folder


def _dm(root, tmp_path, **kw):
    args = dict(
        crop_size=32,
        batch_size=2,
        num_workers=0,
        cache_dir=str(tmp_path / "c"),
        targets=["dist"],
        split={"val": 0.0, "test": 0.0},
    )
    args.update(kw)
    return FolderDataModule(str(root), **args)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


CASES = {
    "truncated image": (
        lambda r: _truncate(r / "images" / "img01.tif"),
        r"img01\.tif.*cannot read",
    ),
    "label shape": (
        lambda r: tifffile.imwrite(r / "labels" / "img02.tif", np.zeros((10, 12), np.uint16)),
        r"labels/img02\.tif.*\(10, 12\).*images/img02\.tif",
    ),
    "label without image": (
        lambda r: tifffile.imwrite(r / "labels" / "extra.tif", np.zeros((32, 32), np.uint16)),
        r"without a matching image: .*labels/extra\.tif",
    ),
    "image without label": (
        lambda r: (r / "labels" / "img03.tif").unlink(),
        r"image\(s\) without a matching file in .*labels.*images/img03\.tif",
    ),
    "float labels": (
        lambda r: tifffile.imwrite(r / "labels" / "img00.tif", np.full((32, 32), 0.5, np.float32)),
        r"labels/img00\.tif.*non-integer",
    ),
    "negative labels": (
        lambda r: tifffile.imwrite(r / "labels" / "img00.tif", -np.ones((32, 32), np.int16)),
        r"labels/img00\.tif.*negative",
    ),
    "empty folder": (
        lambda r: [p.unlink() for p in (r / "images").iterdir()],
        r"no images in .*images",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_files_are_named_at_setup(tmp_path, case):
    root = make_folder(tmp_path / "d", n=4, size=32)
    spoil, match = CASES[case]
    spoil(root)
    with pytest.raises(DataError, match=match):
        _dm(root, tmp_path).setup()


def test_channel_index_and_channel_count(tmp_path):
    root = make_folder(tmp_path / "d", n=4, size=32, channels=2)
    with pytest.raises(DataError, match=r"img0\d\.tif.*data\.channels=\[0, 5\].*2 channel"):
        _dm(root, tmp_path, channels=[0, 5], in_chans=2).setup()
    with pytest.raises(DataError, match=r"img0\d\.tif.*2 channel.*data\.in_chans=1"):
        _dm(root, tmp_path).setup()
    with pytest.raises(ConfigError, match="data.channels=.*data.in_chans=1"):
        _dm(root, tmp_path, channels=[0, 1])


def test_fewer_images_than_batch_and_missing_root(tmp_path):
    root = make_folder(tmp_path / "d", n=3, size=32)
    with pytest.raises(ConfigError, match="data.batch_size=8"):
        _dm(root, tmp_path, batch_size=8).setup("fit")
    dm = _dm(root, tmp_path, batch_size=8)
    dm.setup("test")  # evaluating a small dataset never needs a full training batch
    assert sum(len(ds) for ds in dm.datasets.values()) == 3
    with pytest.raises(DataError, match="data.root: not found"):
        _dm(tmp_path / "nowhere", tmp_path).setup()
    (tmp_path / "nolabels" / "images").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "nolabels" / "images" / "a.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(DataError, match=r"needs instances labels.*a\.tif"):
        _dm(tmp_path / "nolabels", tmp_path, batch_size=1).setup()


def test_on_error_skip_lists_and_drops_bad_files(tmp_path):
    root = make_folder(tmp_path / "d", n=5, size=32)
    _truncate(root / "images" / "img01.tif")
    tifffile.imwrite(root / "labels" / "img03.tif", np.full((32, 32), -1, np.int16))
    dm = _dm(root, tmp_path, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipping 2 bad sample\(s\)") as rec:
        dm.setup()
    text = str(rec[0].message)
    assert "img01.tif" in text and "img03.tif" in text
    assert sorted(r.name for r in dm.records["train"]) == ["img00", "img02", "img04"]
    assert len(dm.skipped) == 2
    next(iter(dm.train_dataloader()))


@pytest.mark.parametrize(
    "spoil,match",
    [
        (lambda r: _truncate(r / "images" / "img01.tif"), r"img01\.tif"),
        (lambda r: (r / "labels" / "img02.tif").unlink(), r"img02\.tif"),
    ],
)
def test_train_fails_before_training(tmp_path, spoil, match):
    root = make_folder(tmp_path / "d", n=4, size=32)
    spoil(root)
    cfg = compose(
        [
            "backbone=vit_test",
            "data=folder",
            f"data.root={root}",
            "data.crop_size=32",
            "data.batch_size=2",
            "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'c'}",
            f"results_root={tmp_path / 'results'}",
            "experiment_id=bad",
            "trainer.enable_progress_bar=false",
        ]
    )
    with pytest.raises(MicrofmError, match=match):
        train(cfg)
    assert not (tmp_path / "results" / "seg" / "bad" / "ckpts").exists()
    missing_root = compose(["backbone=vit_test", "data=folder", f"results_root={tmp_path}"])
    with pytest.raises(ConfigError, match="data.root is not set"):
        train(missing_root)
