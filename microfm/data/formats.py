"""Decoding image files as stored: TIFF (tifffile), PNG/JPEG (Pillow, OpenCV for 16-bit
PNG), zarr / OME-Zarr (lazy arrays) and members of uncompressed tar archives.

Each function returns ``(array, axes or None)`` exactly as stored; :mod:`microfm.data.io`
turns them into (C, H, W) images. Decoded files are kept briefly in memory (a few entries), so
reading the planes of a stack one after another decodes it once.
"""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import numpy as np

from microfm.errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".zarr")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def where(path, member) -> str:
    """How to name a file (or a member of an archive) in messages."""
    return f"{path}::{member}" if member else str(path)


def _tiff_array(source, name: str) -> tuple[np.ndarray, str]:
    import tifffile

    with tifffile.TiffFile(source) as tif:
        series = tif.series[0]
        return series.asarray(), series.axes


def _png_bit_depth(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk of a PNG."""
    return data[24], data[25]


def _pil_array(source, label: bool) -> tuple[np.ndarray, str]:
    from PIL import Image

    with Image.open(source) as im:
        im.load()  # decodes now: a truncated file raises here
        if im.mode == "P" and not label:
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode == "CMYK":
            im = im.convert("RGB")
        arr = np.asarray(im)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr, "YX" if arr.ndim == 2 else "YXS"


def _png_or_jpeg_array(data: bytes, label: bool) -> tuple[np.ndarray, str]:
    if data[:8] == _PNG_MAGIC and len(data) > 26 and _png_bit_depth(data)[0] == 16:
        import cv2  # Pillow reduces 16-bit RGB PNGs to 8 bit; OpenCV keeps all 16 bits

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise OSError("OpenCV could not decode the 16-bit PNG (truncated or corrupt)")
        if arr.ndim == 3:  # BGR(A) -> RGB(A)
            arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]] if arr.shape[-1] in (3, 4) else arr
        return arr, "YX" if arr.ndim == 2 else "YXS"
    return _pil_array(io.BytesIO(data), label)


def zarr_array(path: Path):
    """(array, axes or None) of a zarr array or the full-resolution level of an OME-Zarr."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = [k for k, v in node.members() if isinstance(v, zarr.Array)]
        if len(arrays) != 1:
            raise OSError("a zarr group without OME-NGFF 'multiscales' metadata")
        return node[arrays[0]], None
    ms = multiscales[0]
    arr = node[ms["datasets"][0]["path"]]
    axes = ms.get("axes")
    if axes:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
        return arr, "".join(n[0].upper() for n in names)
    return arr, None


@functools.lru_cache(maxsize=4)
def _stored_cached(path: str, member: str | None, label: bool, stamp: tuple) -> tuple:
    return _stored_uncached(path, member, label)


@functools.lru_cache(maxsize=8)
def tar_index(path: str, stamp: tuple = ()) -> dict[str, tuple[int, int]]:
    """``{member name: (data offset, size)}`` of the regular files in an uncompressed tar."""
    with open(path, "rb") as f:
        magic = f.read(3)
    if magic[:2] == b"\x1f\x8b" or magic == b"BZh" or magic[:2] == b"\xfd7":
        raise DataError(
            f"{path}: compressed tar archive; decompress it (e.g. gunzip) so that images can "
            "be read in random order"
        )
    try:
        with tarfile.open(path, "r:") as tar:
            return {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: cannot read tar archive ({exc})") from None


def read_member(path: str, member: str) -> bytes:
    st = os.stat(path)
    index = tar_index(path, (st.st_mtime_ns, st.st_size))
    if member not in index:
        raise OSError(f"{member} is not a file in the archive")
    offset, size = index[member]
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{member} is truncated in the archive")
    return data


def _stored_uncached(path: str, member: str | None, label: bool):
    name = member or path
    suffix = Path(name).suffix.lower()
    if suffix == ".zarr" and member is None:
        return zarr_array(Path(path))
    if suffix in (".tif", ".tiff"):
        return _tiff_array(io.BytesIO(read_member(path, member)) if member else path, name)
    if suffix in (".png", ".jpg", ".jpeg"):
        data = read_member(path, member) if member else Path(path).read_bytes()
        return _png_or_jpeg_array(data, label)
    raise OSError(f"unsupported image format {suffix!r} (readable: {', '.join(IMAGE_SUFFIXES)})")


def stored(path: str | os.PathLike, member: str | None = None, label: bool = False):
    """(array, axes) of a file as stored; stacks are decoded once and kept briefly in memory,
    so that reading their planes one after another does not decode them again."""
    path = str(path)
    try:
        st = os.stat(path)
        return _stored_cached(path, member, label, (st.st_mtime_ns, st.st_size))
    except DataError:
        raise
    except Exception as exc:  # corrupt, truncated, missing, unsupported
        where = f"{path}::{member}" if member else path
        raise DataError(f"{where}: cannot read image ({type(exc).__name__}: {exc})") from None
