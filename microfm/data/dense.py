"""A map-style dataset of images with dense targets: crop, augment, derive targets, tensors.

:class:`DenseDataset` holds its samples in memory (the synthetic data); file-backed datasets
(:class:`microfm.data.files.FileDataset`) reuse the same per-item pipeline and only change where
the arrays come from. The pipeline of one item:

1. the arrays of the sample (``image`` (C, H, W) and targets (H, W)), possibly memory-mapped
   or lazy, with the normalisation to apply to the image;
2. a random ``crop_size`` window for training (minimum foreground fraction optional), read as a
   region; images are normalised from whole-image (or dataset) statistics *before* cropping so
   crops of one image share its contrast;
3. padding to ``pad_to`` (evaluation of images of different sizes) or resizing to ``resize``;
4. augmentation seeded by ``sample_seed`` (run seed, epoch, index);
5. derived targets (``dist``) from the augmented instance labels;
6. tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from microfm.transforms.crop import crop_sample, pad_to, random_crop_region, resize_sample
from microfm.transforms.intensity import Normalizer, percentile_normalize
from microfm.transforms.targets import distance_map

# Targets computed from the (augmented) instance labels on the fly.
DERIVED_TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"dist": distance_map}
SPATIAL_KEYS = ("image", "instances", "semantic", "depth", *DERIVED_TARGETS)
SCALAR_KEYS = ("label", "domain")


class DenseDataset(Dataset):
    """In-memory samples -> training dicts of tensors.

    Each raw sample is a dict with ``image`` ((C, H, W), any dtype), any of ``instances``,
    ``semantic``, ``depth`` (H, W), and scalars ``label`` and ``domain``. Images are normalised
    per channel once, at construction. Items are dicts with ``image`` float32 (C, H, W),
    ``instances`` int32 (H, W), ``semantic`` int64 (H, W), ``depth`` float32 (1, H, W),
    ``label`` and ``domain`` int64, requested derived ``targets`` such as ``dist`` float32
    (1, H, W), and ``index``.

    Args:
        samples: the raw samples.
        augment: callable ``(sample, seed) -> sample`` or None.
        targets: names of derived targets to compute after augmentation (see DERIVED_TARGETS).
        seed: run seed; an item's crop and augmentation depend on (seed, epoch, index).
        normalize: a :class:`Normalizer` or keyword arguments of :func:`percentile_normalize`.
        crop_size: side of random square training crops (None: whole images).
        min_foreground: minimum fraction of labelled pixels in a crop (best of 10 tries).
        pad_to: (H, W) every item is padded to (bottom/right, zeros), so that images of
            different sizes batch together.
        resize: (H, W) every item is resized to (bilinear images, nearest labels).
        transform: callable applied to the normalised (C, H, W) float32 image (after the crop)
            instead of augmentation; its result becomes ``image`` (e.g. a list of views for
            self-supervised learning). It receives ``seed=`` when its signature accepts it.

    Example:
        >>> ds = DenseDataset([{"image": np.zeros((1, 32, 32), np.uint16)}])
        >>> ds[0]["image"].shape
        torch.Size([1, 32, 32])
    """

    def __init__(
        self,
        samples: Sequence[Mapping[str, object]] = (),
        augment: Callable[[dict, int], dict] | None = None,
        targets: Sequence[str] = (),
        seed: int = 0,
        normalize: Normalizer | Mapping[str, float] | None = None,
        crop_size: int | None = None,
        min_foreground: float = 0.0,
        pad_to: tuple[int, int] | None = None,
        resize: tuple[int, int] | None = None,
        transform: Callable | None = None,
    ) -> None:
        unknown = sorted(set(targets) - set(DERIVED_TARGETS))
        if unknown:
            raise ValueError(f"unknown derived targets {unknown}; known: {sorted(DERIVED_TARGETS)}")
        self.samples = []
        for s in samples:
            item = dict(s)
            image = np.asarray(s["image"])
            if isinstance(normalize, Normalizer):
                item["image"] = normalize(image)
            else:
                item["image"] = percentile_normalize(image, **dict(normalize or {}))
            self.samples.append(item)
        self.augment = augment
        self.targets = tuple(targets)
        self.seed = int(seed)
        self.epoch = 0
        self.crop_size = int(crop_size) if crop_size else None
        self.min_foreground = float(min_foreground)
        self.pad_to = tuple(pad_to) if pad_to else None
        self.resize = tuple(resize) if resize else None
        self.transform = transform
        self._transform_takes_seed = _accepts_seed(transform)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    # -- where arrays come from (overridden by file-backed datasets) ------------------------
    def arrays(self, index: int) -> tuple[dict[str, object], Callable | None]:
        """The sample's arrays (``image`` and targets, sliceable), scalars, and the function
        that normalises an image region (None when ``image`` is already normalised)."""
        return self.samples[index], None

    def image(self, index: int) -> np.ndarray:
        """The normalised whole image (C, H, W) float32, without crop or augmentation."""
        arrays, norm = self.arrays(index)
        image = np.asarray(arrays["image"])
        return (norm(image) if norm is not None else image).astype(np.float32, copy=False)

    # -- the pipeline ----------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(index, index)

    def item(self, index: int, seed_index: int | None = None) -> dict[str, torch.Tensor]:
        """Item ``index`` with randomness drawn from ``sample_seed(seed_index)`` (the same
        index unless a sampling view remaps indices)."""
        seed = self.sample_seed(index if seed_index is None else seed_index)
        arrays, norm = self.arrays(index)
        if norm is not None and getattr(norm, "whole_image", False):
            arrays = {**arrays, "image": norm(np.asarray(arrays["image"]))}
            norm = None
        if self.crop_size is not None:
            H, W = arrays["image"].shape[-2:]
            fg = arrays.get("instances", arrays.get("semantic"))
            region = random_crop_region(
                (H, W),
                self.crop_size,
                np.random.default_rng([seed, 1]),
                foreground=fg,
                min_foreground=self.min_foreground,
            )
            sample = crop_sample(arrays, region)
        else:
            sample = {k: (np.asarray(v) if hasattr(v, "shape") else v) for k, v in arrays.items()}
        if norm is not None:
            sample["image"] = norm(sample["image"])
        sample["image"] = np.asarray(sample["image"], dtype=np.float32)
        size = (self.crop_size, self.crop_size) if self.crop_size else self.pad_to
        if size is not None:
            for key in SPATIAL_KEYS:
                if key in sample:
                    sample[key] = pad_to(sample[key], *size)
        if self.resize is not None:
            sample = resize_sample(sample, *self.resize)
        if self.transform is not None:
            if self._transform_takes_seed:
                views = self.transform(sample["image"], seed=seed)
            else:
                views = self.transform(sample["image"])
            return {"image": views, "index": torch.tensor(index)}
        if self.augment is not None:
            sample = self.augment(sample, seed=seed)
        return self._to_tensors(sample, index)

    def _to_tensors(self, sample: Mapping[str, object], index: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {
            "image": _tensor(sample["image"], np.float32),
            "index": torch.tensor(index),
        }
        if "instances" in sample:
            inst = np.asarray(sample["instances"]).astype(np.int32)
            out["instances"] = _tensor(inst, np.int32)
            for name in self.targets:
                if name in sample:  # precomputed (cache) and moved with the image
                    target = sample[name]
                else:
                    target = DERIVED_TARGETS[name](inst)
                out[name] = _tensor(target, np.float32).reshape(1, *inst.shape)
        if "semantic" in sample:
            out["semantic"] = _tensor(sample["semantic"], np.int64)
        if "depth" in sample:
            depth = _tensor(sample["depth"], np.float32)
            out["depth"] = depth.reshape(1, *depth.shape[-2:])
        for key in SCALAR_KEYS:
            if key in sample and sample[key] is not None:
                out[key] = torch.tensor(int(sample[key]), dtype=torch.int64)
        return out


def _tensor(array, dtype) -> torch.Tensor:
    """A tensor of ``array`` (copied when it is read-only, e.g. memory-mapped)."""
    a = np.asarray(array, dtype=dtype)
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a, dtype=dtype, order="C", copy=True)
    return torch.from_numpy(a)


def _accepts_seed(fn: Callable | None) -> bool:
    if fn is None:
        return False
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "seed" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
