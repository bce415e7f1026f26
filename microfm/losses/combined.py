"""Weighted sums of losses, and the semantic-segmentation losses by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from microfm.losses.cross_entropy import CrossEntropyLoss
from microfm.losses.dice import DiceLoss
from microfm.losses.tversky import TverskyLoss


class CombinedLoss(nn.Module):
    """Σ weight_i · loss_i(pred, target) over named terms; ``last`` holds the detached terms of
    the latest call (for logging).

    Example:
        >>> loss = CombinedLoss({"ce": CrossEntropyLoss(2), "dice": DiceLoss()}, {"dice": 0.5})
        >>> value = loss(torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4)))
        >>> sorted(loss.last)
        ['ce', 'dice']
    """

    def __init__(
        self, terms: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None
    ) -> None:
        super().__init__()
        unknown = set(weights or {}) - set(terms)
        if unknown:
            raise ValueError(f"weights for unknown loss terms {sorted(unknown)}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in terms}
        self.last: dict[str, float] = {}

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = {name: term(pred, target) for name, term in self.terms.items()}
        self.last = {k: float(v.detach()) for k, v in values.items()}
        return sum(self.weights[k] * v for k, v in values.items())


SEGMENTATION_LOSSES = ("ce", "ce_dice", "ce_tversky")


def segmentation_loss(
    name: str = "ce_dice",
    num_classes: int = 2,
    class_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -1,
    region_weight: float = 1.0,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    include_background: bool = True,
) -> nn.Module:
    """``ce``, ``ce_dice`` (CE + region_weight · Dice) or ``ce_tversky`` (CE + region_weight ·
    Tversky(α, β)).

    Example:
        >>> type(segmentation_loss("ce_tversky", 3)).__name__
        'CombinedLoss'
    """
    if name not in SEGMENTATION_LOSSES:
        from microfm.errors import ConfigError

        raise ConfigError(
            f"task.loss.name must be one of {list(SEGMENTATION_LOSSES)}, got {name!r}"
        )
    ce = CrossEntropyLoss(num_classes, class_weights, label_smoothing, ignore_index)
    if name == "ce":
        return ce
    if name == "ce_dice":
        region: nn.Module = DiceLoss(ignore_index, include_background=include_background)
    else:
        region = TverskyLoss(
            tversky_alpha, tversky_beta, ignore_index, include_background=include_background
        )
    return CombinedLoss({"ce": ce, name[3:]: region}, {name[3:]: region_weight})
