"""Multitask training in a real 2-process gloo DDP group (``DistributedDataParallel`` without
``find_unused_parameters``) against one process on the same global batches, for every loss
weighting, with batches where a task has targets on one rank only or on none."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from microfm.losses import build_weighting
from tests.test_multitask import NAMES, _batch, _module

WORLD = 2
GLOBAL = 4  # samples per global batch
STEPS = 3


def _global_batch(step: int) -> dict:
    torch.manual_seed(100 + step)
    batch = _batch(B=GLOBAL)
    batch["label"] = torch.tensor([0, 2, 1, 0])
    if step == 0:  # classification labels on rank 1's samples only, depth on rank 0's only
        batch["label"][:2] = -1
        batch["depth"][2:] = 0.0
    elif step == 1:  # no depth at all, no classification label anywhere
        del batch["depth"]
        batch["label"][:] = -1
    return batch


def _shard(batch: dict, rank: int) -> dict:
    per = GLOBAL // WORLD
    return {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}


class _Step(nn.Module):
    """What Lightning's DDP wrapper does: the forward of the wrapped model is the step."""

    def __init__(self, module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch):
        return self.module.training_step(batch, 0)


def _train(mode: str, rank: int | None) -> dict[str, object]:
    """``STEPS`` SGD steps; ``rank`` None: one process on the global batches."""
    torch.manual_seed(0)
    module = _module(build_weighting(NAMES, mode))
    module.log = lambda *a, **k: None
    module.train()
    step = _Step(module) if rank is None else DistributedDataParallel(_Step(module))
    opt = torch.optim.SGD(module.parameters(), lr=0.05)
    losses = []
    for i in range(STEPS):
        batch = _global_batch(i)
        opt.zero_grad()
        loss = step(batch if rank is None else _shard(batch, rank))
        loss.backward()
        module.on_after_backward()
        opt.step()
        module.on_train_batch_end(None, batch, i)
        loss = loss.detach()
        if rank is not None:  # DDP averages the ranks' losses
            dist.all_reduce(loss)
            loss = loss / WORLD
        losses.append(loss)
    return {
        "losses": torch.stack(losses),
        "params": {k: v.detach().clone() for k, v in module.named_parameters()},
    }


def _worker(rank: int, folder: str, mode: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        torch.save(_train(mode, rank), f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("mode", ["fixed", "uncertainty", "gradnorm"])
def test_multitask_ddp_equals_one_process(tmp_path, mode):
    """Before: 'Expected to have finished reduction in the prior iteration' (the heads of
    tasks without targets and GradNorm's weights were outside the graph)."""
    mp.spawn(_worker, args=(str(tmp_path), mode), nprocs=WORLD, join=True)
    single = _train(mode, None)
    assert torch.isfinite(single["losses"]).all()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["losses"], single["losses"], rtol=1e-5, atol=1e-6)
        assert set(got["params"]) == set(single["params"])
        for name, value in single["params"].items():
            torch.testing.assert_close(
                got["params"][name],
                value,
                rtol=1e-4,
                atol=1e-6,
                msg=lambda m, n=name, r=rank: f"rank {r} {n}: {m}",
            )


# ----------------------------------------------------------------------------- evaluation
N_EVAL = 5  # not a multiple of the world size: one rank evaluates a sample more
EVAL_BATCH = 2  # per process


def _eval_data() -> list[dict]:
    """Five samples; classification labels on the even positions only, which the unpadded
    shards of 2 ranks give to rank 0 alone (rank 1 has no sample of that task)."""
    torch.manual_seed(7)
    batch = _batch(B=N_EVAL)
    batch["label"] = torch.tensor([0, -1, 2, -1, 1])
    return [{k: v[i] for k, v in batch.items()} for i in range(N_EVAL)]


def _evaluate(world: int) -> dict[str, float]:
    """Test epoch of the module on the sampler's shard of ``_eval_data`` for this process;
    returns what the module logged."""
    from torch.utils.data import DataLoader

    from microfm.data.sampling import SeededSampler

    torch.manual_seed(0)
    module = _module(build_weighting(NAMES, "uncertainty"))
    module.eval()
    logged: dict[str, float] = {}
    module.log = lambda key, value, **k: logged.__setitem__(key, float(value))
    data = _eval_data()
    sampler = SeededSampler(data, shuffle=False, pad=module.eval_steps_are_collective)
    loader = DataLoader(data, batch_size=EVAL_BATCH * (WORLD // world), sampler=sampler)
    module.on_test_epoch_start()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            module.test_step(batch, i)
    module.on_test_epoch_end()
    return logged


def _eval_worker(rank: int, folder: str) -> None:
    from datetime import timedelta

    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/init",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),  # a rank left out of a collective fails, not hangs
    )
    try:
        torch.set_num_threads(1)
        torch.save(_evaluate(WORLD), f"{folder}/eval{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_ddp_evaluation_counts_each_sample_once_and_every_rank_computes(tmp_path):
    """5 test samples on 2 ranks, classification labels on rank 0's samples only: both ranks
    log exactly the single-process losses and metrics. Before: the padded shard evaluated
    sample 0 twice (test/classify/acc 0.25 instead of 0.333), and rank 1 skipped the
    classification metric's compute() (a collective rank 0 waited in) and logged other keys."""
    mp.spawn(_eval_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    single = _evaluate(1)
    assert {"test/loss", "test/classify/acc", "test/cellseg/loss", "test/depth/loss"} <= set(single)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"eval{rank}.pt")
        assert set(got) == set(single), rank
        for key, value in single.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (rank, key)
