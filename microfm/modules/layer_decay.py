"""Layer-wise learning-rate decay for ViT backbones (BEiT, MAE fine-tuning, DINOv2): block
``i`` of ``depth`` trains at ``lr * decay ** (depth - i)``, the embeddings at
``lr * decay ** (depth + 1)``, the final norm at ``lr``."""

from __future__ import annotations

import re

from torch import nn

from microfm.modules.optim import param_groups

_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBEDDING = ("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token", "rope")


def layer_id(name: str, depth: int) -> int:
    """0 for embeddings and tokens, ``i + 1`` for block ``i``, ``depth + 1`` for the rest.

    Example:
        >>> layer_id("model.blocks.3.attn.qkv.weight", 12), layer_id("model.cls_token", 12)
        (4, 0)
    """
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    if any(part in name.split(".") for part in _EMBEDDING):
        return 0
    return depth + 1


def layerwise_groups(
    backbone: nn.Module, lr: float, weight_decay: float, decay: float, depth: int
) -> list[dict]:
    """AdamW parameter groups of ``backbone`` with layer-wise decayed learning rates (no weight
    decay on norms, biases and tokens). ``decay=1`` gives the two plain backbone groups."""
    if not 0.0 < decay <= 1.0:
        from microfm.errors import ConfigError

        raise ConfigError(f"task.layer_decay must be in (0, 1], got {decay}")
    if decay == 1.0:
        return param_groups(backbone.named_parameters(), lr, weight_decay, "backbone")
    by_layer: dict[int, list] = {}
    for name, p in backbone.named_parameters():
        by_layer.setdefault(layer_id(name, depth), []).append((name, p))
    groups = []
    for lid in sorted(by_layer):
        scale = decay ** (depth + 1 - lid)
        groups += param_groups(by_layer[lid], lr * scale, weight_decay, f"backbone_layer{lid}")
    return groups
