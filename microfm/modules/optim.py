"""Optimiser and learning-rate schedule (plain torch): AdamW with separate learning rates for
heads and backbone, no weight decay on norms, biases and tokens, linear warm-up + cosine."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from microfm.errors import ConfigError

log = logging.getLogger(__name__)

_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token")


# optim.lr_scaling: factor of the learning rates for W processes
_LR_SCALING = {"none": lambda w: 1.0, "linear": float, "sqrt": math.sqrt}


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias") or any(n in name for n in _NO_DECAY_NAMES)


def param_groups(
    named_params: Iterable[tuple[str, torch.Tensor]], lr: float, weight_decay: float, group: str
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group."""
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if _no_decay(name, p) else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": group})
    if no_decay:
        groups.append(
            {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{group}_no_decay"}
        )
    return groups


class OptimConfig:
    """Optimiser settings (the ``optim`` config group).

    Args:
        lr: learning rate of the heads.
        lr_backbone: learning rate of the backbone; ``"auto"`` is ``lr / 10`` for pretrained
            weights and ``lr`` for a randomly initialised backbone.
        weight_decay: AdamW weight decay (not applied to norms, biases and tokens).
        betas: AdamW betas.
        warmup: fraction of the total steps (< 1) or number of steps (>= 1) of linear warm-up.
        min_lr_ratio: final learning rate of the cosine as a fraction of the peak.
        scheduler: ``cosine`` or ``constant`` (after warm-up).
        lr_scaling: how both learning rates grow with the number of processes ``W``:
            ``linear`` (× W), ``sqrt`` (× √W) or ``none``. ``data.batch_size`` is the global
            batch, so ``none`` keeps a run the same on any number of devices.

    Example:
        >>> OptimConfig(lr=1e-3, lr_scaling="sqrt").scale(4)
        2.0
    """

    def __init__(
        self,
        lr: float = 1e-4,
        lr_backbone: float | str = "auto",
        weight_decay: float = 0.05,
        betas: Sequence[float] = (0.9, 0.999),
        warmup: float = 0.05,
        min_lr_ratio: float = 0.01,
        scheduler: str = "cosine",
        lr_scaling: str = "none",
    ) -> None:
        if lr <= 0:
            raise ConfigError(f"optim.lr must be positive, got {lr}")
        if not (
            lr_backbone == "auto" or (isinstance(lr_backbone, (int, float)) and lr_backbone >= 0)
        ):
            raise ConfigError(f"optim.lr_backbone must be 'auto' or >= 0, got {lr_backbone!r}")
        if scheduler not in ("cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be 'cosine' or 'constant', got {scheduler!r}")
        if lr_scaling not in _LR_SCALING:
            raise ConfigError(
                f"optim.lr_scaling must be one of {', '.join(_LR_SCALING)}, got {lr_scaling!r}"
            )
        self.lr = float(lr)
        self.lr_backbone = lr_backbone
        self.weight_decay = float(weight_decay)
        self.betas = tuple(float(b) for b in betas)
        self.warmup = float(warmup)
        self.min_lr_ratio = float(min_lr_ratio)
        self.scheduler = scheduler
        self.lr_scaling = lr_scaling

    def scale(self, world_size: int) -> float:
        """Factor applied to the learning rates with ``world_size`` processes."""
        return _LR_SCALING[self.lr_scaling](max(1, int(world_size)))

    def backbone_lr(self, pretrained: bool) -> float:
        if self.lr_backbone == "auto":
            return self.lr / 10.0 if pretrained else self.lr
        return float(self.lr_backbone)

    def build(
        self,
        backbone: nn.Module,
        heads: nn.Module,
        pretrained: bool,
        total_steps: int,
        world_size: int = 1,
    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
        factor = self.scale(world_size)
        if factor != 1.0:
            log.info("optim.lr_scaling=%s: learning rates x %.4g", self.lr_scaling, factor)
        groups = param_groups(
            backbone.named_parameters(),
            self.backbone_lr(pretrained) * factor,
            self.weight_decay,
            "backbone",
        )
        groups += param_groups(
            heads.named_parameters(), self.lr * factor, self.weight_decay, "head"
        )
        if not groups:
            raise ConfigError("nothing to train: every parameter is frozen")
        optimizer = torch.optim.AdamW(groups, betas=self.betas)
        warmup = int(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
        schedule = warmup_cosine(total_steps, warmup, self.min_lr_ratio, self.scheduler)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float, kind: str = "cosine"):
    """Multiplier of the peak learning rate at each step: linear warm-up, then cosine decay to
    ``min_ratio`` (or constant)."""
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
