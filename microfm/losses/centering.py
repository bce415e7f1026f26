"""Teacher centering for self-distillation (DINO, iBOT): a running mean of the teacher logits
subtracted before the sharpened softmax, or Sinkhorn–Knopp normalisation (SwAV, DINOv2).

Both reduce over all processes: the running mean averages the teacher logits of the global
batch; Sinkhorn–Knopp balances the assignments over the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from microfm.distributed.gather import all_reduce_sum

CENTERINGS = ("mean", "sinkhorn")


def _all_logsumexp_rows(x: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the rows (dim 0) of ``x`` on every process together: (1, K)."""
    if x.shape[0]:
        m = x.amax(dim=0, keepdim=True)
    else:
        m = torch.full((1, x.shape[1]), -torch.inf, dtype=x.dtype, device=x.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX)
    return m + all_reduce_sum(torch.exp(x - m).sum(dim=0, keepdim=True)).log()


@torch.no_grad()
def sinkhorn_knopp(logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """Teacher assignments (M, K) balanced over the prototypes by Sinkhorn–Knopp, over the rows
    of every process together: DINOv2's ``sinkhorn_knopp_teacher``, computed in the log domain
    (the same result, without overflow or underflow at low temperatures).

    Args:
        logits: teacher logits (M, K) of this process (M may differ between processes).
        temperature: teacher temperature.
        iterations: normalisation rounds.

    Returns:
        (M, K) rows summing to one.

    Example:
        >>> q = sinkhorn_knopp(torch.randn(6, 4), 0.1)
        >>> torch.allclose(q.sum(1), torch.ones(6))
        True
    """
    log_q = logits.float() / temperature
    K = log_q.shape[1]
    B = all_reduce_sum(torch.tensor(float(log_q.shape[0]), device=log_q.device))
    log_k, log_b = math.log(K), torch.log(B)
    for _ in range(int(iterations)):
        log_q = log_q - _all_logsumexp_rows(log_q) - log_k  # each prototype: total 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_b  # each row: 1/B
    return torch.exp(log_q + log_b)


class TeacherCentering(nn.Module):
    """Turns teacher logits into target probabilities.

    ``mean``: ``softmax((t - c) / T)`` with ``c`` a running mean of the teacher logits. The
    logits seen during an optimiser step are accumulated and :meth:`update` moves the center
    once per step, with the mean over all processes and micro-batches (so gradient accumulation
    does not change the schedule). ``sinkhorn``: :func:`sinkhorn_knopp` (no state).

    Args:
        dim: number of prototypes K.
        mode: ``mean`` or ``sinkhorn``.
        momentum: center momentum (``c <- m c + (1 - m) mean``).
        iterations: Sinkhorn–Knopp rounds.

    Example:
        >>> c = TeacherCentering(4)
        >>> p = c.probs(torch.randn(8, 4), temperature=0.04)
        >>> c.update()
        >>> tuple(p.shape), bool(c.center.abs().sum() > 0)
        ((8, 4), True)
    """

    def __init__(
        self, dim: int, mode: str = "mean", momentum: float = 0.9, iterations: int = 3
    ) -> None:
        super().__init__()
        if mode not in CENTERINGS:
            raise ValueError(f"centering must be one of {CENTERINGS}, got {mode!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
        self.mode = mode
        self.momentum = float(momentum)
        self.iterations = int(iterations)
        self.register_buffer("center", torch.zeros(1, dim))
        self._sum: torch.Tensor | None = None
        self._count = 0

    @torch.no_grad()
    def probs(self, logits: torch.Tensor, temperature: float, record: bool = True) -> torch.Tensor:
        """Target probabilities (M, K) from teacher logits (M, K); with ``record`` the logits
        count toward the next center update (mean mode)."""
        if self.mode == "sinkhorn":
            return sinkhorn_knopp(logits, temperature, self.iterations)
        logits = logits.float()
        if record:
            s = logits.sum(dim=0, keepdim=True)
            self._sum = s if self._sum is None else self._sum + s
            self._count += logits.shape[0]
        return F.softmax((logits - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self) -> None:
        """Move the center to the mean of the recorded logits (all processes), then forget
        them. Call once per optimiser step, on every process."""
        if self.mode != "mean":
            return
        local = (
            self._sum
            if self._sum is not None
            else torch.zeros_like(self.center)  # a process may have seen nothing: still reduce
        )
        total = all_reduce_sum(torch.cat([local.reshape(-1), local.new_tensor([self._count])]))
        self._sum, self._count = None, 0
        count = float(total[-1])
        if count == 0:
            return
        batch_center = (total[:-1] / count).reshape_as(self.center)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1.0 - self.momentum)

    def pending(self) -> int:
        """Number of logit rows recorded since the last update."""
        return self._count


class CenteredTeacherLoss(nn.Module):
    """What the DINO and iBOT losses share: the student temperature and the centering of the
    teacher logits (each loss keeps its own centering state).

    Args:
        out_dim: number of prototypes K.
        student_temp: student temperature.
        centering: ``mean`` or ``sinkhorn``.
        center_momentum: running-mean momentum.
        sinkhorn_iterations: Sinkhorn–Knopp rounds.
    """

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        centering: str = "mean",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        self.student_temp = float(student_temp)
        self.centering = TeacherCentering(out_dim, centering, center_momentum, sinkhorn_iterations)

    def update_center(self) -> None:
        """Apply the recorded teacher logits to the center (once per optimiser step)."""
        self.centering.update()
