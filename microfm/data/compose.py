"""Build the composed EM mitochondria dataset (``data=em_composed``) from Lucchi++ and
Drosophila VNC downloads.

Output layout::

    out/train/images/lucchi_0000.tif   out/train/masks/lucchi_0000.tif   (0/1 uint8)
    out/test/images/vnc_0015.tif       out/test/masks/vnc_0015.tif
    out/mapping.csv                    filename,split,source,original

Lucchi++ keeps its train/test volumes; the VNC stack 1 (the labelled one) is split by slice
position, the last ``vnc_test_fraction`` of slices going to test, so that neighbouring
(nearly identical) slices do not end up on both sides.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

import numpy as np

from microfm.data.io import image_stem, read_image
from microfm.data.records import list_images
from microfm.errors import DataError

_NUMBER = re.compile(r"(\d+)")


def _by_number(paths: list[Path]) -> list[Path]:
    def key(p: Path):
        nums = _NUMBER.findall(p.stem)
        return (int(nums[-1]) if nums else -1, p.name)

    return sorted(paths, key=key)


def binary_mask(path: Path) -> np.ndarray:
    """A 0/1 uint8 mask from a grey (0/255 or 0/1) or RGB(A) white-on-black mask file."""
    arr = read_image(path)
    fg = arr[:3].min(axis=0) if arr.shape[0] >= 3 else arr[0]
    values = np.unique(fg)
    if values.size > 2:
        raise DataError(f"{path}: expected a binary mask, found {values.size} distinct values")
    return (fg > 0).astype(np.uint8)


def _pairs_by_order(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    imgs, msks = _by_number(list_images(images)), _by_number(list_images(masks))
    if not imgs:
        raise DataError(f"no images in {images}")
    if len(imgs) != len(msks):
        raise DataError(f"{images} has {len(imgs)} images but {masks} has {len(msks)} masks")
    return list(zip(imgs, msks))


def _pairs_by_stem(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    imgs = {image_stem(p): p for p in list_images(images)}
    msks = {image_stem(p): p for p in list_images(masks)}
    if not imgs:
        raise DataError(f"no images in {images}")
    missing = sorted(set(imgs) ^ set(msks))
    if missing:
        raise DataError(f"{images} and {masks} do not match: {missing[:5]}")
    return [(p, msks[image_stem(p)]) for p in _by_number(list(imgs.values()))]


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, compression="zlib")
    path.write_bytes(buf.getvalue())


def compose_em(
    out: str | Path,
    lucchi: str | Path | None = None,
    vnc: str | Path | None = None,
    vnc_test_fraction: float = 0.25,
) -> dict[str, dict[str, int]]:
    """Write the composed dataset; returns ``{split: {source: number of images}}``.

    Args:
        out: output folder (created; must not already hold a composed dataset).
        lucchi: the ``Lucchi++`` folder (``Train_In``, ``Train_Out``, ``Test_In``,
            ``Test_Out``).
        vnc: the ``groundtruth-drosophila-vnc`` folder (``stack1/raw``,
            ``stack1/mitochondria``).
        vnc_test_fraction: share of the VNC slices (the last ones) used for testing.
    """
    out = Path(out).expanduser()
    if (out / "mapping.csv").exists():
        raise DataError(f"{out} already holds a composed dataset (mapping.csv); remove it first")
    if lucchi is None and vnc is None:
        raise DataError("give at least one source: --lucchi and/or --vnc")
    jobs: list[tuple[str, str, Path, Path]] = []  # split, source, image, mask
    if lucchi is not None:
        lucchi = Path(lucchi).expanduser()
        for split, folder in (("train", "Train"), ("test", "Test")):
            for img, msk in _pairs_by_order(lucchi / f"{folder}_In", lucchi / f"{folder}_Out"):
                jobs.append((split, "lucchi", img, msk))
    if vnc is not None:
        vnc = Path(vnc).expanduser()
        pairs = _pairs_by_stem(vnc / "stack1" / "raw", vnc / "stack1" / "mitochondria")
        n_test = math.ceil(vnc_test_fraction * len(pairs)) if vnc_test_fraction > 0 else 0
        for i, (img, msk) in enumerate(pairs):
            jobs.append(("test" if i >= len(pairs) - n_test else "train", "vnc", img, msk))
    rows, counts = [], {}
    index: dict[str, int] = {}
    for split, source, img, msk in jobs:
        image = read_image(img)
        mask = binary_mask(msk)
        if image.shape[-2:] != mask.shape:
            raise DataError(f"{msk}: mask shape {mask.shape} differs from {img} {image.shape}")
        i = index[source] = index.get(source, -1) + 1
        name = f"{source}_{i:04d}.tif"
        _write_tiff(out / split / "images" / name, image[0] if image.shape[0] == 1 else image)
        _write_tiff(out / split / "masks" / name, mask)
        rows.append({"filename": name, "split": split, "source": source, "original": str(img)})
        counts.setdefault(split, {}).setdefault(source, 0)
        counts[split][source] += 1
    with open(out / "mapping.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["filename", "split", "source", "original"])
        writer.writeheader()
        writer.writerows(rows)
    return counts
