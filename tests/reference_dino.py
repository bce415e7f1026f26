"""An independent, deliberately plain re-statement of the official DINOv2 and DINOv3 forward
passes, computed straight from an official-format state dict (no timm, no microfm).

It is checked against the outputs of the official code in ../shared/conformance (ViT-S of both
families) and then serves as the reference for every other size, register tokens, SwiGLU
feed-forwards and non-square inputs, which those fixtures do not cover.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _ln(x, sd, key, eps):
    return F.layer_norm(x, x.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps)


def _linear(x, sd, key, bias_scale=None):
    bias = sd.get(f"{key}.bias")
    if bias is not None and bias_scale is not None:
        bias = bias * bias_scale
    return F.linear(x, sd[f"{key}.weight"], bias)


def _ffn(x, sd, key):
    if f"{key}.w12.weight" in sd:  # DINOv2 SwiGLUFFNFused
        x1, x2 = _linear(x, sd, f"{key}.w12").chunk(2, dim=-1)
        return _linear(F.silu(x1) * x2, sd, f"{key}.w3")
    if f"{key}.w1.weight" in sd:  # DINOv3 SwiGLUFFN
        return _linear(
            F.silu(_linear(x, sd, f"{key}.w1")) * _linear(x, sd, f"{key}.w2"), sd, f"{key}.w3"
        )
    return _linear(F.gelu(_linear(x, sd, f"{key}.fc1")), sd, f"{key}.fc2")


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def _attention(x, sd, key, heads, rope=None):
    B, N, D = x.shape
    qkv = _linear(x, sd, f"{key}.qkv", sd.get(f"{key}.qkv.bias_mask"))
    q, k, v = qkv.reshape(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
    if rope is not None:
        sin, cos = rope
        n = sin.shape[0]
        q = torch.cat(
            [q[:, :, : N - n], q[:, :, N - n :] * cos + _rotate_half(q[:, :, N - n :]) * sin], 2
        )
        k = torch.cat(
            [k[:, :, : N - n], k[:, :, N - n :] * cos + _rotate_half(k[:, :, N - n :]) * sin], 2
        )
    w = (q @ k.transpose(-2, -1)) / math.sqrt(D // heads)
    out = (w.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)
    return _linear(out, sd, f"{key}.proj")


def _blocks(x, sd, heads, eps, rope=None):
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}"
        x = x + sd[f"{b}.ls1.gamma"] * _attention(
            _ln(x, sd, f"{b}.norm1", eps), sd, f"{b}.attn", heads, rope
        )
        x = x + sd[f"{b}.ls2.gamma"] * _ffn(_ln(x, sd, f"{b}.norm2", eps), sd, f"{b}.mlp")
        i += 1
    return _ln(x, sd, "norm", eps)


def dinov2_forward(sd, x, heads, patch=14):
    """Official DINOv2: position embeddings interpolated at any size other than the native square
    grid, by scale factor (n + 0.1)/M, bicubic, no antialias for the plain models, and to the
    size n, bicubic with antialias for the register models (their hub constructors); registers
    after the CLS."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    B, D, h, w = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = sd["pos_embed"]
    M = int(math.sqrt(pos.shape[1] - 1))
    patch_pos = pos[:, 1:]
    registers = "register_tokens" in sd
    if (h, w) != (M, M):
        grid = patch_pos.reshape(1, M, M, D).permute(0, 3, 1, 2)
        if registers:  # dinov2_*_reg hub models: interpolate_antialias=True, offset 0.0
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=True)
        else:
            grid = F.interpolate(
                grid, scale_factor=((h + 0.1) / M, (w + 0.1) / M), mode="bicubic", antialias=False
            )
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, D)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), tokens], 1) + torch.cat(
        [pos[:, :1], patch_pos], 1
    )
    n_reg = 0
    if registers:
        n_reg = sd["register_tokens"].shape[1]
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(B, -1, -1), t[:, 1:]], 1)
    t = _blocks(t, sd, heads, eps=1e-6)
    return t[:, 0], t[:, 1 + n_reg :]


def dinov3_forward(sd, x, heads, patch=16):
    """Official DINOv3: CLS + storage tokens, RoPE on patch tokens (coordinates normalised per
    axis to [-1, 1] at patch centres, periods from the checkpoint), masked k bias."""
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    B, _, h, w = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    storage = sd["storage_tokens"]
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), storage.expand(B, -1, -1), tokens], 1)
    ch = torch.arange(0.5, h) / h
    cw = torch.arange(0.5, w) / w
    coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1).flatten(0, 1) * 2 - 1
    periods = sd["rope_embed.periods"]
    angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]
    angles = angles.flatten(1).tile(2)
    t = _blocks(t, sd, heads, eps=1e-5, rope=(angles.sin(), angles.cos()))
    return t[:, 0], t[:, 1 + storage.shape[1] :]


# Official architecture numbers: (embed dim, heads, feed-forward kind, hidden width, q/v bias)
DINOV2_ARCH = {
    "dinov2_vits14": (384, 6, "mlp", 1536),
    "dinov2_vitb14": (768, 12, "mlp", 3072),
    "dinov2_vitl14": (1024, 16, "mlp", 4096),
    "dinov2_vitg14": (1536, 24, "swiglufused", 4096),
}
DINOV3_ARCH = {
    "dinov3_vits16": (384, 6, "mlp", 1536, True),
    "dinov3_vits16plus": (384, 6, "swiglu", 1536, True),
    "dinov3_vitb16": (768, 12, "mlp", 3072, True),
    "dinov3_vitl16": (1024, 16, "mlp", 4096, True),
    "dinov3_vitl16_sat": (1024, 16, "mlp", 4096, True),
    "dinov3_vith16plus": (1280, 20, "swiglu", 5120, True),
    "dinov3_vit7b16": (4096, 32, "swiglu", 8192, False),
}


def _randomise(shapes, seed):
    """Non-trivial random weights in the style of ../shared/conformance/make_checkpoint.py."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes:
        r = torch.randn(shape, generator=g)
        if "norm" in key and key.endswith("weight"):
            out[key] = 1.0 + 0.1 * r
        elif key.endswith("gamma"):
            out[key] = 0.1 + 0.05 * r
        else:
            out[key] = 0.05 * r
    return out


def official_dinov2_state_dict(name, depth, registers=False, seed=0):
    D, _, ffn, hidden = DINOV2_ARCH[name]
    shapes = [("cls_token", (1, 1, D)), ("pos_embed", (1, 1 + 37 * 37, D)), ("mask_token", (1, D))]
    if registers:
        shapes.append(("register_tokens", (1, 4, D)))
    shapes += [("patch_embed.proj.weight", (D, 3, 14, 14)), ("patch_embed.proj.bias", (D,))]
    for i in range(depth):
        b = f"blocks.{i}"
        shapes += [(f"{b}.norm1.weight", (D,)), (f"{b}.norm1.bias", (D,))]
        shapes += [(f"{b}.attn.qkv.weight", (3 * D, D)), (f"{b}.attn.qkv.bias", (3 * D,))]
        shapes += [(f"{b}.attn.proj.weight", (D, D)), (f"{b}.attn.proj.bias", (D,))]
        shapes += [(f"{b}.ls1.gamma", (D,)), (f"{b}.norm2.weight", (D,)), (f"{b}.norm2.bias", (D,))]
        if ffn == "mlp":
            shapes += [(f"{b}.mlp.fc1.weight", (hidden, D)), (f"{b}.mlp.fc1.bias", (hidden,))]
            shapes += [(f"{b}.mlp.fc2.weight", (D, hidden)), (f"{b}.mlp.fc2.bias", (D,))]
        else:
            shapes += [
                (f"{b}.mlp.w12.weight", (2 * hidden, D)),
                (f"{b}.mlp.w12.bias", (2 * hidden,)),
            ]
            shapes += [(f"{b}.mlp.w3.weight", (D, hidden)), (f"{b}.mlp.w3.bias", (D,))]
        shapes += [(f"{b}.ls2.gamma", (D,))]
    shapes += [("norm.weight", (D,)), ("norm.bias", (D,))]
    return _randomise(shapes, seed)


def official_dinov3_state_dict(name, depth, seed=0):
    D, heads, ffn, hidden, qkv_bias = DINOV3_ARCH[name]
    shapes = [("cls_token", (1, 1, D)), ("storage_tokens", (1, 4, D)), ("mask_token", (1, D))]
    shapes += [("patch_embed.proj.weight", (D, 3, 16, 16)), ("patch_embed.proj.bias", (D,))]
    for i in range(depth):
        b = f"blocks.{i}"
        shapes += [(f"{b}.norm1.weight", (D,)), (f"{b}.norm1.bias", (D,))]
        shapes += [(f"{b}.attn.qkv.weight", (3 * D, D))]
        if qkv_bias:
            shapes += [(f"{b}.attn.qkv.bias", (3 * D,))]
        shapes += [(f"{b}.attn.proj.weight", (D, D)), (f"{b}.attn.proj.bias", (D,))]
        shapes += [(f"{b}.ls1.gamma", (D,)), (f"{b}.norm2.weight", (D,)), (f"{b}.norm2.bias", (D,))]
        if ffn == "mlp":
            shapes += [(f"{b}.mlp.fc1.weight", (hidden, D)), (f"{b}.mlp.fc1.bias", (hidden,))]
            shapes += [(f"{b}.mlp.fc2.weight", (D, hidden)), (f"{b}.mlp.fc2.bias", (D,))]
        else:
            for w in ("w1", "w2"):
                shapes += [(f"{b}.mlp.{w}.weight", (hidden, D)), (f"{b}.mlp.{w}.bias", (hidden,))]
            shapes += [(f"{b}.mlp.w3.weight", (D, hidden)), (f"{b}.mlp.w3.bias", (D,))]
        shapes += [(f"{b}.ls2.gamma", (D,))]
    shapes += [("norm.weight", (D,)), ("norm.bias", (D,))]
    sd = _randomise(shapes, seed)
    head_dim = D // heads
    sd["rope_embed.periods"] = 100.0 ** (2 * torch.arange(head_dim // 4) / (head_dim // 2))
    mask = torch.ones(3 * D)
    mask[D : 2 * D] = 0
    for i in range(depth):
        sd[f"blocks.{i}.attn.qkv.bias_mask"] = mask.clone()
    return sd
