"""Datasets over files: records read through a :class:`SampleStore`, and a domain-balanced view."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from microfm.data.dense import DenseDataset
from microfm.data.records import Record
from microfm.data.store import SampleStore


class FileDataset(DenseDataset):
    """A :class:`DenseDataset` whose samples are files (through the store and its cache).

    Args:
        records: the samples.
        store: reads, validates and caches the records.
        cached_targets: serve derived targets (``dist``) from the cache instead of computing
            them per item; only valid when items are neither cropped nor augmented
            (evaluation).
        **kwargs: see :class:`DenseDataset` (``augment``, ``targets``, ``seed``,
            ``crop_size``, ``min_foreground``, ``pad_to``, ``resize``, ``transform``).

    Example:
        >>> ds = FileDataset(records, SampleStore(Normalizer()), crop_size=256)  # doctest: +SKIP
    """

    def __init__(
        self,
        records: Sequence[Record],
        store: SampleStore,
        cached_targets: bool = False,
        **kwargs,
    ) -> None:
        super().__init__((), **kwargs)
        self.records = list(records)
        self.store = store
        self.cached_targets = bool(cached_targets)

    def __len__(self) -> int:
        return len(self.records)

    def arrays(self, index: int) -> tuple[dict[str, object], Callable]:
        derived = self.targets if self.cached_targets else ()
        return self.store.arrays(self.records[index], derived)


class DomainBalancedDataset(Dataset):
    """Each index draws a domain uniformly, then a sample of that domain uniformly.

    The draw is a function of (seed, epoch, index), so the view works with any sampler: under
    DDP, :class:`~microfm.data.sampling.SeededSampler` gives each rank different indices and
    therefore independent draws, and the whole epoch is balanced without communication. The
    length (samples per epoch) is that of the wrapped dataset; ``index`` in the batch is the
    drawn sample's own index.

    Args:
        dataset: a :class:`DenseDataset` (or subclass) exposing ``item`` and ``seed``.
        domains: domain of each sample of ``dataset``.

    Example:
        >>> view = DomainBalancedDataset(ds, domains=[0, 0, 0, 1])  # doctest: +SKIP
    """

    def __init__(self, dataset: DenseDataset, domains: Sequence[int]) -> None:
        if len(domains) != len(dataset):
            raise ValueError(f"{len(domains)} domains for {len(dataset)} samples")
        self.dataset = dataset
        groups: dict[int, list[int]] = defaultdict(list)
        for i, d in enumerate(domains):
            groups[int(d)].append(i)
        self.groups = [groups[d] for d in sorted(groups)]

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        self.dataset.epoch = int(value)

    @property
    def seed(self) -> int:
        return self.dataset.seed

    def sample_seed(self, index: int) -> int:
        return self.dataset.sample_seed(index)

    def draw(self, index: int) -> int:
        """The sample index that position ``index`` draws in the current epoch."""
        rng = np.random.default_rng([self.dataset.seed, self.dataset.epoch, index, 2])
        group = self.groups[int(rng.integers(len(self.groups)))]
        return group[int(rng.integers(len(group)))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.dataset.item(self.draw(index), seed_index=index)

    def image(self, index: int) -> np.ndarray:
        return self.dataset.image(index)
