"""The images behind a feature set, for figures (retrieval grids, PCA-RGB maps)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from microfm.analysis.featureset import FeatureSet


def split_name(path: str) -> tuple[str, int | None, tuple[int, int] | None]:
    """``file@plane#row,col`` -> (file, plane, tile)."""
    tile = None
    if "#" in path:
        path, _, t = path.rpartition("#")
        a, _, b = t.partition(",")
        tile = (int(a), int(b))
    plane = None
    if "@" in path and path.rpartition("@")[2].isdigit():
        path, _, p = path.rpartition("@")
        plane = int(p)
    return path, plane, tile


class ImageSource:
    """``source(i)``: image ``i`` of ``fs`` as (C, H, W) float32, or None when it cannot be
    found. Read through ``load(split, index)`` (the dataset) when given, else from the file
    named in ``fs.paths``; then resized to ``image_size`` and cut to its tile, as the
    extraction did.

    Example:
        >>> source = ImageSource(fs, None, image_size=224)  # doctest: +SKIP
        >>> source(0).shape  # doctest: +SKIP
        (1, 224, 224)
    """

    def __init__(
        self,
        fs: FeatureSet,
        load: Callable[[str, int], np.ndarray] | None = None,
        image_size: int | None = None,
        tile_size: int | None = None,
    ) -> None:
        self.fs, self.load = fs, load
        ext = fs.meta.get("extract", {}) if isinstance(fs.meta, dict) else {}
        self.image_size = image_size if image_size is not None else ext.get("image_size")
        self.tile_size = tile_size if tile_size is not None else ext.get("tile_size")

    def _raw(self, i: int) -> np.ndarray | None:
        file, plane, _ = split_name(str(self.fs.paths[i]))
        if self.load is not None and self.fs.index is not None:
            return np.asarray(self.load(str(self.fs.splits[i]), int(self.fs.index[i])))
        if "::" in file or not Path(file).is_file():
            return None
        from microfm.data import read_image
        from microfm.transforms.intensity import percentile_normalize

        try:
            return percentile_normalize(read_image(file, plane=plane)).astype(np.float32)
        except Exception:  # a figure without this image rather than no figure
            return None

    def __call__(self, i: int) -> np.ndarray | None:
        import torch
        import torch.nn.functional as F

        image = self._raw(int(i))
        if image is None:
            return None
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
        if self.image_size:
            size = (int(self.image_size),) * 2
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True)
        tile = split_name(str(self.fs.paths[i]))[2]
        if tile is not None and self.tile_size:
            t = int(self.tile_size)
            x = x[..., tile[0] * t : (tile[0] + 1) * t, tile[1] * t : (tile[1] + 1) * t]
        return x[0].numpy()
