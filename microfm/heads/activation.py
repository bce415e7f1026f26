"""Output activations of dense heads, by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "sigmoid", "softplus", "relu")


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"head.activation must be one of {list(ACTIVATIONS)}, got {name!r}")
    return name


def apply_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """``none`` (logits, log-depth), ``sigmoid`` ([0, 1] maps), ``softplus``/``relu`` (>= 0)."""
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "relu":
        return F.relu(x)
    return x
