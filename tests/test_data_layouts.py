"""Dataset layouts: cellpose, LIVECell (COCO), Cell Tracking Challenge, em_composed (+ the
compose command), classification (folders, CSV, class names by interpolation), unlabeled."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from microfm.data import (
    ClassificationDataModule,
    CTCDataModule,
    FolderDataModule,
    LiveCellDataModule,
    UnlabeledDataModule,
)
from microfm.run.config import compose

COMMON = dict(num_workers=0, batch_size=1)


def test_cellpose_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            img = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(img).save(tmp_path / split / f"{i:03d}_img.png")
            lab = np.zeros((24, 24), np.uint16)
            lab[2:8, 2:8] = 1
            lab[10:20, 10:20] = 2
            Image.fromarray(lab).save(tmp_path / split / f"{i:03d}_masks.png")
            (tmp_path / split / f"{i:03d}_flows.tif").write_bytes(b"ignored")
    cfg = compose(
        [
            "data=cellpose",
            f"data.root={tmp_path}",
            "data.in_chans=3",
            "data.crop_size=16",
            f"data.cache_dir={tmp_path / 'c'}",
        ]
    )
    dm = instantiate(
        cfg.data,
        _convert_="all",
        batch_size=1,
        num_workers=0,
        targets=["dist"],
        split={"val": 0.34},
    )
    dm.setup()
    assert {s: len(v) for s, v in dm.records.items()} == {"train": 2, "val": 1, "test": 2}
    item = dm.datasets["test"][0]
    assert item["image"].shape == (3, 32, 32)  # 24 padded to the patch size (16)
    assert set(np.unique(item["instances"])) == {0, 1, 2}


def _coco(tmp_path):
    """Two LIVECell-like images with polygons (one overlap) and their expected labels."""
    images, anns, expected = [], [], {}
    for k, name in enumerate(["A172_Phase_A7_1_00d00h00m_1.tif", "SHSY5Y_Phase_B1_1.tif"]):
        images.append({"id": k + 1, "file_name": name, "height": 40, "width": 50})
        cell_type = name.split("_")[0]
        folder = tmp_path / "images" / "livecell_train_val_images" / cell_type
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / name, np.full((40, 50), 100 + k, np.uint8))
    # image 1: a big square and a small square overlapping it
    big = [5, 5, 30, 5, 30, 30, 5, 30]
    small = [20, 20, 35, 20, 35, 35, 20, 35]
    anns.append(
        {
            "id": 1,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [big],
            "area": 625.0,
            "bbox": [5, 5, 25, 25],
            "iscrowd": 0,
        }
    )
    anns.append(
        {
            "id": 2,
            "image_id": 1,
            "category_id": 1,
            "segmentation": [small],
            "area": 225.0,
            "bbox": [20, 20, 15, 15],
            "iscrowd": 0,
        }
    )
    anns.append(
        {
            "id": 3,
            "image_id": 2,
            "category_id": 1,
            "segmentation": [big],
            "area": 625.0,
            "bbox": [5, 5, 25, 25],
            "iscrowd": 0,
        }
    )
    from pycocotools import mask as mask_utils

    def raster(poly):
        import warnings

        with warnings.catch_warnings():  # pycocotools' numpy-2 __array__ deprecation
            warnings.simplefilter("ignore", DeprecationWarning)
            rle = mask_utils.frPyObjects([poly], 40, 50)
            return mask_utils.decode(mask_utils.merge(rle)).astype(bool)

    exp1 = np.zeros((40, 50), int)
    exp1[raster(big)] = 1
    exp1[raster(small)] = 2  # the smaller object stays on top
    exp2 = raster(big).astype(int)
    expected = {"A172_Phase_A7_1_00d00h00m_1": exp1, "SHSY5Y_Phase_B1_1": exp2}
    data = {
        "images": images,
        "annotations": {str(a["id"]): a for a in anns},  # dict form
        "categories": [{"id": 1, "name": "cell"}],
    }
    return data, expected


def test_livecell_coco_to_instances(tmp_path):
    data, expected = _coco(tmp_path)
    (tmp_path / "annotations" / "LIVECell").mkdir(parents=True)
    (tmp_path / "annotations" / "LIVECell" / "livecell_coco_train.json").write_text(
        json.dumps(data)
    )
    dm = LiveCellDataModule(
        str(tmp_path),
        annotations={"train": "livecell_coco_train.json"},
        cache_dir=str(tmp_path / "c"),
        crop_size=None,
        targets=["dist"],
        split={"val": 0.0, "test": 0.0},
        **COMMON,
    )
    dm.setup()
    assert dm.domain_names == ["A172", "SHSY5Y"]
    ds = dm.datasets["train"]
    for i, r in enumerate(ds.records):
        inst = ds[i]["instances"].numpy()[:40, :50]
        assert np.array_equal(inst, expected[r.name])
        assert int(ds[i]["domain"]) == dm.domain_names.index(r.name.split("_")[0])


def test_ctc_2d_and_3d_slices(tmp_path):
    (tmp_path / "01").mkdir()
    (tmp_path / "01_GT" / "SEG").mkdir(parents=True)
    for t in range(3):
        tifffile.imwrite(tmp_path / "01" / f"t{t:03d}.tif", np.full((20, 20), t, np.uint16))
    for t in (0, 2):
        lab = np.zeros((20, 20), np.uint16)
        lab[5:10, 5:10] = t + 1
        tifffile.imwrite(tmp_path / "01_GT" / "SEG" / f"man_seg{t:03d}.tif", lab)
    dm = CTCDataModule(
        str(tmp_path),
        cache_dir=str(tmp_path / "c"),
        crop_size=None,
        split={"val": 0.0, "test": 0.0},
        targets=["dist"],
        **COMMON,
    )
    dm.setup()
    assert [r.name for r in dm.records["train"]] == ["01/t000", "01/t002"]
    assert int(dm.datasets["train"][1]["instances"].max()) == 3
    # a 3-D sequence annotated slice by slice
    three = tmp_path / "3d"
    (three / "01").mkdir(parents=True)
    (three / "01_GT" / "SEG").mkdir(parents=True)
    vol = np.stack([np.full((16, 16), z * 10, np.uint16) for z in range(4)])
    with tifffile.TiffWriter(three / "01" / "t005.tif") as w:  # plain pages, no axes
        for plane in vol:
            w.write(plane, metadata=None)
    lab = np.zeros((16, 16), np.uint16)
    lab[2:6, 2:6] = 1
    tifffile.imwrite(three / "01_GT" / "SEG" / "man_seg_005_002.tif", lab)
    dm = CTCDataModule(
        str(three),
        cache_dir=str(tmp_path / "c"),
        crop_size=None,
        split={"val": 0.0, "test": 0.0},
        targets=["dist"],
        **COMMON,
        normalize={"mode": "none"},
    )
    dm.setup()
    item = dm.datasets["train"][0]
    assert dm.records["train"][0].name == "01/t005@2"
    assert float(item["image"][0, 0, 0]) == 20.0  # plane 2 of the stack


def _fake_lucchi(root):
    rng = np.random.default_rng(0)
    for split in ("Train", "Test"):
        (root / f"{split}_In").mkdir(parents=True)
        (root / f"{split}_Out").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(
                root / f"{split}_In" / f"mask{i:04d}.png"
            )
            rgba = np.zeros((40, 48, 4), np.uint8)
            rgba[..., 3] = 255
            rgba[10:20, 10:30, :] = 255  # white = mitochondrion
            Image.fromarray(rgba).save(root / f"{split}_Out" / f"{i}.png")


def test_compose_em_then_em_composed(tmp_path, shared):
    from microfm.cli.data import main

    _fake_lucchi(tmp_path / "Lucchi++")
    out = tmp_path / "em"
    main(
        [
            "compose",
            "--lucchi",
            str(tmp_path / "Lucchi++"),
            "--vnc",
            str(shared / "data" / "drosophila_vnc_em"),
            "--out",
            str(out),
        ]
    )
    rows = (out / "mapping.csv").read_text().splitlines()
    assert rows[0] == "filename,split,source,original" and len(rows) == 1 + 6 + 20
    mask = tifffile.imread(out / "train" / "masks" / "lucchi_0000.tif")
    assert set(np.unique(mask)) == {0, 1} and mask[15, 20] == 1
    cfg = compose(
        [
            "data=em_composed",
            f"data.root={out}",
            "data.crop_size=64",
            f"data.cache_dir={tmp_path / 'c'}",
            "data.domain_balanced=true",
        ]
    )
    dm = instantiate(cfg.data, _convert_="all", targets=[], **COMMON)
    dm.setup()
    assert dm.domain_names == ["lucchi", "vnc"]
    assert len(dm.records["test"]) == 3 + 5  # Lucchi++ test volume + last quarter of VNC
    assert sum(len(v) for v in dm.records.values()) == 26
    item = dm.datasets["train"][0]
    assert item["semantic"].dtype == torch.int64 and set(item["semantic"].unique().tolist()) <= {
        0,
        1,
    }
    assert "domain" in item
    with pytest.raises(SystemExit):  # refuses to overwrite
        main(["compose", "--vnc", str(shared / "data" / "drosophila_vnc_em"), "--out", str(out)])


def _class_folders(root, counts=(5, 3)):
    rng = np.random.default_rng(0)
    for name, n in zip(("mitotic", "interphase"), counts):
        (root / name).mkdir(parents=True)
        for i in range(n):
            tifffile.imwrite(
                root / name / f"{i}.tif",
                rng.integers(0, 4000, (2, 10 + i, 12), dtype=np.uint16),
                imagej=True,
                metadata={"axes": "CYX"},
            )


def test_classification_folders_and_interpolated_class_names(tmp_path):
    _class_folders(tmp_path / "cls")
    cfg = compose(
        [
            "data=classification",
            f"data.root={tmp_path / 'cls'}",
            "data.in_chans=2",
            "data.image_size=16",
            f"data.cache_dir={tmp_path / 'c'}",
        ]
    )
    assert list(cfg.data.class_names) == ["interphase", "mitotic"]
    assert cfg.data.num_classes == 2
    # a head config can take ${data.num_classes}
    head = OmegaConf.create({"num_classes": "${data.num_classes}"})
    merged = OmegaConf.merge({"data": cfg.data}, {"head": head})
    assert merged.head.num_classes == 2
    dm = instantiate(
        cfg.data,
        _convert_="all",
        batch_size=2,
        num_workers=0,
        targets=[],
        split={"val": 0.25, "test": 0.0},
    )
    dm.setup()
    assert dm.num_classes == 2 and dm.class_names == ["interphase", "mitotic"]
    val_labels = sorted(r.label for r in dm.records["val"])
    assert val_labels == [0, 1]  # stratified: one of each class
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 2, 16, 16) and batch["label"].dtype == torch.int64


def test_classification_csv_with_splits_and_domains(tmp_path):
    _class_folders(tmp_path / "cls")
    lines = ["path,label,split,domain"]
    for name in ("mitotic", "interphase"):
        for i, p in enumerate(sorted((tmp_path / "cls" / name).iterdir())):
            split = "test" if i == 0 else ""
            lines.append(f"{name}/{p.name},{name},{split},{'siteA' if i % 2 else 'siteB'}")
    (tmp_path / "cls" / "labels.csv").write_text("\n".join(lines) + "\n")
    dm = ClassificationDataModule(
        str(tmp_path / "cls"),
        csv="labels.csv",
        in_chans=2,
        image_size=16,
        cache_dir=str(tmp_path / "c"),
        targets=[],
        split={"val": 0.0, "test": 0.0},
        **COMMON,
    )
    dm.setup()
    assert len(dm.records["test"]) == 2 and len(dm.records["train"]) == 6
    assert dm.domain_names == ["siteA", "siteB"]
    item = dm.datasets["test"][0]
    assert set(item) >= {"image", "label", "domain", "index"}
    with pytest.raises(Exception, match="num_classes=3"):
        ClassificationDataModule(str(tmp_path / "cls"), num_classes=3, in_chans=2, **COMMON).setup()


def test_classification_on_mlcp(tmp_path, shared):
    root = shared / "data" / "mlcp_cellcycle"
    files = [p for c in sorted(root.iterdir()) if c.is_dir() for p in sorted(c.iterdir())[:4]]
    csv = tmp_path / "subset.csv"
    csv.write_text(
        "path,label\n" + "".join(f"{p.parent.name}/{p.name},{p.parent.name}\n" for p in files)
    )
    dm = ClassificationDataModule(
        str(root),
        csv=str(csv),
        in_chans=3,
        image_size=48,
        cache_dir=str(tmp_path / "c"),
        targets=[],
        split={"val": 0.0, "test": 0.25},
        batch_size=4,
        num_workers=0,
    )
    dm.setup()
    assert dm.num_classes == 7 and len(dm.records["test"]) == 7  # one per class
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48) and torch.isfinite(batch["image"]).all()


def test_unlabeled_folders_globs_tars_and_transform(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "sub").mkdir(parents=True)
    for i in range(3):
        tifffile.imwrite(
            tmp_path / "a" / "sub" / f"{i}.tif", rng.integers(0, 60000, (40, 40), dtype=np.uint16)
        )
    tifffile.imwrite(
        tmp_path / "a" / "stack.tif",
        rng.integers(0, 255, (4, 40, 40), dtype=np.uint8),
        imagej=True,
        metadata={"axes": "ZYX"},
    )
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        for i in range(2):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(buf, "PNG")
            info = tarfile.TarInfo(f"imgs/{i}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    seen = []

    def two_views(image, seed):
        seen.append(seed)
        return [torch.from_numpy(image), torch.from_numpy(image[:, :8, :8].copy())]

    dm = UnlabeledDataModule(
        [str(tmp_path / "a"), str(tmp_path / "b.tar"), str(tmp_path / "a" / "sub" / "*.tif")],
        transform=two_views,
        crop_size=32,
        cache_dir=str(tmp_path / "c"),
        split={"val": 0.0, "test": 0.0},
        batch_size=2,
        num_workers=0,
    )
    dm.setup()
    assert len(dm.records["train"]) == 3 + 4 + 2 + 3  # folder, stack planes, tar, glob
    batch = next(iter(dm.train_dataloader()))
    views = batch["image"]
    assert views[0].shape == (2, 1, 32, 32) and views[1].shape == (2, 1, 8, 8)
    assert len(set(seen)) == 2  # per-sample seeds from (seed, epoch, index)
    with pytest.raises(Exception, match="matches no image"):
        UnlabeledDataModule(str(tmp_path / "*.nothing"), **COMMON).setup()


def test_folder_domain_csv_must_cover_every_file(tmp_path):
    from tests.test_data_folder import make_folder

    root = make_folder(tmp_path / "d", n=3, size=32)
    (root / "dom.csv").write_text("filename,domain\nimg00.tif,x\n")
    dm = FolderDataModule(str(root), domains="dom.csv", targets=[], **COMMON)
    with pytest.raises(Exception, match=r"img01\.tif: no row in the domain table"):
        dm.setup()
