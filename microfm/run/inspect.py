"""``microfm-inspect``: what a backbone is, what an adaptation trains, what comes out of it."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from microfm.finetune.audit import lora_audit, parameter_counts, parameter_table
from microfm.run.build import build
from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# Larger models are inspected on the meta device (shapes and counts, no memory, no weights).
META_ABOVE_PARAMS = 1.5e9


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _build(cfg: DictConfig, device: str):
    with torch.device(device):
        backbone = build(cfg.backbone, "backbone")
        finetune = build(cfg.finetune, "finetune").apply(backbone)
    return backbone, finetune


def inspect_backbone(cfg: DictConfig) -> dict[str, Any]:
    """Build ``cfg.backbone`` adapted by ``cfg.finetune`` and describe it.

    Returns:
        ``summary`` (architecture lines), ``params`` (counts), ``wrapped`` (adapted modules),
        ``features`` (output shapes for ``cfg.input_size``), ``table`` (one row per
        parameter) and ``device`` (``cpu`` or ``meta``).
    """
    device = str(cfg.get("device", "auto"))
    if device == "auto":
        quiet = logging.getLogger("microfm.backbones")
        level, quiet.level = quiet.level, logging.ERROR  # the real build warns about weights
        try:
            with torch.device("meta"):
                probe = build(OmegaConf.merge(cfg.backbone, {"weights": None}), "backbone")
        finally:
            quiet.setLevel(level)
        device = "meta" if _count(probe) > META_ABOVE_PARAMS else "cpu"
        del probe
    node = cfg.backbone if device != "meta" else OmegaConf.merge(cfg.backbone, {"weights": None})
    backbone, finetune = _build(OmegaConf.merge(cfg, {"backbone": node}), device)
    audit = lora_audit(backbone, finetune.mode, finetune.wrapped)
    model = backbone.model
    H, W = (int(v) for v in cfg.input_size)
    x = torch.zeros(1, backbone.in_chans, H, W, device=device)
    with torch.no_grad():
        out = backbone.eval().forward_dense(x)
    blocks = list(getattr(model, "blocks", []))
    arch = model.default_cfg.get("architecture", "")
    weights = backbone.weights_path or (
        "not loaded (meta device)" if device == "meta" else "RANDOM"
    )
    summary = [
        f"{backbone.name}: timm {type(model).__name__} ({arch})",
        f"  patch {backbone.patch_size}, embed {backbone.embed_dim}, depth {backbone.depth}, "
        f"heads {getattr(blocks[0].attn, 'num_heads', '?') if blocks else '?'}, "
        f"prefix tokens {backbone.num_prefix_tokens} (CLS + registers)",
        f"  weights: {weights}; licence: {backbone.licence}",
        f"  input: {backbone.in_chans} channel(s)"
        + (", learned channel adapter" if backbone.channel_adapter is not None else "")
        + f"; normalisation mean {_fmt(backbone.mean)}, std {_fmt(backbone.std)}",
        f"  finetune: {finetune.mode}"
        + (f" ({len(finetune.wrapped)} adapted modules)" if finetune.wrapped else ""),
    ]
    summary += ["  modules:"] + [
        f"    {name:<14} {type(child).__name__:<22} {_count(child):>14,d}"
        for name, child in model.named_children()
        if name != "blocks"
    ]
    if blocks:
        first = blocks[0]
        kind = f"{len(blocks)} x {type(first).__name__}"
        summary.append(f"    blocks         {kind:<22} {_count(first):>14,d} each")
        summary += [
            f"      {name:<20} {type(child).__name__:<16} {_count(child):>12,d}"
            for name, child in blocks[0].named_children()
        ]
    features = {"cls": list(out["cls"].shape), "patch": list(out["patch"].shape)}
    features.update(
        {f"layer{i}": list(t.shape) for i, t in zip(backbone.intermediate_layers, out["layers"])}
    )
    return {
        "summary": summary,
        "params": parameter_counts(backbone),
        "wrapped": audit["wrapped"],
        "features": features,
        "table": parameter_table(backbone),
        "device": device,
    }


def _fmt(t: torch.Tensor) -> str:
    if t.is_meta:
        return "(meta)"
    return "[" + ", ".join(f"{v:.3g}" for v in t.flatten().tolist()) + "]"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["name", "shape", "numel", "trainable", "kind"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def report(info: dict[str, Any], input_size: Sequence[int]) -> str:
    """The text ``microfm-inspect`` prints."""
    p = info["params"]
    lines = list(info["summary"])
    lines.append(
        f"parameters: total {p['total']:,d}, trainable {p['trainable']:,d} "
        f"({100.0 * p['trainable'] / max(p['total'], 1):.2f}%), LoRA {p['lora']:,d}, "
        f"frozen {p['frozen']:,d}"
    )
    if info["wrapped"]:
        lines.append(f"adapted modules ({len(info['wrapped'])}):")
        lines += [
            f"  {w['module']:<28} {w['in_features']}->{w['out_features']}  "
            f"base {w['base_params']:,d}  adapter {w['lora_params']:,d}"
            for w in info["wrapped"]
        ]
    lines.append(f"features for a {input_size[0]}x{input_size[1]} input (batch 1):")
    lines += [f"  {k:<8} {tuple(v)}" for k, v in info["features"].items()]
    if info["device"] == "meta":
        lines.append("(inspected on the meta device: shapes and counts only)")
    return "\n".join(lines)


def run_inspect(cfg: DictConfig) -> dict[str, Any]:
    """Print the report and write the parameter table (``cfg.csv``) when asked."""
    info = inspect_backbone(cfg)
    print(report(info, cfg.input_size))
    if cfg.get("csv"):
        path = Path(str(cfg.csv))
        atomic_write_text(path, table_csv(info["table"]))
        print(f"parameter table: {path} ({len(info['table'])} rows)")
    return info
