"""What an adaptation changed: parameter tables, the LoRA audit file, adapters on their own.

``lora_targets.json`` (written into every run folder) lists the wrapped modules with their
base and adapter parameter counts, and the totals; ``save_adapters``/``load_adapters`` keep the
adapter weights alone (a few MB instead of the whole backbone) with the settings needed to put
them back on the same pretrained backbone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from microfm.errors import WeightsError
from microfm.utils.io import atomic_write_bytes, atomic_write_text

ADAPTER_KEYS = ("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding")


def parameter_kind(name: str) -> str:
    """``lora`` (adapter weights), ``channel_adapter`` or ``base``."""
    if any(f".{k}." in f".{name}" for k in ADAPTER_KEYS):
        return "lora"
    if name.startswith("channel_adapter."):
        return "channel_adapter"
    return "base"


def parameter_table(module: nn.Module) -> list[dict[str, object]]:
    """One row per parameter: name, shape, count, trainable, kind."""
    return [
        {
            "name": name,
            "shape": "x".join(str(s) for s in p.shape),
            "numel": p.numel(),
            "trainable": bool(p.requires_grad),
            "kind": parameter_kind(name),
        }
        for name, p in module.named_parameters()
    ]


def parameter_counts(module: nn.Module) -> dict[str, int]:
    """Total, trainable, LoRA and frozen parameter counts."""
    rows = parameter_table(module)
    return {
        "total": sum(r["numel"] for r in rows),
        "trainable": sum(r["numel"] for r in rows if r["trainable"]),
        "lora": sum(r["numel"] for r in rows if r["kind"] == "lora"),
        "frozen": sum(r["numel"] for r in rows if not r["trainable"]),
    }


def lora_audit(backbone: nn.Module, mode: str, wrapped: Sequence[str]) -> dict[str, object]:
    """The contents of ``lora_targets.json``: mode, wrapped modules (qualified names inside the
    backbone) with their base and adapter parameter counts, and the totals."""
    modules = dict(backbone.named_modules())
    prefix = "model." if "model" in dict(backbone.named_children()) else ""
    entries = []
    for name in wrapped:
        module = modules[f"{prefix}{name}"]
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        base_params = sum(p.numel() for p in base.parameters())
        lora_params = sum(
            p.numel() for n, p in module.named_parameters() if parameter_kind(n) == "lora"
        )
        entries.append(
            {
                "module": name,
                "in_features": getattr(base, "in_features", None),
                "out_features": getattr(base, "out_features", None),
                "base_params": base_params,
                "lora_params": lora_params,
            }
        )
    return {"mode": mode, "wrapped": entries, "params": parameter_counts(backbone)}


def write_lora_audit(path: str | os.PathLike, audit: Mapping[str, object]) -> None:
    atomic_write_text(path, json.dumps(audit, indent=2) + "\n")


def adapter_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``backbone`` (LoRA/DoRA weights and a learned channel adapter)."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in backbone.state_dict().items()
        if parameter_kind(k) != "base"
    }


def save_adapters(
    backbone: nn.Module, path: str | os.PathLike, settings: Mapping[str, object]
) -> None:
    """Write the adapters alone to ``path`` (safetensors) with ``settings`` (backbone name,
    finetune mode, LoRA settings) in its metadata, atomically."""
    from safetensors.torch import save

    state = adapter_state(backbone)
    if not state:
        raise WeightsError("save_adapters: the backbone has no adapters")
    meta = {"microfm": json.dumps(dict(settings), sort_keys=True)}
    atomic_write_bytes(path, save(state, metadata=meta))


def read_adapter_settings(path: str | os.PathLike) -> dict[str, object]:
    """The settings stored with :func:`save_adapters`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "microfm" not in meta:
        raise WeightsError(f"{path}: not an adapter file written by microfm (no settings)")
    return json.loads(meta["microfm"])


def load_adapters(backbone: nn.Module, path: str | os.PathLike) -> None:
    """Load adapter weights written by :func:`save_adapters` into a backbone wrapped with the
    same settings (e.g. ``Finetune(**settings).apply(backbone)``).

    Raises:
        WeightsError: naming the adapter tensors that do not fit.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"adapters: no such file: {path}")
    state = load_file(str(path))
    own = backbone.state_dict()
    bad = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
    missing = sorted(k for k in own if parameter_kind(k) != "base" and k not in state)
    if bad or missing:
        raise WeightsError(
            f"adapters: {path} does not fit this backbone (unknown or mis-shaped: "
            f"{bad[:8]}, missing: {missing[:8]}); wrap it with the settings stored in the file"
        )
    backbone.load_state_dict(state, strict=False)
