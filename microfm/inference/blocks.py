"""Prediction of images larger than memory, block by block (zarr / OME-Zarr in and out).

Pass 1 runs the sliding window block by block over the *global* tile grid of the image: each
block reads its core plus the tiles that reach into it (reflect padding only at the image
borders), so every pixel is blended from exactly the tiles and weights of a whole-image run.
Normalisation statistics come from an even subsample of the whole image (or the training set's
statistics). The blended raw outputs go to a temporary zarr.

Pass 2 post-processes block by block. Pixel-wise results (semantic classes, depth) need no
context. Instance labels (watershed) are computed on the block plus a ``halo``; an object is
kept by the one block whose core holds its first pixel in raster order, so objects crossing
block borders are neither split nor duplicated (as long as they are smaller than the halo), and
get globally unique ids.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from microfm.data.io import image_info, read_image
from microfm.errors import ConfigError, DataError
from microfm.inference.predictor import Predictor
from microfm.inference.tiling import Accumulator, reflect_pad
from microfm.inference.writers import cell_table, concat_tables, overlay, write_csv, write_png

log = logging.getLogger(__name__)
# whole-image statistics of a zarr image are estimated from at most this many pixels
STATS_PIXELS = 4_000_000
OVERLAY_SIDE = 2048


def _blocks(length: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, length)) for s in range(0, length, size)]


class ZarrImage:
    """A (C, H, W) image in a zarr store read region by region, reflect-padded outside."""

    def __init__(self, path: str | os.PathLike, axes: str | None, predictor: Predictor) -> None:
        self.path, self.axes, self.predictor = Path(path), axes, predictor
        (_, self.H, self.W), _, planes = image_info(path, axes)
        if planes > 1:
            raise DataError(f"{path}: holds {planes} planes; block prediction takes one image")
        norm = predictor.model.normalizer
        if norm.clahe:
            raise ConfigError(
                "the model normalises with CLAHE, which needs the whole image at once; "
                "block-wise (zarr) prediction cannot reproduce it"
            )
        step = max(1, math.ceil(math.sqrt(self.H * self.W / STATS_PIXELS)))
        sample = self.read(slice(None, None, step), slice(None, None, step))
        self.offset, self.scale = norm.stats(sample)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """Raw channel-selected pixels of a region inside the image."""
        image = read_image(self.path, axes=self.axes, region=(rows, cols))
        return self.predictor.select_channels(image, str(self.path))

    def normalized(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Normalised pixels of rows y0:y1, cols x0:x1 (may reach outside: reflected)."""
        r0, r1, c0, c1 = max(y0, 0), min(y1, self.H), max(x0, 0), min(x1, self.W)
        raw = self.read(slice(r0, r1), slice(c0, c1))
        x = self.predictor.model.normalizer.apply(raw, self.offset, self.scale)
        return reflect_pad(x, (r0 - y0, y1 - r1, c0 - x0, x1 - c1))


def _blend_pass(image: ZarrImage, predictor: Predictor, raw_root, block: int) -> dict:
    """Pass 1: blended raw outputs of every task into ``raw_root`` (a zarr group)."""
    import zarr

    plan = predictor.window.plan(image.H, image.W)
    top, _, left, _ = plan.pad
    th, tw = plan.tile
    arrays: dict[str, zarr.Array] = {}
    model = predictor.tile_model()
    for r0, r1 in _blocks(image.H, block):
        ys = [y for y in plan.ys if y < r1 + top and y + th > r0 + top]
        for c0, c1 in _blocks(image.W, block):
            xs = [x for x in plan.xs if x < c1 + left and x + tw > c0 + left]
            sy, sx = min(ys), min(xs)
            span = (max(ys) + th - sy, max(xs) + tw - sx)
            canvas = image.normalized(sy - top, sy - top + span[0], sx - left, sx - left + span[1])
            canvas = torch.from_numpy(np.ascontiguousarray(canvas)).to(predictor.device)
            acc = Accumulator(span, plan.tile, device=predictor.device)
            acc.run(model, canvas, ys, xs, predictor.window.batch_size, offset=(sy, sx))
            core = (slice(r0 + top - sy, r1 + top - sy), slice(c0 + left - sx, c1 + left - sx))
            for name, value in acc.result(core).items():
                if value.ndim != 3:
                    raise ConfigError(f"task {name} has a global output: no block prediction")
                if name not in arrays:
                    arrays[name] = raw_root.create_array(
                        name,
                        shape=(value.shape[0], image.H, image.W),
                        chunks=(value.shape[0], min(block, image.H), min(block, image.W)),
                        dtype="float32",
                    )
                arrays[name][:, r0:r1, c0:c1] = value.cpu().numpy()
    return arrays


def _create(group, name: str, shape, dtype, block: int):
    chunks = tuple(min(block, s) for s in shape[-2:])
    return group.create_array(
        name, shape=shape, chunks=(*shape[:-2], *chunks) if len(shape) > 2 else chunks, dtype=dtype
    )


def _instances(task, raw, out, image: ZarrImage, block: int, halo: int, cells: bool) -> dict:
    """Pass 2 for instance labels: halo, ownership by first pixel, global ids."""
    H, W = image.H, image.W
    labels_out = _create(out, "labels", (H, W), "uint32", block)
    next_id, cut, tables = 1, 0, []
    for r0, r1 in _blocks(H, block):
        for c0, c1 in _blocks(W, block):
            y0, y1, x0, x1 = (
                max(r0 - halo, 0),
                min(r1 + halo, H),
                max(c0 - halo, 0),
                min(c1 + halo, W),
            )
            labels = np.asarray(task.finalize(np.asarray(raw[:, y0:y1, x0:x1]))["labels"])
            ids, first = np.unique(labels.ravel(), return_index=True)
            fy, fx = np.divmod(first, labels.shape[1])
            own = (ids > 0) & (fy + y0 >= r0) & (fy + y0 < r1) & (fx + x0 >= c0) & (fx + x0 < c1)
            ids = ids[own]
            if ids.size == 0:
                continue
            lut = np.zeros(int(labels.max()) + 1, dtype=np.uint32)
            lut[ids] = np.arange(next_id, next_id + ids.size, dtype=np.uint32)
            new = lut[labels]
            next_id += ids.size
            edges = [e for e, inner in ((new[0], y0 > 0), (new[-1], y1 < H)) if inner]
            edges += [e for e, inner in ((new[:, 0], x0 > 0), (new[:, -1], x1 < W)) if inner]
            cut += np.count_nonzero(np.unique(np.concatenate(edges))) if edges else 0
            current = np.asarray(labels_out[y0:y1, x0:x1])
            labels_out[y0:y1, x0:x1] = np.where(new > 0, new, current)
            if cells:
                tables.append(cell_table(new, image.read(slice(y0, y1), slice(x0, x1)), (y0, x0)))
    if cut > 0:
        log.warning(
            "%s: %d object(s) reach beyond the halo of %d px and may be cut at block borders; "
            "raise zarr.halo",
            image.path,
            cut,
            halo,
        )
    return {"tables": tables, "count": next_id - 1}


def _copy(raw, out, name: str, image: ZarrImage, block: int) -> None:
    """Copy a one-channel raw map block by block (e.g. the distance map)."""
    array = _create(out, name, (image.H, image.W), "float32", block)
    for r0, r1 in _blocks(image.H, block):
        for c0, c1 in _blocks(image.W, block):
            array[r0:r1, c0:c1] = np.asarray(raw[0, r0:r1, c0:c1])


def _pixelwise(task, raw, out, image: ZarrImage, block: int, save_raw: bool) -> None:
    """Pass 2 for pixel-wise results: finalize each block."""
    arrays = {}
    for r0, r1 in _blocks(image.H, block):
        for c0, c1 in _blocks(image.W, block):
            results = task.finalize(np.asarray(raw[:, r0:r1, c0:c1]))
            for name, value in results.items():
                value = np.asarray(value)
                is_labels = value.dtype.kind in "iub"
                if not (is_labels or save_raw or name == "depth"):
                    continue
                if name not in arrays:
                    dtype = "uint16" if is_labels else "float32"
                    arrays[name] = _create(
                        out, name, (*value.shape[:-2], image.H, image.W), dtype, block
                    )
                arrays[name][..., r0:r1, c0:c1] = value.astype(arrays[name].dtype)


def predict_zarr(
    predictor: Predictor,
    path: str | os.PathLike,
    output: Path,
    stem: str,
    axes: str | None = None,
    block_size: int = 2048,
    halo: int = 128,
    save_raw: bool = False,
    write_overlay: bool = True,
    cells: bool = True,
) -> list[Path]:
    """Predict a zarr image block by block; returns the paths written.

    Per task: ``<stem>_<task>_prediction.zarr`` (arrays ``labels``, ``depth`` and with
    ``save_raw`` the float maps), ``<stem>_<task>_cells.csv`` (instances) and
    ``<stem>_<task>_overlay.png`` (downsampled to at most 2048 px a side).
    """
    import zarr

    if block_size < predictor.tile_size:
        raise ConfigError(
            f"zarr.block_size={block_size} is smaller than the tile ({predictor.tile_size})"
        )
    image = ZarrImage(path, axes, predictor)
    output.mkdir(parents=True, exist_ok=True)
    tmp = output / f".{stem}.raw.{os.getpid()}.zarr"
    written: list[Path] = []
    try:
        raw_root = zarr.open_group(str(tmp), mode="w")
        raws = _blend_pass(image, predictor, raw_root, block_size)
        step = max(1, math.ceil(max(image.H, image.W) / OVERLAY_SIDE))
        thumb = (
            image.read(slice(None, None, step), slice(None, None, step)) if write_overlay else None
        )
        for name, task in predictor.model.tasks.items():
            final = output / f"{stem}_{name}_prediction.zarr"
            part = output / f".{final.name}.{os.getpid()}.tmp"
            out = zarr.open_group(str(part), mode="w")
            instances = getattr(task, "label_key", "") == "instances"
            if instances:
                res = _instances(task, raws[name], out, image, block_size, halo, cells)
                if save_raw:
                    _copy(raws[name], out, "dist", image, block_size)
                if cells:
                    table = concat_tables(res["tables"])
                    csv_path = output / f"{stem}_{name}_cells.csv"
                    write_csv(csv_path, table or {"label": [], "area": []})
                    written.append(csv_path)
            else:
                _pixelwise(task, raws[name], out, image, block_size, save_raw)
            if thumb is not None and "labels" in out:
                lab = np.asarray(out["labels"][::step, ::step])
                png = output / f"{stem}_{name}_overlay.png"
                write_png(png, overlay(thumb, lab, "instances" if instances else "classes"))
                written.append(png)
            if final.exists():
                shutil.rmtree(final)
            os.replace(part, final)
            written.append(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for leftover in output.glob(f".{stem}_*_prediction.zarr.{os.getpid()}.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
    return written
