"""Seeded, epoch-aware, resumable sampling: the order of samples and their augmentation depend
only on (seed, epoch), also under DDP, and a run resumed from a mid-epoch checkpoint continues
with exactly the samples an uninterrupted run would have seen next."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning as L
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
    ``DistributedSampler``, unless ``pad`` is off: evaluation then gives each sample to exactly
    one rank (shards differ in length by at most one), so metrics summed over the ranks count
    every sample once, as one process does.

    Rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` of the epoch's (padded) global
    order, so batch ``k`` of all ranks together holds positions ``k·B ... (k+1)·B - 1`` with
    ``B`` the global batch: the same samples as batch ``k`` of a single-process run.

    Resuming: :class:`SamplerProgress` records after every training batch how many positions
    of the global order were consumed (``samples_seen``) and whether the epoch is over;
    ``state_dict``/``load_state_dict`` carry that through a checkpoint (the DataModule saves
    it), and iteration then starts at ``start``. ``len()`` still counts the whole epoch, as
    Lightning's progress counters expect. Positions count globally, so a run may resume on a
    different number of processes with the same global batch.

    Args:
        dataset: the dataset to sample from; its ``epoch`` attribute is set when present.
        seed: base seed of the run.
        shuffle: shuffle each epoch (training) or keep the order (evaluation).
        pad: equal shards by repeating samples (needed when every step is a collective, as in
            training); without it the ranks' shards may differ by one sample.

    Example:
        >>> s = SeededSampler(list(range(10)), seed=0)
        >>> s.set_epoch(3)
        >>> full = list(s)
        >>> resumed = SeededSampler(list(range(10)), seed=0)
        >>> resumed.load_state_dict({"epoch": 3, "samples_seen": 4, "epoch_done": False})
        >>> list(resumed) == full[4:]
        True
    """

    def __init__(self, dataset, seed: int = 0, shuffle: bool = True, pad: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.shuffle = shuffle
        self.pad = bool(pad)
        self.epoch = 0
        self.start = 0
        self.samples_seen = 0
        self.epoch_done = False

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self.start, self.samples_seen, self.epoch_done = 0, 0, False
        self.epoch = int(epoch)
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = self.epoch

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "samples_seen": self.samples_seen,
            "epoch_done": self.epoch_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch, seen = int(state["epoch"]), int(state["samples_seen"])
        if state.get("epoch_done"):  # saved after the last batch of its epoch
            epoch, seen = epoch + 1, 0
        self.set_epoch(epoch)
        self.start = self.samples_seen = seen

    def global_order(self, world: int = 1) -> list[int]:
        """The epoch's order of all ranks together, padded to a multiple of ``world`` (when
        ``pad``)."""
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        if world > 1 and self.pad:
            per_rank = -(-n // world)
            order = (order * (1 + (per_rank * world) // max(n, 1)))[: per_rank * world]
        return order

    def _indices(self) -> list[int]:
        rank, world = _dist_info()
        if self.start % world:
            raise ValueError(
                f"cannot resume at position {self.start}: not a multiple of the world size {world}"
            )
        return self.global_order(world)[self.start :][rank::world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        rank, world = _dist_info()
        if self.pad:
            return -(-len(self.dataset) // world)
        return len(range(rank, len(self.dataset), world))


class SamplerProgress(L.Callback):
    """Records in the training loader's :class:`SeededSampler`, after each training batch,
    how far the epoch has come, so that a checkpoint written at that step resumes with exactly
    the samples an uninterrupted run would see next. (The loader itself cannot tell the
    batches the loop consumed from those its workers prefetched.)

    Example:
        >>> trainer = L.Trainer(callbacks=[SamplerProgress()])  # microfm's train() adds it
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loader = trainer.train_dataloader
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, SeededSampler):
            sampler.samples_seen = (batch_idx + 1) * loader.batch_size * trainer.world_size
            sampler.epoch_done = batch_idx + 1 >= trainer.num_training_batches
