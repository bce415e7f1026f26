"""A map-style dataset of images with dense targets, normalised once and augmented per sample."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from microfm.transforms.intensity import percentile_normalize
from microfm.transforms.targets import distance_map

# Targets computed from the (augmented) instance labels on the fly.
DERIVED_TARGETS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"dist": distance_map}


class DenseDataset(Dataset):
    """In-memory samples -> training dicts of tensors.

    Each raw sample is a dict with ``image`` ((C, H, W), any dtype) and any of ``instances``,
    ``semantic``, ``depth`` (H, W) and ``label`` (int). Images are normalised per channel from
    whole-image percentiles once, at construction. Items are dicts with ``image`` float32
    (C, H, W), ``instances`` int32 (H, W), ``semantic`` int64 (H, W), ``depth`` float32
    (1, H, W), ``label`` int64, requested derived ``targets`` such as ``dist`` float32
    (1, H, W), and ``index``.

    Args:
        samples: the raw samples.
        augment: callable ``(sample, seed) -> sample`` or None.
        targets: names of derived targets to compute after augmentation (see DERIVED_TARGETS).
        seed: run seed; an item's augmentation seed is derived from (seed, epoch, index).
        normalize: keyword arguments of :func:`percentile_normalize`.
    """

    def __init__(
        self,
        samples: Sequence[Mapping[str, object]],
        augment: Callable[[dict, int], dict] | None = None,
        targets: Sequence[str] = (),
        seed: int = 0,
        normalize: Mapping[str, float] | None = None,
    ) -> None:
        unknown = sorted(set(targets) - set(DERIVED_TARGETS))
        if unknown:
            raise ValueError(f"unknown derived targets {unknown}; known: {sorted(DERIVED_TARGETS)}")
        norm = dict(normalize or {})
        self.samples = []
        for s in samples:
            item = dict(s)
            item["image"] = percentile_normalize(np.asarray(s["image"]), **norm)
            self.samples.append(item)
        self.augment = augment
        self.targets = tuple(targets)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def sample_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = dict(self.samples[index])
        if self.augment is not None:
            sample = self.augment(sample, seed=self.sample_seed(index))
        out: dict[str, torch.Tensor] = {
            "image": torch.from_numpy(np.ascontiguousarray(sample["image"], dtype=np.float32)),
            "index": torch.tensor(index),
        }
        if "instances" in sample:
            inst = np.ascontiguousarray(sample["instances"]).astype(np.int32)
            out["instances"] = torch.from_numpy(inst)
            for name in self.targets:
                out[name] = torch.from_numpy(DERIVED_TARGETS[name](inst))[None]
        if "semantic" in sample:
            out["semantic"] = torch.from_numpy(np.asarray(sample["semantic"]).astype(np.int64))
        if "depth" in sample:
            depth = np.asarray(sample["depth"], dtype=np.float32)
            out["depth"] = torch.from_numpy(np.ascontiguousarray(depth))[None]
        if "label" in sample:
            out["label"] = torch.tensor(int(sample["label"]), dtype=torch.int64)
        return out
