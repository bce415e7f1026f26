"""``data=folder`` (and ``cellpose``, ``em_composed``): images with dense targets matched by
file stem.

Layout (folder names are options)::

    root/images/a.tif        root/labels/a.tif   (instance labels, 0 = background)
    root/images/b.tif        root/masks/b.png    (semantic classes; 0/255 masks -> 0/1)
                             root/depth/b.tif    (float depth/height maps)

or the same under ``root/train``, ``root/val``, ``root/test`` to fix the splits. Target
folders that exist must hold one file per image (and no file without an image). A TIFF or zarr
stack (Z/T axes) contributes one sample per plane, its targets being stacks of the same depth.
Files of ``images/`` and targets may also share one folder and differ by suffix (Cellpose:
``001_img.png`` / ``001_masks.png``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from microfm.data.file_datamodule import FileDataModule
from microfm.data.io import count_planes, image_stem
from microfm.data.records import (
    SPLITS,
    Record,
    by_stem,
    list_images,
    match_targets,
    read_table,
    split_records,
    with_domains,
)
from microfm.errors import DataError

DOMAIN_COLUMNS = ("domain", "source", "dataset")
FILE_COLUMNS = ("filename", "file", "name", "image", "path")


def read_domain_table(path: Path) -> dict[str, str]:
    """``{file name: domain}`` from a CSV with a file column and a domain column."""
    rows = read_table(path)
    header = list(rows[0])
    file_col = next((c for c in FILE_COLUMNS if c in header), None)
    dom_col = next((c for c in DOMAIN_COLUMNS if c in header), None)
    if file_col is None or dom_col is None:
        raise DataError(
            f"{path}: needs a file column ({'/'.join(FILE_COLUMNS)}) and a domain column "
            f"({'/'.join(DOMAIN_COLUMNS)}); found {header}"
        )
    table = {}
    for row in rows:
        name = Path(row[file_col]).name
        table[name] = row[dom_col]
        table.setdefault(image_stem(name), row[dom_col])
    return table


class FolderDataModule(FileDataModule):
    """Images and dense targets in folders, matched by stem (see the module docstring).

    Args:
        root: the dataset folder.
        images: sub-folder of the images.
        labels, masks, depth: sub-folders of instance labels, semantic masks and depth maps
            (None: not used; a missing folder is skipped).
        image_suffix, label_suffix, mask_suffix, depth_suffix: stem endings that distinguish
            files sharing a folder (e.g. ``_img`` / ``_masks``).
        domains: CSV (relative to ``root``) of file name and domain (source dataset) per image.
        recursive: look into sub-folders of the image folder.
        **kwargs: see :class:`FileDataModule`.

    Example:
        >>> dm = FolderDataModule("/data/bbbc039", crop_size=256, targets=["dist"])
        >>> dm.setup()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        images: str = "images",
        labels: str | None = "labels",
        masks: str | None = "masks",
        depth: str | None = "depth",
        image_suffix: str = "",
        label_suffix: str = "",
        mask_suffix: str = "",
        depth_suffix: str = "",
        domains: str | None = None,
        recursive: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root, **kwargs)
        self.folders = {"instances": labels, "semantic": masks, "depth": depth}
        self.suffixes = {"instances": label_suffix, "semantic": mask_suffix, "depth": depth_suffix}
        self.images = images
        self.image_suffix = image_suffix
        self.domains_file = domains
        self.recursive = bool(recursive)

    def _records(self, base: Path) -> list[Record]:
        img_dir = base / self.images
        paths = list_images(img_dir, self.recursive, self.image_suffix)
        if not paths:
            raise DataError(
                f"no images in {img_dir} (looked for *{self.image_suffix}"
                ".tif/.tiff/.png/.jpg/.jpeg/.zarr)"
            )
        root = img_dir if self.recursive else None
        images = by_stem(paths, self.image_suffix, root)
        targets: dict[str, dict[str, Path]] = {}
        for key, folder in self.folders.items():
            if folder is None or not (base / folder).is_dir():
                continue
            d = base / folder
            suffix = self.suffixes[key]
            files = list_images(d, self.recursive, suffix)
            if d == img_dir:  # shared folder: the images are not targets
                files = [f for f in files if f not in set(paths)]
            found = by_stem(files, suffix, d if self.recursive else None)
            match_targets(images, found, key, d)
            targets[key] = found
        records = []
        for stem, path in images.items():
            files = {key: found[stem] for key, found in targets.items()}
            n = count_planes(path, self.axes)
            for key, f in files.items():
                m = count_planes(f, label=True)
                if m != n:
                    raise DataError(
                        f"{f}: {key} file holds {m} plane(s) but its image {path} holds {n}"
                    )
            planes = range(n) if n > 1 else [None]
            for plane in planes:
                name = stem if plane is None else f"{stem}@{plane}"
                records.append(Record(path, name, plane=plane, target_plane=plane, **files))
        return records

    def discover(self) -> dict[str, list[Record]]:
        split_dirs = {s: self.root / s for s in SPLITS if (self.root / s / self.images).is_dir()}
        if split_dirs:
            if "train" not in split_dirs:
                raise DataError(f"{self.root}: split folders {sorted(split_dirs)} but no train/")
            preset = {s: self._records(d) for s, d in split_dirs.items()}
            records = [r for v in preset.values() for r in v]
        else:
            preset, records = None, self._records(self.root)
        if self.domains_file:
            table = read_domain_table(self.root / self.domains_file)
            names: list[str] = []
            records = with_domains(records, table, names)
            self.domain_names = names
            if preset is not None:
                by_key = {(r.image, r.plane): r for r in records}
                preset = {s: [by_key[(r.image, r.plane)] for r in v] for s, v in preset.items()}
        return split_records(records, self._split_for(preset), self.root, preset)

    def _split_for(self, preset: Mapping | None) -> dict:
        split = dict(self.split)
        if preset is not None:  # folders fixed the splits that exist
            for s in preset:
                if s != "train":
                    split[s] = None
        return split
