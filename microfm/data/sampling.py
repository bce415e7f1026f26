"""Seeded, epoch-aware sampling: the order of samples and their augmentation depend only on
(seed, epoch), also under DDP and after a resume."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class SeededSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and shards across DDP ranks.

    ``set_epoch`` (called by Lightning before every training epoch) also tells the dataset the
    epoch, so that per-sample augmentation seeds change between epochs. Every rank receives the
    same number of indices (the permutation is padded by wrapping around), as with
    ``DistributedSampler``.

    Args:
        dataset: the dataset to sample from; its ``epoch`` attribute is set when present.
        seed: base seed of the run.
        shuffle: shuffle each epoch (training) or keep the order (evaluation).
    """

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = self.epoch

    def _indices(self) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        rank, world = _dist_info()
        if world > 1:
            per_rank = -(-n // world)
            order = (order * (1 + (per_rank * world) // max(n, 1)))[: per_rank * world]
            order = order[rank::world]
        return order

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        _, world = _dist_info()
        return -(-len(self.dataset) // world)
