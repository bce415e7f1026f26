"""Collectives for losses: autograd-aware gathers (``torch.distributed.nn``) and no-grad
all-reduces. Every function is the identity when no process group is initialised, so the
same loss code runs in one process and under DDP."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every process) from all processes along dim 0, with
    gradients flowing back to each process's own slice (``torch.distributed.nn``: the backward
    pass sums the gradient of every process's loss).

    Example:
        >>> all_gather_grad(torch.ones(2, 3)).shape  # one process
        torch.Size([2, 3])
    """
    if not is_distributed() or world_size() == 1:
        return x
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # recent torch marks it deprecated; it is still the public
        warnings.simplefilter("ignore", FutureWarning)  # autograd-aware gather
        return torch.cat(all_gather(x), dim=0)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over all processes (a new tensor; no gradient)."""
    x = x.detach().clone()
    if is_distributed() and world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x
