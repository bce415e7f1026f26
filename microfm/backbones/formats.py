"""Checkpoint formats -> the state dict of a timm model.

Recognised automatically (see :func:`convert`):

- official Meta DINOv2 and DINOv3 ``.pth`` (plain state dicts; ``storage_tokens``,
  ``register_tokens``, ``ls1.gamma``, the masked k bias), converted with timm's own converters;
- timm / Hugging Face ``.safetensors`` (timm keys), including DINOv3 files of timm's
  bias-free variants (their q/v biases are zero);
- OpenCLIP / OpenAI CLIP image towers (``visual.*``);
- official MAE checkpoints (``{"model": ...}``; decoder keys and the mask token dropped);
- STED-FM Lightning checkpoints (encoder under ``backbone.vit.``);
- teacher checkpoints of the official DINO/DINOv2 training code (``teacher`` container,
  ``backbone.`` prefix; the DINO/iBOT heads dropped);
- microfm's own checkpoints (``backbone.model.``; LoRA/DoRA adapters folded into the weights,
  a learned channel adapter kept).

The encoder is found by the prefix in front of its patch embedding, preferring a teacher or EMA
copy when a checkpoint holds a student too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from timm.models.eva import Eva
from torch import nn

from microfm.errors import WeightsError

_ANCHOR = "patch_embed.proj.weight"
_LORA = re.compile(
    r"^(.*)\.(base_layer|lora_A\.\w+|lora_B\.\w+|lora_magnitude_vector\.\w+)\.(\w+)$"
)
_DROP = ("decoder", "mask_token", "dino_head", "ibot_head", "head.", "fc_norm.", "lm_head")


def _prefix_rank(prefix: str) -> tuple[int, int]:
    lowered = prefix.lower()
    preference = 0 if "teacher" in lowered else 1 if "ema" in lowered else 2
    return preference, len(prefix)


def backbone_prefix(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The key prefix of the encoder inside ``state_dict`` (``""`` for a bare encoder).

    Raises:
        WeightsError: several encoders and none of them a teacher/EMA copy.
    """
    prefixes = sorted(
        {k[: -len(_ANCHOR)] for k in state_dict if k.endswith(_ANCHOR)}, key=_prefix_rank
    )
    if not prefixes:
        return ""
    best = prefixes[0]
    rivals = [p for p in prefixes[1:] if _prefix_rank(p)[0] == _prefix_rank(best)[0]]
    if rivals and _prefix_rank(best)[0] == 2:
        raise WeightsError(
            f"the checkpoint holds several encoders ({', '.join(repr(p) for p in prefixes)}) "
            "and none is a teacher or EMA copy; save the one you want on its own"
        )
    return best


def _strip(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def merge_lora(
    state_dict: Mapping[str, torch.Tensor], alpha: float | None, rslora: bool = False
) -> dict[str, torch.Tensor]:
    """Fold peft LoRA/DoRA adapters (``<m>.base_layer.*``, ``<m>.lora_A.<a>.weight``,
    ``<m>.lora_B.<a>.weight``, ``<m>.lora_magnitude_vector.<a>.weight``) into plain ``<m>.*``
    weights: W + s·BA with s = alpha/r (alpha/√r for rsLoRA), and for DoRA
    m · (W + s·BA) / ‖W + s·BA‖ row-wise — the weights peft's ``merge`` produces.

    Raises:
        WeightsError: adapters are present but ``alpha`` is unknown.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _LORA.match(key)
        if match is None:
            out[key] = value
            continue
        module, part, leaf = match.groups()
        kind = part.split(".")[0]
        groups.setdefault(module, {})[f"{kind}.{leaf}"] = value
    if groups and alpha is None:
        raise WeightsError(
            "the checkpoint holds LoRA adapters but not their alpha (finetune.lora.alpha); "
            "load it through a microfm checkpoint that records its config"
        )
    for module, parts in groups.items():
        weight = parts["base_layer.weight"].float()
        if "lora_A.weight" in parts:
            a, b = parts["lora_A.weight"].float(), parts["lora_B.weight"].float()
            r = a.shape[0]
            scale = float(alpha) / (r**0.5 if rslora else r)
            weight = weight + scale * (b @ a)
            if "lora_magnitude_vector.weight" in parts:
                norm = torch.linalg.norm(weight, dim=1)
                weight = weight * (parts["lora_magnitude_vector.weight"].float() / norm)[:, None]
        out[f"{module}.weight"] = weight.to(parts["base_layer.weight"].dtype)
        if "base_layer.bias" in parts:
            out[f"{module}.bias"] = parts["base_layer.bias"]
    return out


def describe(state_dict: Mapping[str, torch.Tensor], prefix: str) -> str:
    """A readable name of the checkpoint's format (for logs)."""
    keys = set(state_dict)
    if "storage_tokens" in keys or f"{prefix}storage_tokens" in keys:
        return "official DINOv3"
    if any(k.startswith(("visual.", "module.visual.")) for k in keys):
        return "OpenCLIP/OpenAI CLIP"
    if prefix == "backbone.model.":
        return "microfm"
    if prefix == "backbone.vit.":
        return "STED-FM Lightning"
    if "teacher" in prefix:
        return "DINO teacher"
    if "mask_token" in keys or "register_tokens" in keys:
        return "official DINOv2"
    if any(k.startswith("decoder") for k in keys):
        return "official MAE"
    return "timm"


def convert(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    lora_alpha: float | None = None,
    lora_rslora: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], str]:
    """Turn a checkpoint's tensors into ``model``'s (timm) state dict.

    Returns:
        ``(model_state, extra, format_name)`` where ``extra`` holds microfm wrapper tensors
        found beside the encoder (``channel_adapter.*``, the input ``mean``/``std``).
    """
    if any(k.startswith(("visual.", "module.visual.")) for k in state_dict):
        from timm.models.vision_transformer import checkpoint_filter_fn

        return dict(checkpoint_filter_fn(dict(state_dict), model)), {}, describe(state_dict, "")
    prefix = backbone_prefix(state_dict)
    fmt = describe(state_dict, prefix)
    extra: dict[str, torch.Tensor] = {}
    if prefix.endswith("model."):  # microfm: the Backbone wrapper's own tensors sit beside it
        outer = prefix[: -len("model.")]
        extra = {
            k[len(outer) :]: v
            for k, v in state_dict.items()
            if k.startswith(f"{outer}channel_adapter.") or k in (f"{outer}mean", f"{outer}std")
        }
    sd = merge_lora(_strip(state_dict, prefix), lora_alpha, lora_rslora)
    if isinstance(model, Eva):
        sd = _to_eva(sd, model)
    else:
        sd = _to_vit(sd, model)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(_DROP)}
    return sd, extra, fmt


def _to_eva(sd: dict[str, torch.Tensor], model: Eva) -> dict[str, torch.Tensor]:
    if "storage_tokens" in sd:  # official DINOv3
        from timm.models.eva import checkpoint_filter_fn

        sd = {k: v for k, v in sd.items() if not k.startswith("local_cls_norm")}
        return dict(checkpoint_filter_fn(sd, model))
    sd = {k: v for k, v in sd.items() if not k.endswith(("k_bias", "rope.periods"))}
    own = model.state_dict()
    for key in own:  # timm's bias-free DINOv3 variants: q/v biases are zero
        if key.endswith(("q_bias", "v_bias")) and key not in sd:
            sd[key] = torch.zeros_like(own[key])
    return sd


def _to_vit(sd: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    from timm.models.vision_transformer import checkpoint_filter_fn

    official_dinov2 = "register_tokens" in sd or (
        "mask_token" in sd and not any(k.startswith("decoder") for k in sd)
    )
    if not official_dinov2:  # MAE and others: drop the decoder and the pretraining mask token
        sd = {k: v for k, v in sd.items() if not k.startswith(("decoder", "mask_token"))}
    elif "mask_token" not in sd:
        sd = {**sd, "mask_token": torch.zeros(1)}  # timm detects DINOv2 by this key
    return dict(checkpoint_filter_fn(sd, model))
