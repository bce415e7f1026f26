"""Reading, validating and caching the samples of file-backed datasets.

:meth:`SampleStore.prepare` reads every file of a record once (the validation pass run at
setup): it checks that the image decodes, has the expected channels, that each target has the
image's shape and holds non-negative integers, counts the objects, computes the per-image
normalisation statistics, and, with a cache folder, writes the decoded arrays as ``.npy`` files.
Later reads memory-map them, so repeated epochs and repeated runs neither decode the files again
nor recompute targets such as distance maps (computed once per image for evaluation).

Cache entries are keyed by the files' paths, sizes and modification times and the reader
settings; the raw (channel-selected) image is stored, normalisation is applied when reading, so
changing ``data.normalize`` never invalidates the cache. Writes are atomic (temporary file +
rename), so several processes (DDP ranks, loader workers) can share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microfm.data.io import image_info, is_lazy, read_image, read_label
from microfm.data.records import Record
from microfm.errors import DataError
from microfm.transforms.intensity import Normalizer, image_stats
from microfm.transforms.targets import distance_map
from microfm.utils.io import atomic_write_text

CACHE_VERSION = 1
# a lazy (zarr) image's statistics are estimated from at most this many pixels per channel
_LAZY_STATS_PIXELS = 4_000_000


@dataclass
class SampleInfo:
    """What the validation pass learnt about one record."""

    shape: tuple[int, int, int]
    dtype: str
    targets: tuple[str, ...] = ()
    objects: int | None = None
    classes: tuple[int, ...] | None = None
    stats: dict[str, list[list[float]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "shape": list(self.shape),
                "dtype": self.dtype,
                "targets": list(self.targets),
                "objects": self.objects,
                "classes": list(self.classes) if self.classes is not None else None,
                "stats": self.stats,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> SampleInfo:
        d = json.loads(text)
        return cls(
            tuple(d["shape"]),
            d["dtype"],
            tuple(d["targets"]),
            d["objects"],
            tuple(d["classes"]) if d["classes"] is not None else None,
            d["stats"],
        )


class LazyRegion:
    """A (C, H, W) image or (H, W) target in a zarr store, read region by region."""

    def __init__(self, record: Record, key: str, shape: tuple[int, ...], store: SampleStore):
        self.record, self.key, self.shape, self.store = record, key, tuple(shape), store

    def __getitem__(self, index) -> np.ndarray:
        index = tuple(i for i in (index if isinstance(index, tuple) else (index,)))
        index = tuple(i for i in index if i is not Ellipsis)[-2:]
        return self.store.read(self.record, self.key, region=index)

    def __array__(self, dtype=None, copy=None):
        out = self.store.read(self.record, self.key)
        return out.astype(dtype) if dtype is not None else out


def _stamp(path: Path) -> list:
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
    os.replace(tmp, path)


def _compact_labels(label: np.ndarray) -> np.ndarray:
    top = int(label.max()) if label.size else 0
    return label.astype(np.uint16 if top < 65536 else np.int32, copy=False)


class SampleStore:
    """Reads records through the readers, with validation and an optional on-disk cache.

    Args:
        normalizer: intensity normalisation applied when reading.
        channels: channel indices to keep (``data.channels``).
        axes: axes of the stored image arrays (``data.axes``), when metadata is missing.
        in_chans: channels every image must have after selection.
        cache_dir: folder of the preprocessing cache (None: read the files every time).
    """

    def __init__(
        self,
        normalizer: Normalizer,
        channels: Sequence[int] | None = None,
        axes: str | None = None,
        in_chans: int = 1,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.normalizer = normalizer
        self.channels = list(channels) if channels is not None else None
        self.axes = axes
        self.in_chans = int(in_chans)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.infos: dict[Record, SampleInfo] = {}
        self._keys: dict[Record, str] = {}

    # -- keys and cache paths -----------------------------------------------------------
    def key(self, record: Record) -> str:
        files = [record.image, *record.target_files.values()]
        desc = {
            "v": CACHE_VERSION,
            "files": [_stamp(f) for f in files],
            "targets": sorted(record.target_files),
            "plane": record.plane,
            "target_plane": record.target_plane,
            "member": record.member,
            "channels": self.channels,
            "axes": self.axes,
        }
        return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()

    def _entry(self, record: Record) -> Path | None:
        if self.cache_dir is None:
            return None
        key = self._keys.get(record)
        if key is None:  # files are checked (size, time) once per process and record
            key = self._keys[record] = self.key(record)
        return self.cache_dir / key[:2] / key

    @property
    def stats_key(self) -> str:
        s = self.normalizer.settings()
        return f"{s['mode']}:{s['low']}:{s['high']}"

    # -- reading files ----------------------------------------------------------------------
    def read(self, record: Record, key: str, region=None) -> np.ndarray:
        """Read ``key`` (``image`` or a target) of a record from its file."""
        if key == "image":
            return read_image(
                record.image, self.channels, self.axes, record.plane, region, record.member
            )
        path = record.target_files[key]
        out = read_label(path, plane=record.target_plane, region=region, check=key != "depth")
        if key == "depth":
            return out.astype(np.float32, copy=False)
        if key == "semantic" and out.size and out.max() == 255 and _binary_255(out):
            out = (out > 0).astype(np.uint8)
        return out

    # -- the validation pass -------------------------------------------------------------------
    def prepare(self, record: Record) -> SampleInfo:
        """Validate a record (reading each file once), fill the cache, return its info."""
        entry = self._entry(record)
        if entry is not None and (entry / "info.json").is_file():
            info = SampleInfo.from_json((entry / "info.json").read_text())
            if self.stats_key not in info.stats:  # cached under other normalisation settings
                if is_lazy(record.image):
                    image = self._lazy_sample(record, *info.shape[1:])
                else:
                    image = np.load(entry / "image.npy", mmap_mode="r")
                info.stats[self.stats_key] = self._image_stats(np.asarray(image))
                atomic_write_text(entry / "info.json", info.to_json())
            self.infos[record] = info
            return info
        lazy = is_lazy(record.image)
        if lazy:
            (c, h, w), dtype, _ = image_info(record.image, self.axes)
            c = len(self.channels) if self.channels is not None else c
            image = self._lazy_sample(record, h, w)
        else:
            image = self.read(record, "image")
            c, h, w = image.shape
            dtype = image.dtype
        if c != self.in_chans:
            raise DataError(
                f"{record.where()}: the image has {c} channel(s) but data.in_chans="
                f"{self.in_chans}; pick channels with data.channels=[...] or set data.in_chans"
            )
        info = SampleInfo((c, h, w), str(np.dtype(dtype)), tuple(sorted(record.target_files)))
        info.stats[self.stats_key] = self._image_stats(image)
        targets = {}
        for key, path in record.target_files.items():
            target = self.read(record, key)
            if target.shape != (h, w):
                raise DataError(
                    f"{path}: {key} map of shape {target.shape} does not match its image "
                    f"{record.where()} of shape {(h, w)}"
                )
            if key == "depth" and not np.isfinite(target).all():
                raise DataError(f"{path}: depth map holds NaN or infinite values")
            targets[key] = target
        if "instances" in targets:
            ids = np.unique(targets["instances"])
            info.objects = int(np.count_nonzero(ids))
        if "semantic" in targets:
            info.classes = tuple(int(v) for v in np.unique(targets["semantic"]))
        if entry is not None:
            if not lazy:
                _save_npy(entry / "image.npy", image)
            for key, target in targets.items():
                if key != "depth":
                    target = _compact_labels(target)
                _save_npy(entry / f"{key}.npy", target)
            atomic_write_text(entry / "info.json", info.to_json())
        self.infos[record] = info
        return info

    def _lazy_sample(self, record: Record, h: int, w: int) -> np.ndarray:
        step = max(1, int(np.ceil(np.sqrt(h * w / _LAZY_STATS_PIXELS))))
        return self.read(record, "image", region=(slice(None, None, step), slice(None, None, step)))

    def _image_stats(self, image: np.ndarray) -> list[list[float]]:
        n = self.normalizer
        offset, scale = image_stats(image, n.mode, n.low, n.high)
        return [offset.tolist(), scale.tolist()]

    # -- reading prepared samples ---------------------------------------------------------------
    def raw_image(self, record: Record) -> np.ndarray:
        """The raw (channel-selected) image, memory-mapped from the cache when possible
        (for lazy images: the subsample used for statistics)."""
        if is_lazy(record.image):
            info = self.infos[record]
            return self._lazy_sample(record, *info.shape[1:])
        return self._arrays(record, ())["image"]

    def norm_fn(self, record: Record) -> Callable[[np.ndarray], np.ndarray]:
        """The function normalising (a region of) the record's raw image."""
        if self.normalizer.scope == "dataset":
            offset, scale = self.normalizer.dataset_stats
        else:
            offset, scale = self.infos[record].stats[self.stats_key]
        normalizer = self.normalizer

        def norm(image: np.ndarray) -> np.ndarray:
            return normalizer.apply(np.asarray(image), offset, scale)

        norm.whole_image = normalizer.clahe  # CLAHE depends on the whole image
        return norm

    def arrays(self, record: Record, derived: Sequence[str] = ()) -> tuple[dict, Callable]:
        """Sliceable arrays of a prepared record (``image`` raw, targets, cached ``derived``
        targets such as ``dist``) and the normalisation to apply to image regions."""
        return self._arrays(record, derived), self.norm_fn(record)

    def _arrays(self, record: Record, derived: Sequence[str]) -> dict[str, object]:
        info = self.infos.get(record) or self.prepare(record)
        entry = self._entry(record)
        out: dict[str, object] = {}
        keys = ["image", *info.targets]
        for key in keys:
            if key == "image" and is_lazy(record.image):
                out[key] = LazyRegion(record, key, info.shape, self)
            elif entry is not None:
                out[key] = np.load(entry / f"{key}.npy", mmap_mode="r")
            else:
                out[key] = self.read(record, key)
        for name in derived:
            if "instances" not in out:
                continue
            path = entry / f"{name}.npy" if entry is not None else None
            if path is not None and path.is_file():
                out[name] = np.load(path, mmap_mode="r")
            else:
                value = distance_map(np.asarray(out["instances"]).astype(np.int32))
                if path is not None:
                    _save_npy(path, value)
                out[name] = value
        if record.label is not None:
            out["label"] = record.label
        if record.domain is not None:
            out["domain"] = record.domain
        return out


def _binary_255(mask: np.ndarray) -> bool:
    values = np.unique(mask)
    return bool(np.isin(values, (0, 255)).all())
