"""Image and label readers: TIFF (8/16/32-bit, float, multi-page, OME/ImageJ axes), PNG/JPEG
(16-bit PNG included) and OME-Zarr / zarr (read lazily, for images larger than memory).

Every reader returns one 2-D image as ``(C, H, W)`` in the file's own dtype: nothing is
rescaled or cast to 8 bit here (normalisation happens later, in float32). Files holding a stack
(Z or T axes) contain several *planes*, addressed by ``plane`` (row-major over the stack axes).

Axes are taken from the file's metadata (OME-XML, ImageJ, tifffile shaped, OME-NGFF) or from
``axes`` (a string such as ``"CYX"``, ``"YXC"``, ``"ZYX"`` describing the array as
``tifffile.imread`` / ``zarr.open`` returns it). ``C`` and ``S`` (RGB samples) are channels,
``Z`` and ``T`` are planes, ``Y``/``X`` are the image. A generic axis (tifffile's ``Q``/``I``,
e.g. the pages of a plain multi-page TIFF) counts as channels when it is the only non-spatial
axis, otherwise as planes.

Example:
    >>> img = read_image("cells.tif", channels=[1, 0])   # (2, H, W), e.g. uint16
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microfm.data.formats import (
    IMAGE_SUFFIXES,
    read_member,
    stored,
    tar_index,
    where,
    zarr_array,
)
from microfm.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "Layout",
    "check_label_values",
    "count_planes",
    "image_info",
    "image_stem",
    "is_image_path",
    "is_lazy",
    "layout",
    "read_image",
    "read_label",
    "tar_index",
]


def is_image_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` has a suffix microfm reads (``.ome.tif`` and ``.ome.zarr`` included)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@dataclass(frozen=True)
class Layout:
    """Where channels, planes and the image live in a stored array of axes ``axes``."""

    axes: str
    channel: tuple[int, ...]
    plane: tuple[int, ...]
    y: int
    x: int


def layout(axes: str, shape: Sequence[int], source: str, label: bool = False) -> Layout:
    """Classify each axis of an array (see module docstring); errors name ``source``. For
    label files (``label=True``) generic axes are always planes."""
    axes = axes.upper()
    if len(axes) != len(shape):
        raise DataError(
            f"{source}: axes {axes!r} do not fit an array of shape {tuple(shape)} "
            f"(set data.axes to {len(shape)} letters, e.g. {'ZCYX'[-len(shape) :]!r})"
        )
    if axes.count("Y") != 1 or axes.count("X") != 1 or len(set(axes)) != len(axes):
        raise DataError(f"{source}: axes {axes!r} need exactly one Y and one X, no repeats")
    explicit = [i for i, a in enumerate(axes) if a in "CS"]
    generic = [i for i, a in enumerate(axes) if a not in "CSYXZT"]
    planes = [i for i, a in enumerate(axes) if a in "ZT"]
    if not explicit and len(generic) == 1 and not label:
        explicit = generic
    else:
        planes = sorted(planes + generic)
    return Layout(axes, tuple(explicit), tuple(planes), axes.index("Y"), axes.index("X"))


def _num_planes(lay: Layout, shape: Sequence[int]) -> int:
    return int(np.prod([shape[i] for i in lay.plane])) if lay.plane else 1


def _take(arr, lay: Layout, plane: int | None, region: tuple[slice, slice] | None, source: str):
    """Index ``arr`` (numpy or zarr) to the (C, h, w) array of one plane and region."""
    shape = arr.shape
    n = _num_planes(lay, shape)
    if plane is None:
        if n > 1:
            raise DataError(
                f"{source}: holds a stack of {n} planes (axes {lay.axes}); it is read one plane "
                "at a time as separate samples, or set data.axes if these are channels"
            )
        plane = 0
    if not 0 <= plane < n:
        raise DataError(f"{source}: plane {plane} does not exist ({n} planes, axes {lay.axes})")
    plane_idx = np.unravel_index(plane, [shape[i] for i in lay.plane]) if lay.plane else ()
    index: list[object] = [slice(None)] * len(shape)
    for axis, i in zip(lay.plane, plane_idx):
        index[axis] = int(i)
    if region is not None:
        index[lay.y], index[lay.x] = region
    out = np.asarray(arr[tuple(index)])
    kept = [i for i in range(len(shape)) if i not in lay.plane]  # order of out's axes
    order = [kept.index(i) for i in lay.channel] + [kept.index(lay.y), kept.index(lay.x)]
    out = np.transpose(out, order)
    # a copy: stored arrays are cached, callers may modify what they get
    return np.array(out.reshape(-1, *out.shape[-2:]), copy=True)


# ---------------------------------------------------------------------------------- public
def image_info(
    path: str | os.PathLike, axes: str | None = None, member: str | None = None
) -> tuple[tuple[int, int, int], np.dtype, int]:
    """((C, H, W) of one plane, dtype, number of planes) of an image file."""
    arr, stored_axes = stored(path, member)
    lay = _resolve(arr.shape, stored_axes, axes, where(path, member))
    shape = arr.shape
    c = int(np.prod([shape[i] for i in lay.channel])) if lay.channel else 1
    return (c, int(shape[lay.y]), int(shape[lay.x])), np.dtype(arr.dtype), _num_planes(lay, shape)


def _resolve(
    shape: Sequence[int],
    stored_axes: str | None,
    axes: str | None,
    source: str,
    label: bool = False,
) -> Layout:
    shape = tuple(shape)
    if axes:
        return layout(axes, shape, source, label)
    if stored_axes and len(stored_axes) == len(shape):
        return layout(stored_axes, shape, source, label)
    if label and len(shape) == 3:
        return layout("ZYX", shape, source, label)
    default = {2: "YX", 3: "CYX"}.get(len(shape))
    if default is None:
        raise DataError(
            f"{source}: an array of shape {shape} without axes metadata; "
            "set data.axes (e.g. 'ZCYX')"
        )
    return layout(default, shape, source, label)


def read_image(
    path: str | os.PathLike,
    channels: Sequence[int] | None = None,
    axes: str | None = None,
    plane: int | None = None,
    region: tuple[slice, slice] | None = None,
    member: str | None = None,
) -> np.ndarray:
    """One image as (C, H, W) in its stored dtype.

    Args:
        path: the file (or the tar archive holding ``member``).
        channels: channel indices to keep, in this order (``data.channels``); None keeps all.
        axes: axes of the stored array, overriding the file's metadata.
        plane: index of the plane in a Z/T stack (None for files holding one image).
        region: (rows, cols) slices to read (only this part of a zarr array is loaded).
        member: file name inside a tar archive.
    """
    source = where(path, member)
    arr, stored_axes = stored(path, member)
    lay = _resolve(arr.shape, stored_axes, axes, source)
    try:
        out = _take(arr, lay, plane, region, source)
    except DataError:
        raise
    except Exception as exc:  # e.g. a missing zarr chunk
        raise DataError(f"{source}: cannot read image ({type(exc).__name__}: {exc})") from None
    if channels is not None:
        channels = [int(c) for c in channels]
        bad = [c for c in channels if not -out.shape[0] <= c < out.shape[0]]
        if bad:
            raise DataError(
                f"{source}: data.channels={channels} asks for channel(s) {bad}, but the image "
                f"has {out.shape[0]} channel(s) (0..{out.shape[0] - 1})"
            )
        out = out[channels]
    return out


def check_label_values(label: np.ndarray, source: str) -> np.ndarray:
    """Label maps hold non-negative integers; floats with integer values are accepted.

    Returns the labels with an integer dtype.
    """
    if label.dtype == bool:
        return label.astype(np.uint8)
    if label.dtype.kind == "f":
        finite = np.isfinite(label)
        if not finite.all() or not np.array_equal(label, np.round(label)):
            raise DataError(
                f"{source}: label file holds non-integer float values; labels must be "
                "integers (0 = background, 1..N = objects or classes)"
            )
        if label.size and label.max() > np.iinfo(np.int32).max:
            raise DataError(f"{source}: label values exceed the int32 range")
        label = label.astype(np.int32)
    elif label.dtype.kind not in "iu":
        raise DataError(f"{source}: labels of dtype {label.dtype} are not integers")
    if label.dtype.kind == "i" and label.size and label.min() < 0:
        raise DataError(
            f"{source}: label file holds negative values (min {int(label.min())}); labels "
            "must be 0 (background) or positive ids"
        )
    return label


def read_label(
    path: str | os.PathLike,
    axes: str | None = None,
    plane: int | None = None,
    region: tuple[slice, slice] | None = None,
    member: str | None = None,
    check: bool = True,
) -> np.ndarray:
    """A label map (instances or classes; with ``check=False`` any single-channel target such
    as depth) as (H, W).

    Files with several identical channels (grey labels saved as RGB) are accepted; real
    multi-channel files are an error naming the file. With ``check``, labels must be
    non-negative integers (see :func:`check_label_values`).
    """
    source = where(path, member)
    arr, stored_axes = stored(path, member, label=True)
    lay = _resolve(arr.shape, stored_axes, axes, source, label=True)
    out = _take(arr, lay, plane, region, source)
    if out.shape[0] > 1:
        if out.shape[0] in (3, 4) and all(np.array_equal(out[0], out[c]) for c in (1, 2)):
            out = out[:1]
        else:
            raise DataError(
                f"{source}: a label/target file must have one channel, this one has "
                f"{out.shape[0]} (shape {tuple(out.shape)})"
            )
    return check_label_values(out[0], source) if check else out[0]


def count_planes(
    path: str | os.PathLike,
    axes: str | None = None,
    member: str | None = None,
    label: bool = False,
) -> int:
    """Number of 2-D planes in an image (or, ``label=True``, label) file: 1 unless it holds a
    Z/T stack. Reads the metadata only (TIFF headers, zarr attributes), never the pixels."""
    suffix = Path(member or path).suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        return 1
    try:
        if suffix == ".zarr" and member is None:
            arr, stored_axes = zarr_array(Path(path))
            shape = arr.shape
        else:
            import tifffile

            source = io.BytesIO(read_member(str(path), member)) if member else path
            with tifffile.TiffFile(source) as tif:
                series = tif.series[0]
                shape, stored_axes = series.shape, series.axes
    except Exception as exc:
        raise DataError(
            f"{where(path, member)}: cannot read image ({type(exc).__name__}: {exc})"
        ) from None
    lay = _resolve(shape, stored_axes, axes, where(path, member), label)
    return _num_planes(lay, shape)


def is_lazy(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read region by region (zarr) rather than decoded whole."""
    return Path(path).suffix.lower() == ".zarr"
