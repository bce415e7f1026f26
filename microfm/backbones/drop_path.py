"""Stochastic depth whose per-sample choices come from each sample's seed.

timm's ``DropPath`` draws its keep/drop choices from the global generator, so under DDP (every
rank seeded alike) all ranks drop the same paths for their different samples, and which path a
sample loses depends on its position in the batch. :class:`SampleDropPath` draws them from the
seeds declared with :func:`microfm.utils.seeding.sample_seeds` (the training steps do), and
behaves like timm's layer outside such a block.
"""

from __future__ import annotations

import torch
from torch import nn

from microfm.utils.seeding import draw_uniform

__all__ = ["SampleDropPath", "use_sample_drop_path"]


class SampleDropPath(nn.Module):
    """Drop the residual branch of whole samples with probability ``drop_prob`` (training).

    Example:
        >>> from microfm.utils.seeding import sample_seeds
        >>> layer = SampleDropPath(0.5).train()
        >>> x = torch.ones(4, 3, 2)
        >>> with sample_seeds([0, 1, 2, 3]):
        ...     a = layer(x)
        >>> with sample_seeds([2, 3]):
        ...     b = layer(x[:2])
        >>> torch.equal(a[2:], b)
        True
    """

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        u = draw_uniform(x.device, x.shape[0])
        if u is None:  # outside sample_seeds(): the global generator, as timm
            keep = x.new_empty(x.shape[0]).bernoulli_(keep_prob)
        else:
            keep = (u < keep_prob).to(x.dtype)
        if keep_prob > 0.0 and self.scale_by_keep:
            keep = keep / keep_prob
        return x * keep.reshape((-1,) + (1,) * (x.ndim - 1))

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


def use_sample_drop_path(model: nn.Module) -> nn.Module:
    """Replace every timm ``DropPath`` in ``model`` by a :class:`SampleDropPath` (in place)."""
    from timm.layers import DropPath

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DropPath):
                setattr(parent, name, SampleDropPath(child.drop_prob, child.scale_by_keep))
    return model
