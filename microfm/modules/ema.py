"""Momentum (EMA) teacher: the cosine momentum schedule and the in-place update (plain torch;
the DINO module calls :func:`ema_update` once per optimiser step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Momentum at optimiser step ``step``: ``base`` at step 0, rising to ``final`` at
    ``total_steps`` along a half cosine (DINO, BYOL).

    Example:
        >>> cosine_momentum(0, 100, 0.996), cosine_momentum(100, 100, 0.996)
        (0.996, 1.0)
    """
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def teacher_copy(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` with gradients off, in eval mode."""
    import copy

    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter, and a
    copy of floating-point buffers. Both modules must have the same parameter names.

    Example:
        >>> s, t = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> ema_update(t, s, 0.0)
        >>> bool(torch.equal(t.weight, s.weight))
        True
    """
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(t_params) ^ set(s_params))[:5]
        raise ValueError(f"teacher and student parameters differ: {missing}")
    names = list(t_params)
    t_list = [t_params[n] for n in names]
    s_list = [s_params[n].detach().to(t_params[n].dtype) for n in names]
    torch._foreach_lerp_(t_list, s_list, 1.0 - float(momentum))
    s_buffers = dict(student.named_buffers())
    for name, buf in teacher.named_buffers():
        if name in s_buffers and buf.is_floating_point():
            buf.copy_(s_buffers[name])
