"""LightningDataModule base: loaders, seeded sampling, worker count and batch-size checks."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from microfm.data.sampling import SeededSampler
from microfm.errors import ConfigError

STAGES = ("train", "val", "test")


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"``: no worker processes on machines with two cores or fewer (the main process is
    faster there), otherwise half the cores, at most 8."""
    if num_workers == "auto":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return 0 if (cores or 1) <= 2 else min(8, (cores or 2) // 2)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ConfigError(
            f"data.num_workers must be 'auto' or an integer >= 0, got {num_workers!r}"
        )
    return num_workers


class MicroscopyDataModule(L.LightningDataModule):
    """Common machinery of microfm's DataModules.

    Subclasses implement :meth:`build_datasets`, returning a dict ``{"train": ds, "val": ds,
    "test": ds}``; this class checks them and serves seeded, epoch-aware loaders.

    Args:
        batch_size: samples per batch, in total over all processes: under DDP each of the
            ``world_size`` processes loads ``batch_size / world_size`` samples.
        num_workers: loader worker processes, or ``"auto"``.
        seed: run seed (sampling order and augmentation).
        in_chans: number of image channels the datasets deliver.
        targets: derived targets the task needs (e.g. ``["dist"]``).
        augment: training augmentation, a callable ``(sample, seed) -> sample``.
        pin_memory: pin host memory for faster GPU transfers.
    """

    # datasets with several sources name them here (index = the batch's ``domain``)
    domain_names: tuple[str, ...] = ()

    def __init__(
        self,
        batch_size: int = 8,
        num_workers: int | str = "auto",
        seed: int = 0,
        in_chans: int = 1,
        targets: Sequence[str] = (),
        augment: Callable | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"data.batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.num_workers = resolve_num_workers(num_workers)
        self.seed = int(seed)
        self.in_chans = int(in_chans)
        self.targets = tuple(targets)
        self.augment = augment
        self.pin_memory = pin_memory
        self.datasets: dict[str, Dataset] = {}
        self._train_sampler: SeededSampler | None = None
        self._train_sampler_state: dict | None = None  # from a checkpoint, for the next loader

    def build_datasets(self) -> dict[str, Dataset]:
        raise NotImplementedError

    def channel_stats(self, max_images: int = 256) -> tuple[list[float], list[float]]:
        """Per-channel mean and standard deviation of the model-input images of the training
        split (normalised, before crops and augmentation), over at most ``max_images`` evenly
        spaced images. Computed once and cached (subclasses may also cache on disk).
        """
        cached = getattr(self, "_channel_stats", None)
        if cached is not None:
            return cached
        self.setup()
        ds = self.datasets["train"]
        n = len(ds)
        indices = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int))
        total = total_sq = count = 0
        for i in indices:
            x = np.asarray(ds.image(int(i)), dtype=np.float64).reshape(self.in_chans, -1)
            total = total + x.sum(axis=1)
            total_sq = total_sq + (x**2).sum(axis=1)
            count += x.shape[1]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        self._channel_stats = ([float(v) for v in mean], [float(v) for v in std])
        return self._channel_stats

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        datasets = self.build_datasets()
        train = datasets.get("train")
        # only training needs a full batch; evaluation and feature extraction never batch it
        if stage == "fit" and train is not None and len(train) < self.batch_size:
            raise ConfigError(
                f"data.batch_size={self.batch_size} is larger than the training set "
                f"({len(train)} samples): lower data.batch_size or add data"
            )
        for split, ds in datasets.items():
            if len(ds) == 0:
                raise ConfigError(f"the {split} split of data={type(self).__name__} is empty")
        self.datasets = datasets

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        ds = self.datasets[split]
        # evaluation gives each sample to one rank only, unless the module's evaluation steps
        # are collectives (SSL losses), which need the same number of batches on every rank
        module = getattr(getattr(self, "trainer", None), "lightning_module", None)
        pad = shuffle or getattr(module, "eval_steps_are_collective", True)
        sampler = SeededSampler(ds, seed=self.seed, shuffle=shuffle, pad=pad)
        if shuffle:
            self._train_sampler = sampler
            if self._train_sampler_state:  # a resumed fit continues mid-epoch
                sampler.load_state_dict(self._train_sampler_state)
                self._train_sampler_state = None
        world = getattr(getattr(self, "trainer", None), "world_size", 1) or 1
        if self.batch_size % world:
            raise ConfigError(
                f"data.batch_size={self.batch_size} (the global batch) is not divisible by the "
                f"{world} processes (trainer.devices x trainer.num_nodes)"
            )
        return DataLoader(
            ds,
            batch_size=self.batch_size // world,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and self._on_gpu(),
            drop_last=shuffle and len(ds) >= 2 * self.batch_size,
            persistent_workers=False,  # workers must see the epoch that set_epoch stored
        )

    def state_dict(self) -> dict:
        """Position of the training sampler in its epoch (Lightning saves it in checkpoints)."""
        return self._train_sampler.state_dict() if self._train_sampler is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_sampler_state = dict(state_dict) or None

    def _on_gpu(self) -> bool:
        trainer = getattr(self, "trainer", None)
        return bool(
            trainer is not None and trainer.accelerator.__class__.__name__ == "CUDAAccelerator"
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
