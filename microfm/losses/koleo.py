"""KoLeo regulariser (Sablayrolles et al. 2019, as in DINOv2): spreads features over the
sphere by penalising small distances to each feature's nearest neighbour in the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from microfm.distributed.gather import all_gather_grad, rank


class KoLeoLoss(nn.Module):
    """``-mean_i log(||x_i - x_nn(i)|| + eps)`` over L2-normalised features.

    Args:
        eps: added inside the distance and the logarithm.
        gather: search nearest neighbours among the features of every process (global batch),
            with gradients flowing back through the gather; otherwise within this process's
            batch (DINOv2's choice). The same in a single process.

    Example:
        >>> KoLeoLoss()(torch.randn(8, 16)).ndim
        0
    """

    def __init__(self, eps: float = 1e-8, gather: bool = False) -> None:
        super().__init__()
        self.eps = float(eps)
        self.gather = bool(gather)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Loss of features (B, D) of this process (averaged over its B samples)."""
        x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
        bank = all_gather_grad(x) if self.gather else x
        offset = rank() * x.shape[0] if bank is not x else 0
        with torch.no_grad():
            sim = x @ bank.t()
            idx = torch.arange(x.shape[0], device=x.device)
            sim[idx, idx + offset] = -2.0  # never one's own neighbour
            nn_idx = sim.argmax(dim=1)
        dist = F.pairwise_distance(x, bank[nn_idx], p=2, eps=self.eps)
        return -(dist + self.eps).log().mean()
