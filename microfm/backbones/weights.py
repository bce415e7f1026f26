"""Loading checkpoints into a timm ViT: safe deserialisation, container unwrapping, official
DINOv2/DINOv3 key conversion (timm's converters) and input-channel adaptation."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from microfm.errors import WeightsError

log = logging.getLogger(__name__)

# Keys under which training frameworks nest the model state dict.
_CONTAINER_KEYS = ("teacher", "model_ema", "model", "state_dict", "module")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing code: safetensors, or ``torch.load`` with
    ``weights_only=True``. A pickle that needs arbitrary code is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone.weights: no such file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        raise WeightsError(
            f"backbone.weights: {path} cannot be loaded safely (weights_only=True): {exc}. "
            "microfm never unpickles code from a checkpoint; re-save it as a plain state dict "
            "or safetensors"
        ) from exc
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common checkpoint containers."""
    for _ in range(4):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in _CONTAINER_KEYS:
                if key in obj and isinstance(obj[key], dict):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"backbone.weights: no state dict of tensors found in {path}")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt an RGB patch-embedding kernel (D, 3, p, p) to ``in_chans`` channels: summed for
    one channel, repeated and rescaled otherwise (so the response to a grey image is kept)."""
    src = weight.shape[1]
    if src == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = -(-in_chans // src)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (src / in_chans)


def _filter_fn(family: str):
    if family == "dinov3":
        from timm.models.eva import checkpoint_filter_fn
    elif family == "dinov2":
        from timm.models.vision_transformer import checkpoint_filter_fn
    else:
        return lambda state_dict, model: state_dict
    return checkpoint_filter_fn


def load_into(
    model: nn.Module, state_dict: dict[str, torch.Tensor], family: str, source: str
) -> None:
    """Convert ``state_dict`` for ``model`` and load it strictly, adapting input channels.

    Raises:
        WeightsError: listing missing and unexpected keys when the checkpoint does not fit.
    """
    if any(k.startswith("backbone.model.") for k in state_dict):  # microfm's own checkpoints
        state_dict = {
            k[len("backbone.model.") :]: v
            for k, v in state_dict.items()
            if k.startswith("backbone.model.")
        }
    proj_key = "patch_embed.proj.weight"
    in_chans = model.patch_embed.proj.in_channels
    if proj_key in state_dict and state_dict[proj_key].ndim == 4:
        state_dict = dict(state_dict)
        state_dict[proj_key] = adapt_input_channels(state_dict[proj_key], in_chans)
    converted = _filter_fn(family)(state_dict, model)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in converted)
    unexpected = sorted(k for k in converted if k not in own)
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(converted[k].shape)} vs model {tuple(own[k].shape)}"
        for k in converted
        if k in own and converted[k].shape != own[k].shape
    )
    if missing or unexpected or wrong_shape:

        def _fmt(items: list[str]) -> str:
            head = ", ".join(items[:12])
            return head + (f" ... (+{len(items) - 12} more)" if len(items) > 12 else "")

        raise WeightsError(
            f"backbone.weights: {source} does not fit this backbone.\n"
            f"  missing keys ({len(missing)}): {_fmt(missing)}\n"
            f"  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}\n"
            f"  shape mismatches ({len(wrong_shape)}): {_fmt(wrong_shape)}"
        )
    model.load_state_dict(converted, strict=True)
    log.info("loaded backbone weights from %s", source)
