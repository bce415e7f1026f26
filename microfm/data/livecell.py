"""``data=livecell``: LIVECell (Edlund et al. 2021) COCO annotations -> instance label maps.

The downloaded layout (``microfm-data fetch livecell``)::

    root/images/livecell_train_val_images/[<cell type>/]A172_Phase_A7_1_00d00h00m_1.tif
    root/images/livecell_test_images/...
    root/livecell_coco_{train,val,test}.json   (also found under annotations/[LIVECell/])

Each image's polygons are rasterised once with pycocotools into a uint16 instance map (larger
objects first, so a smaller overlapping cell stays visible), written as a TIFF beside the
preprocessing cache and reused by later runs. The cell type (file name prefix) is the domain.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from microfm.data.file_datamodule import FileDataModule
from microfm.data.records import Record, split_records
from microfm.errors import DataError

DEFAULT_ANNOTATIONS = {
    "train": "livecell_coco_train.json",
    "val": "livecell_coco_val.json",
    "test": "livecell_coco_test.json",
}
DEFAULT_IMAGES = {
    "train": "images/livecell_train_val_images",
    "val": "images/livecell_train_val_images",
    "test": "images/livecell_test_images",
}


def load_coco(path: Path):
    """A pycocotools ``COCO`` index of ``path`` (LIVECell stores ``annotations`` as a dict
    keyed by id in some releases; both forms are accepted)."""
    from pycocotools.coco import COCO

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read COCO annotations ({exc})") from None
    if isinstance(data.get("annotations"), dict):
        data["annotations"] = list(data["annotations"].values())
    if "images" not in data or "annotations" not in data:
        raise DataError(f"{path}: not a COCO instance file (needs 'images' and 'annotations')")
    data.setdefault("categories", [{"id": 1, "name": "cell"}])
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def coco_instances(coco, image_id: int) -> np.ndarray:
    """The instance label map (uint16, or uint32 beyond 65,535 objects) of one COCO image."""
    meta = coco.imgs[image_id]
    h, w = int(meta["height"]), int(meta["width"])
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
    anns = sorted(anns, key=lambda a: -float(a.get("area", 0.0)))
    out = np.zeros((h, w), dtype=np.uint32)
    with warnings.catch_warnings():  # pycocotools' numpy-2 __array__ deprecation
        warnings.simplefilter("ignore", DeprecationWarning)
        for i, ann in enumerate(anns, start=1):
            out[coco.annToMask(ann).astype(bool)] = i
    ids = np.unique(out[out > 0])
    lut = np.zeros(len(anns) + 1, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1)
    out = lut[out]
    return out.astype(np.uint16) if ids.size < 65536 else out


class LiveCellDataModule(FileDataModule):
    """LIVECell phase-contrast cell segmentation with its official train/val/test splits.

    Args:
        root: the LIVECell folder.
        annotations: COCO JSON per split (relative to ``root``; searched in ``annotations/``
            and ``annotations/LIVECell/`` too).
        images: image folder per split (relative to ``root``).
        cell_types: keep only these cell types (e.g. ``[A172, SHSY5Y]``); None keeps all.
        instances_dir: where converted label maps go (default ``<cache_dir>/livecell``).
        **kwargs: see :class:`FileDataModule`.

    Example:
        >>> dm = LiveCellDataModule("/data/LIVECell", targets=["dist"], crop_size=256)
        >>> dm.setup()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        annotations: Mapping[str, str] | None = None,
        images: Mapping[str, str] | None = None,
        cell_types: Sequence[str] | None = None,
        instances_dir: str | None = None,
        **kwargs,
    ) -> None:
        cache_root = kwargs.get("cache_dir")
        super().__init__(root, **kwargs)
        self.annotations = dict(annotations or DEFAULT_ANNOTATIONS)
        self.images = dict(images or DEFAULT_IMAGES)
        self.cell_types = list(cell_types) if cell_types else None
        base = instances_dir or (Path(cache_root) / "livecell" if cache_root else None)
        self.instances_dir = Path(base).expanduser() if base else self.root / "microfm_instances"

    def _annotation_file(self, split: str) -> Path | None:
        name = self.annotations.get(split)
        if not name:
            return None
        for folder in (self.root, self.root / "annotations", self.root / "annotations/LIVECell"):
            if (folder / name).is_file():
                return folder / name
        raise DataError(f"LIVECell annotations for {split} not found: {self.root / name}")

    def _image_path(self, folder: Path, file_name: str) -> Path:
        for candidate in (folder / file_name, folder / file_name.split("_")[0] / file_name):
            if candidate.is_file():
                return candidate
        raise DataError(f"image of a LIVECell annotation not found: {folder / file_name}")

    def _split_records(self, split: str, ann_file: Path) -> list[Record]:
        import tifffile

        digest = hashlib.sha1(str(ann_file.resolve()).encode())
        digest.update(str(os.stat(ann_file).st_mtime_ns).encode())
        out_dir = self.instances_dir / f"{ann_file.stem}-{digest.hexdigest()[:10]}"
        coco = load_coco(ann_file)
        folder = self.root / self.images[split]
        records = []
        for image_id in sorted(coco.imgs):
            file_name = coco.imgs[image_id]["file_name"]
            cell_type = file_name.split("_")[0]
            if self.cell_types is not None and cell_type not in self.cell_types:
                continue
            image = self._image_path(folder, file_name)
            labels = out_dir / f"{Path(file_name).stem}.tif"
            if not labels.is_file():
                labels.parent.mkdir(parents=True, exist_ok=True)
                tmp = labels.with_name(f".{labels.name}.{os.getpid()}.tmp")
                tifffile.imwrite(tmp, coco_instances(coco, image_id), compression="zlib")
                os.replace(tmp, labels)
            records.append((cell_type, Record(image, Path(file_name).stem, instances=labels)))
        return records

    def discover(self) -> dict[str, list[Record]]:
        found = {}
        for split in ("train", "val", "test"):
            ann = self._annotation_file(split)
            if ann is not None:
                found[split] = self._split_records(split, ann)
        self.domain_names = sorted({t for v in found.values() for t, _ in v})
        out = {}
        for split, items in found.items():
            out[split] = [
                Record(r.image, r.name, instances=r.instances, domain=self.domain_names.index(t))
                for t, r in items
            ]
        if not out.get("train"):
            raise DataError(f"no LIVECell training images found under {self.root}")
        split = {**self.split, **{s: None for s in out if s != "train"}}
        return split_records([], split, self.root, out)
