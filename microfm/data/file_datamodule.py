"""Common machinery of the file-backed DataModules (folder, cellpose, livecell, ctc, ...).

A subclass only finds its records (:meth:`FileDataModule.discover`); this class validates
every file before training (errors name the file, ``on_error="skip"`` drops bad files with a
warning), fills the preprocessing cache, fits dataset-level normalisation, and builds the
train/val/test datasets: random crops for training, whole images (padded to a common size)
for evaluation, optional domain-balanced sampling.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from microfm.data.datamodule import MicroscopyDataModule
from microfm.data.files import DomainBalancedDataset, FileDataset
from microfm.data.records import Record
from microfm.data.store import SampleStore
from microfm.errors import ConfigError, DataError
from microfm.transforms.intensity import Normalizer
from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)
ON_ERROR = ("raise", "skip")
# targets each derived target is computed from
NEEDS = {"dist": "instances"}


class FileDataModule(MicroscopyDataModule):
    """Base class of DataModules reading images from ``root``.

    Args:
        root: the dataset folder (``data.root``).
        split: ``{train, val, test, seed}``: each split None, a fraction, or a list file of
            names relative to ``root`` (see :func:`microfm.data.records.split_records`).
        channels: channel indices to read, in order (``data.channels``).
        axes: axes of the stored arrays when the files lack metadata (e.g. ``"YXC"``).
        normalize: keyword arguments of :class:`~microfm.transforms.intensity.Normalizer`.
        crop_size: side of random training crops (None: whole images, padded to a common
            size).
        min_foreground: minimum fraction of labelled pixels in a training crop.
        pad_multiple: evaluation images are padded to a multiple of this (the patch size).
        domain_balanced: draw training samples with equal probability per domain.
        on_error: ``raise`` on the first validation pass with bad files, or ``skip`` them.
        cache: keep decoded images and targets as memory-mapped arrays in ``cache_dir``.
        cache_dir: folder of the preprocessing cache.
        image_size: resize every image to this square size (classification crops).
        **kwargs: see :class:`MicroscopyDataModule`.
    """

    # random crops for every split, not only training (self-supervised data)
    crop_all_splits: bool = False

    def __init__(
        self,
        root: str,
        split: Mapping[str, object] | None = None,
        channels: Sequence[int] | None = None,
        axes: str | None = None,
        normalize: Mapping[str, object] | None = None,
        crop_size: int | None = 256,
        min_foreground: float = 0.0,
        pad_multiple: int = 16,
        domain_balanced: bool = False,
        on_error: str = "raise",
        cache: bool = True,
        cache_dir: str | None = None,
        image_size: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if on_error not in ON_ERROR:
            raise ConfigError(f"data.on_error must be one of {ON_ERROR}, got {on_error!r}")
        if channels is not None:
            channels = [int(c) for c in channels]
            if len(channels) != self.in_chans:
                raise ConfigError(
                    f"data.channels={channels} selects {len(channels)} channel(s) but "
                    f"data.in_chans={self.in_chans}"
                )
        if crop_size is not None and int(crop_size) < 1:
            raise ConfigError(f"data.crop_size must be positive or null, got {crop_size}")
        if not 0.0 <= float(min_foreground) <= 1.0:
            raise ConfigError(f"data.min_foreground must be in [0, 1], got {min_foreground}")
        self.root = Path(str(root)).expanduser()
        self.split = dict(split or {"val": 0.15, "test": 0.15, "seed": 0})
        self.channels = channels
        self.axes = axes
        self.normalizer = Normalizer(**dict(normalize or {}))
        self.crop_size = int(crop_size) if crop_size else None
        self.min_foreground = float(min_foreground)
        self.pad_multiple = max(1, int(pad_multiple))
        self.domain_balanced = bool(domain_balanced)
        self.on_error = on_error
        self.cache_dir = Path(cache_dir).expanduser() if (cache and cache_dir) else None
        self.image_size = int(image_size) if image_size else None
        self.domain_names: list[str] = []
        self.records: dict[str, list[Record]] = {}
        self.skipped: list[str] = []
        self.store = SampleStore(self.normalizer, channels, axes, self.in_chans, self.cache_dir)

    # -- to implement ---------------------------------------------------------------------
    def discover(self) -> dict[str, list[Record]]:
        """Find the records of each split (``train`` required, ``val``/``test`` optional)."""
        raise NotImplementedError

    def transform_for(self, split: str) -> Callable | None:
        """A per-image transform replacing augmentation (self-supervised views)."""
        return None

    # -- building -------------------------------------------------------------------------
    def _check_root(self) -> None:
        if not self.root.exists():
            raise DataError(f"data.root: not found: {self.root}")

    def _validate(self, records: Sequence[Record]) -> list[Record]:
        """The validation pass: read every file once (in threads), collect the errors."""
        bad: dict[Record, str] = {}

        def check(record: Record):
            try:
                self.store.prepare(record)
            except DataError as exc:
                bad[record] = str(exc)

        workers = max(1, min(8, os.cpu_count() or 1, len(records)))
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(check, records))
        if bad:
            messages = [bad[r] for r in records if r in bad]
            listing = "\n  ".join(messages[:20])
            more = f"\n  ... and {len(messages) - 20} more" if len(messages) > 20 else ""
            if self.on_error == "raise":
                raise DataError(
                    f"{len(messages)} bad file(s) under {self.root} (set data.on_error=skip to "
                    f"train without them):\n  {listing}{more}"
                )
            warnings.warn(
                f"data.on_error=skip: skipping {len(messages)} bad sample(s):\n  {listing}{more}",
                stacklevel=2,
            )
            self.skipped = messages
        return [r for r in records if r not in bad]

    def _fit_dataset_stats(self, train: Sequence[Record]) -> None:
        settings = self.normalizer.settings()
        key_src = json.dumps([settings, [self.store.key(r) for r in train]], sort_keys=True)
        key = hashlib.sha1(key_src.encode()).hexdigest()
        path = self.cache_dir / "dataset_stats" / f"{key}.json" if self.cache_dir else None
        if path is not None and path.is_file():
            d = json.loads(path.read_text())
            self.normalizer.dataset_stats = (np.asarray(d["offset"]), np.asarray(d["scale"]))
            return
        offset, scale = self.normalizer.fit(self.store.raw_image(r) for r in train)
        if path is not None:
            atomic_write_text(
                path, json.dumps({"offset": offset.tolist(), "scale": scale.tolist()})
            )

    def _pad_size(self, records: Sequence[Record]) -> tuple[int, int]:
        shapes = [self.store.infos[r].shape for r in records]
        m = self.pad_multiple
        h = max(s[1] for s in shapes)
        w = max(s[2] for s in shapes)
        return (math.ceil(h / m) * m, math.ceil(w / m) * m)

    def build_datasets(self) -> dict[str, Dataset]:
        self._check_root()
        splits = {s: list(v) for s, v in self.discover().items() if v}
        if "train" not in splits:
            raise DataError(f"no training images found under {self.root}")
        for name in self.targets:
            source = NEEDS.get(name)
            missing = [r for r in splits["train"] if source and source not in r.target_files]
            if missing:
                raise DataError(
                    f"the task needs {source} labels (for its '{name}' target) but "
                    f"{missing[0].where()} has none ({len(missing)} training image(s) without)"
                )
        unique = list(dict.fromkeys(r for v in splits.values() for r in v))
        good = set(self._validate(unique))
        splits = {s: [r for r in v if r in good] for s, v in splits.items()}
        splits = {s: v for s, v in splits.items() if v}
        if "train" not in splits:
            raise DataError(f"every training image under {self.root} was skipped as bad")
        self.records = splits
        if self.normalizer.scope == "dataset":
            self._fit_dataset_stats(splits["train"])
        datasets: dict[str, Dataset] = {}
        augment = None if getattr(self.augment, "identity", False) else self.augment
        for split, records in splits.items():
            train = split == "train"
            resize = (self.image_size, self.image_size) if self.image_size else None
            crop = self.crop_size if (train or self.crop_all_splits) and not resize else None
            ds = FileDataset(
                records,
                self.store,
                cached_targets=not train or (crop is None and augment is None),
                augment=augment if train else None,
                targets=self.targets,
                seed=self.seed,
                crop_size=crop,
                min_foreground=self.min_foreground,
                pad_to=None if (crop or resize) else self._pad_size(records),
                resize=resize,
                transform=self.transform_for(split),
            )
            if train and self.domain_balanced:
                domains = [r.domain for r in records]
                if any(d is None for d in domains):
                    raise ConfigError(
                        "data.domain_balanced=true but the dataset has no domains "
                        "(give a domain column / mapping.csv)"
                    )
                ds = DomainBalancedDataset(ds, domains)
            datasets[split] = ds
        self._log_summary()
        return datasets

    def val_dataloader(self):
        """No validation when the split is empty (e.g. ``data.split.val=0``)."""
        self.setup()
        return super().val_dataloader() if "val" in self.datasets else []

    def test_dataloader(self):
        self.setup()
        return super().test_dataloader() if "test" in self.datasets else []

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Saved by Lightning in every checkpoint: what inference needs to prepare images the
        same way (normalisation with fitted dataset statistics, channels, names)."""
        state = dict(super().state_dict())
        state["microfm_data"] = {
            "normalizer": self.normalizer.state(),
            "channels": self.channels,
            "axes": self.axes,
            "in_chans": self.in_chans,
            "channel_stats": getattr(self, "_channel_stats", None),
            "domain_names": list(self.domain_names),
            "class_names": list(getattr(self, "class_names", None) or []),
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        mine = state.pop("microfm_data", None)
        if mine is not None and mine["normalizer"].get("dataset_stats") is not None:
            offset, scale = mine["normalizer"]["dataset_stats"]
            self.normalizer.dataset_stats = (np.asarray(offset), np.asarray(scale))
        super().load_state_dict(state)

    # -- reporting ---------------------------------------------------------------------------
    def summary(self) -> dict[str, dict[str, object]]:
        """Per split: number of images, their shapes and dtypes, labelled objects, classes
        and domains (what ``microfm-data check`` prints)."""
        self.setup()
        out = {}
        for split, records in self.records.items():
            infos = [self.store.infos[r] for r in records]
            entry: dict[str, object] = {
                "images": len(records),
                "shapes": dict(Counter("x".join(map(str, i.shape)) for i in infos)),
                "dtypes": dict(Counter(i.dtype for i in infos)),
            }
            objects = [i.objects for i in infos if i.objects is not None]
            if objects:
                entry["objects"] = int(sum(objects))
                entry["images_without_objects"] = int(sum(1 for o in objects if o == 0))
            classes = sorted({c for i in infos if i.classes for c in i.classes})
            if classes:
                entry["mask_values"] = classes
            labels = [r.label for r in records if r.label is not None]
            if labels:
                names = getattr(self, "class_names", None) or []
                entry["classes"] = {
                    (names[k] if k < len(names) else str(k)): v
                    for k, v in sorted(Counter(labels).items())
                }
            domains = [r.domain for r in records if r.domain is not None]
            if domains:
                entry["domains"] = {
                    self.domain_names[k]: v for k, v in sorted(Counter(domains).items())
                }
            out[split] = entry
        return out

    def _log_summary(self) -> None:
        parts = [f"{s}: {len(v)}" for s, v in self.records.items()]
        log.info("data %s at %s: %s images", type(self).__name__, self.root, ", ".join(parts))

    def channel_stats(self, max_images: int = 256) -> tuple[list[float], list[float]]:
        """See :meth:`MicroscopyDataModule.channel_stats`; also cached in ``cache_dir``."""
        cached = getattr(self, "_channel_stats", None)
        if cached is not None:
            return cached
        self.setup()
        path = None
        if self.cache_dir is not None:
            keys = [self.store.key(r) for r in self.records["train"]]
            src = json.dumps([self.normalizer.settings(), keys, max_images], sort_keys=True)
            path = (
                self.cache_dir / "channel_stats" / f"{hashlib.sha1(src.encode()).hexdigest()}.json"
            )
            if path.is_file():
                d = json.loads(path.read_text())
                self._channel_stats = (d["mean"], d["std"])
                return self._channel_stats
        mean, std = super().channel_stats(max_images)
        if path is not None:
            atomic_write_text(path, json.dumps({"mean": mean, "std": std}))
        return mean, std
