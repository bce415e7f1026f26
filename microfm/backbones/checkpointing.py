"""Activation (gradient) checkpointing of ViT blocks that keeps the residual-stream products.

Plain checkpointing keeps each block's input and recomputes the whole block in the backward
pass. Under LoRA (or with most weights frozen) the backward pass computes almost no weight
gradients and costs about one forward, so recomputing the forward adds close to half a step.

A ViT block has four weight products per token: ``qkv`` (D→3D), the attention projection
(D→D), ``fc1`` (D→hD) and ``fc2`` (hD→D). The two that write the residual stream, the attention
projection and ``fc2``, have outputs of width D, as small as the block input that checkpointing
keeps anyway, and the backward pass needs neither output for anything but recomputing cheap
element-wise operations after them. Selective checkpointing keeps those two outputs and
recomputes everything else: about 5/12 of the block's matrix products are not recomputed, for
two more (B, N, D) tensors per block.

The blocks are changed in place (an instance-level ``forward``), so parameter names, state
dicts and LoRA wrapping are untouched; the timm model's own ``grad_checkpointing`` flag stays
off so blocks are not checkpointed twice.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
    noop_context_fn,
)

from microfm.errors import ConfigError
from microfm.utils.seeding import replayable

__all__ = ["checkpointing_mode", "enable_grad_checkpointing", "grad_checkpointing_enabled"]

_aten = torch.ops.aten
_PRODUCTS = {_aten.mm.default: 1, _aten.addmm.default: 2}  # op -> index of the weight matrix


def checkpointing_mode(value: bool | str | None) -> str:
    """``off``, ``selective`` or ``full`` for a ``backbone.grad_checkpointing`` setting
    (``false``/``true``/``selective``/``full``)."""
    if value is None or value is False or value == "off":
        return "off"
    if value is True or value == "selective":
        return "selective"
    if value == "full":
        return "full"
    raise ConfigError(
        f"backbone.grad_checkpointing must be false, true (selective), selective or full, "
        f"got {value!r}"
    )


def _keep_products_of_width(width: int):
    """A selective-checkpointing policy: keep the outputs of matrix products ``width`` wide
    (the residual stream), recompute every other operation."""

    def policy(ctx, op, *args, **kwargs):
        index = _PRODUCTS.get(op)
        if index is not None and args[index].shape[-1] == width:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return functools.partial(create_selective_checkpoint_contexts, policy)


def _checkpointed_forward(block: nn.Module, context_fn, *args, **kwargs):
    if not torch.is_grad_enabled():
        return type(block).forward(block, *args, **kwargs)
    # recomputed in the backward pass with the same per-sample drop-path choices
    forward = replayable(functools.partial(type(block).forward, block))
    return checkpoint(forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs)


def enable_grad_checkpointing(model: nn.Module, keep_residual: bool = True) -> nn.Module:
    """Checkpoint every block of a timm ViT/EVA ``model`` in place.

    Args:
        model: a timm model with ``blocks`` and ``embed_dim``.
        keep_residual: keep the outputs of the products that write the residual stream
            (selective checkpointing, see the module doc); False recomputes whole blocks.

    Returns:
        ``model``.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
        >>> grad_checkpointing_enabled(enable_grad_checkpointing(vit))
        True
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "embed_dim"):
        raise TypeError(f"gradient checkpointing needs a ViT with blocks, not {type(model)}")
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(False)
    context_fn = _keep_products_of_width(int(model.embed_dim)) if keep_residual else noop_context_fn
    for block in blocks:
        block.forward = functools.partial(_checkpointed_forward, block, context_fn)
    return model


def grad_checkpointing_enabled(model: nn.Module) -> bool:
    """Whether :func:`enable_grad_checkpointing` was applied to ``model``'s blocks."""
    blocks = getattr(model, "blocks", None) or []
    return any(isinstance(b.__dict__.get("forward"), functools.partial) for b in blocks)
