"""``data=unlabeled``: images without targets for self-supervised pretraining.

``root`` is a folder (searched recursively), a glob pattern (``/data/*/raw/*.tif``), an
uncompressed tar archive of images, or a list of these. Stacks contribute one sample per plane.
Items are random ``crop_size`` crops (every split; validation crops are fixed because the
validation epoch never changes), normalised per channel from whole-image statistics. A
``transform`` (e.g. a multi-crop view generator) replaces the augmentation: it receives the
normalised (C, H, W) float32 crop (the whole image when ``crop_size`` is null) and its result
becomes the batch's ``image``.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from microfm.data.file_datamodule import FileDataModule
from microfm.data.io import count_planes, image_stem, is_image_path, tar_index
from microfm.data.records import Record, list_images, split_records
from microfm.errors import DataError

_GLOB_CHARS = "*?["


def _is_tar(path: str) -> bool:
    return path.lower().endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"))


class UnlabeledDataModule(FileDataModule):
    """Unlabelled images (folders, globs, tar archives) for self-supervised learning.

    Args:
        root: a folder, glob, tar archive, or a list of them.
        transform: callable applied to each normalised (C, H, W) float32 crop, returning what
            the self-supervised method needs (e.g. a list of views); it also receives
            ``seed=`` (from run seed, epoch, index) when it accepts that argument.
        **kwargs: see :class:`FileDataModule` (``crop_size``, ``normalize``, ``split`` ...).

    Example:
        >>> dm = UnlabeledDataModule(["/data/em/*.tif", "/data/lm.tar"], crop_size=224)
        >>> dm.setup()  # doctest: +SKIP
    """

    crop_all_splits = True

    def __init__(
        self,
        root: str | Sequence[str],
        transform: Callable | None = None,
        **kwargs,
    ) -> None:
        sources = [str(root)] if isinstance(root, (str, os.PathLike)) else [str(r) for r in root]
        if not sources:
            raise DataError("data.root is empty: give a folder, glob or tar archive")
        kwargs.setdefault("split", {"val": 0.05, "test": 0.0, "seed": 0})
        kwargs.setdefault("targets", ())
        super().__init__(sources[0], **kwargs)
        self.sources = sources
        self.transform = transform

    def _check_root(self) -> None:
        for source in self.sources:
            if any(c in source for c in _GLOB_CHARS):
                continue
            if not Path(source).expanduser().exists():
                raise DataError(f"data.root: not found: {source}")

    def transform_for(self, split: str) -> Callable | None:
        return self.transform

    def _expand(self, path: Path, name: str, member: str | None = None) -> list[Record]:
        n = 1 if member else count_planes(path, self.axes)
        planes = range(n) if n > 1 else [None]
        return [
            Record(path, name if p is None else f"{name}@{p}", plane=p, member=member)
            for p in planes
        ]

    def _source_records(self, source: str) -> list[Record]:
        if any(c in source for c in _GLOB_CHARS):
            paths = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
            paths = [p for p in paths if is_image_path(p)]
            if not paths:
                raise DataError(f"data.root: the pattern {source} matches no image")
            return [r for p in paths for r in self._expand(p, str(p))]
        path = Path(source).expanduser()
        if path.is_file() and _is_tar(source):
            st = os.stat(path)
            members = [
                m for m in tar_index(str(path), (st.st_mtime_ns, st.st_size)) if is_image_path(m)
            ]
            if not members:
                raise DataError(f"{path}: the archive holds no image")
            return [r for m in sorted(members) for r in self._expand(path, f"{path}::{m}", m)]
        if path.is_dir() and path.suffix.lower() != ".zarr":
            paths = list_images(path, recursive=True)
            if not paths:
                raise DataError(f"no images in {path}")
            return [
                r
                for p in paths
                for r in self._expand(p, str(p.relative_to(path).with_name(image_stem(p))))
            ]
        if is_image_path(path):
            return self._expand(path, str(path))
        raise DataError(f"data.root: {source} is not a folder, image, glob or tar archive")

    def discover(self) -> dict[str, list[Record]]:
        records = [r for s in self.sources for r in self._source_records(s)]
        names = [r.name for r in records]
        if len(set(names)) != len(names):  # same relative names from several folders
            records = [
                Record(r.image, f"{i}:{r.name}", r.plane, member=r.member)
                for i, r in enumerate(records)
            ]
        return split_records(records, self.split, self.root)
