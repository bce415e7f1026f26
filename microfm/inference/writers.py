"""Writing predictions: label/float TIFFs, overlay PNGs and per-cell tables, all atomically."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from microfm.utils.figures import display_range
from microfm.utils.io import atomic_write_bytes, atomic_write_text

# float results written even without save_raw (they are the task's answer, not an internal map)
PRIMARY_FLOAT = ("depth",)


def label_dtype(max_label: int) -> np.dtype:
    """uint16 when the ids fit, else uint32."""
    if max_label < 0 or max_label > np.iinfo(np.uint32).max:
        raise ValueError(f"label ids must lie in [0, 2**32), got max {max_label}")
    return np.dtype(np.uint16 if max_label < 65536 else np.uint32)


def as_labels(labels: np.ndarray) -> np.ndarray:
    """Integer labels as uint16 (or uint32 when there are more than 65,535 ids)."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    return labels.astype(label_dtype(top), copy=False)


def write_tiff(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a TIFF atomically (zlib-compressed); integer results as uint16/uint32 labels,
    float maps as float32."""
    import tifffile

    array = np.asarray(array)
    if array.dtype.kind in "iub":
        array = as_labels(array)
    else:
        array = array.astype(np.float32, copy=False)
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, compression="zlib")
    atomic_write_bytes(path, buf.getvalue())


def _colours(n: int, seed: int = 0) -> np.ndarray:
    """(n + 1, 3) bright colours, index 0 unused."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.35, 1.0, size=(n + 1, 3))
    c[np.arange(n + 1), rng.integers(0, 3, n + 1)] = 1.0
    return c.astype(np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, kind: str = "instances") -> np.ndarray:
    """RGB uint8 overlay for display: the image (first channel, or the first three as RGB,
    contrast-stretched) with instance outlines in random colours (``kind="instances"``) or the
    classes tinted (``kind="classes"``, class 0 untouched)."""
    from skimage.segmentation import find_boundaries

    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[None]
    if image.shape[0] >= 3:
        rgb = np.stack([display_range(image[c]) for c in range(3)], axis=-1)
    else:
        rgb = np.repeat(display_range(image[0])[..., None], 3, axis=-1)
    labels = np.asarray(labels)
    if labels.size and labels.max() > 0:
        colours = _colours(int(labels.max()))
        if kind == "instances":
            edge = find_boundaries(labels, mode="inner") & (labels > 0)
            rgb[edge] = colours[labels[edge]]
        else:
            fg = labels > 0
            rgb[fg] = 0.55 * rgb[fg] + 0.45 * colours[labels[fg]]
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def cell_table(
    labels: np.ndarray, image: np.ndarray, offset: tuple[int, int] = (0, 0)
) -> dict[str, np.ndarray]:
    """One row per object of an instance label image: ``label``, ``area`` (pixels),
    ``centroid_y``/``centroid_x`` (pixels, + ``offset``) and ``mean_intensity_c<k>`` for every
    channel of ``image`` (C, H, W) in its own units (raw intensities, not normalised).

    Example:
        >>> lab = np.zeros((4, 4), np.int32); lab[:2, :2] = 1
        >>> t = cell_table(lab, np.arange(16, dtype=np.uint16).reshape(1, 4, 4))
        >>> t["area"].tolist(), t["mean_intensity_c0"].tolist()
        ([4], [2.5])
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.shape[-2:] != labels.shape:
        raise ValueError(f"labels {labels.shape} and image {image.shape} differ in size")
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n)
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    rows, cols = np.indices(labels.shape)
    table: dict[str, np.ndarray] = {"label": ids, "area": area[ids]}
    a = area[ids].astype(np.float64)
    table["centroid_y"] = np.bincount(flat, rows.ravel(), minlength=n)[ids] / a + offset[0]
    table["centroid_x"] = np.bincount(flat, cols.ravel(), minlength=n)[ids] / a + offset[1]
    for c in range(image.shape[0]):
        s = np.bincount(flat, image[c].ravel().astype(np.float64), minlength=n)
        table[f"mean_intensity_c{c}"] = s[ids] / a
    return table


def concat_tables(tables: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not tables:
        return {}
    return {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}


def write_csv(
    path: str | os.PathLike, columns: Mapping[str, Sequence], header: Sequence[str] | None = None
) -> None:
    """A CSV of equal-length columns, atomically (floats with 10 significant digits)."""
    names = list(header or columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    cols = [np.asarray(columns[k]) if k in columns else None for k in names]
    n = max((len(c) for c in cols if c is not None), default=0)
    for i in range(n):
        writer.writerow([_fmt(c[i]) if c is not None else "" for c in cols])
    atomic_write_text(path, buf.getvalue())


def write_rows(path: str | os.PathLike, rows: Sequence[Mapping[str, object]]) -> None:
    """A CSV of dict rows (union of their keys, in first-seen order), atomically."""
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    write_csv(path, {k: [r.get(k, "") for r in rows] for k in header}, header)


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.10g}"
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def result_path(output: Path, stem: str, task: str, name: str, suffix: str) -> Path:
    """``<output>/<stem>_<task>_<name><suffix>``."""
    return Path(output) / f"{stem}_{task}_{name}{suffix}"
