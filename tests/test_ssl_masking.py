"""Token masking inside the timm ViTs (absolute position embeddings: DINOv2 architecture; RoPE
with register tokens: DINOv3 architecture): the visible-only encoder equals the full encoder
with attention restricted to the visible tokens, masked content is invisible, LoRA adapters
take part; patchify layout and random masks."""

from __future__ import annotations

import pytest
import torch

from microfm.backbones import build_backbone
from microfm.backbones.masking import (
    encode_tokens,
    masked_image,
    patchify,
    prepare_input,
    random_keep,
    random_patch_mask,
    unpatchify,
)
from microfm.finetune import apply_lora

BACKBONES = ["vit_test", "vit_test_dinov2"]


def _backbone(name):
    torch.manual_seed(0)
    return build_backbone(name, in_chans=2).eval()


def _restricted_forward(bb, x, allowed_patches):
    """Full sequence through the blocks, attention only to prefix + allowed patches."""
    m = bb.model
    P = m.num_prefix_tokens
    Bn, N = allowed_patches.shape
    allowed = torch.cat([torch.ones(Bn, P, dtype=torch.bool), allowed_patches], dim=1)
    attn_mask = allowed[:, None, None, :].expand(Bn, 1, P + N, P + N)
    t = m.patch_embed(prepare_input(bb, x))
    if bb.name == "vit_test":
        t, rope = m._pos_embed(t)
        t = m.norm_pre(t)
        for blk in m.blocks:
            t = blk(t, rope=rope, attn_mask=attn_mask)
    else:
        t = m.norm_pre(m._pos_embed(t))
        for blk in m.blocks:
            t = blk(t, attn_mask=attn_mask)
    return m.norm(t)


@pytest.mark.parametrize("name", BACKBONES)
def test_unmasked_encoding_is_the_backbone(name):
    bb = _backbone(name)
    x = torch.rand(2, 2, 32, 48)
    out = encode_tokens(bb, x)
    torch.testing.assert_close(out["tokens"], bb.model.forward_features(prepare_input(bb, x)))
    feats = bb.forward_features(x)
    torch.testing.assert_close(out["cls"], feats["cls"])
    assert out["prefix"].shape[1] == bb.num_prefix_tokens and out["patch"].shape[1] == 24


@pytest.mark.parametrize("name", BACKBONES)
def test_visible_only_encoder_keeps_each_patch_position(name):
    bb = _backbone(name)
    x = torch.rand(3, 2, 32, 48)
    keep, mask = random_keep(3, 24, 0.75, generator=torch.Generator().manual_seed(1))
    assert keep.shape == (3, 6) and mask.sum() == 3 * 18
    out = encode_tokens(bb, x, keep=keep)
    full = _restricted_forward(bb, x, ~mask)
    P = bb.num_prefix_tokens
    expected = full[:, P:].gather(1, keep[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(out["patch"], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["prefix"], full[:, :P], rtol=1e-4, atol=1e-5)
    # the position information matters: other kept positions give other outputs
    shifted = encode_tokens(bb, x, keep=(keep + 1) % 24)
    assert (shifted["patch"] - out["patch"]).abs().max() > 1e-3


@pytest.mark.parametrize("name", BACKBONES)
def test_hidden_content_is_invisible(name):
    bb = _backbone(name)
    x = torch.rand(2, 2, 32, 32)
    keep, mask = random_keep(2, 16, 0.5, generator=torch.Generator().manual_seed(2))
    pix = torch.nn.functional.interpolate(mask.reshape(2, 1, 4, 4).float(), scale_factor=8)
    other = torch.where(pix.bool(), torch.rand_like(x), x)  # changes hidden patches only
    torch.testing.assert_close(
        encode_tokens(bb, x, keep=keep)["tokens"], encode_tokens(bb, other, keep=keep)["tokens"]
    )
    token = torch.randn(64)
    a = encode_tokens(bb, x, mask=mask, mask_token=token)
    b = encode_tokens(bb, other, mask=mask, mask_token=token)
    torch.testing.assert_close(a["tokens"], b["tokens"])
    visible_change = torch.where(pix.bool(), x, torch.rand_like(x))
    c = encode_tokens(bb, visible_change, mask=mask, mask_token=token)
    assert (c["tokens"] - a["tokens"]).abs().max() > 1e-3
    # the mask token replaces the patch embedding (then position embeddings are added)
    none = encode_tokens(bb, x, mask=torch.zeros_like(mask), mask_token=token)
    torch.testing.assert_close(none["tokens"], encode_tokens(bb, x)["tokens"])


def test_lora_adapters_take_part_in_masked_encoding():
    bb = _backbone("vit_test")
    apply_lora(bb.model, r=2, target_modules=["attn.qkv"])
    for name, p in bb.model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    keep, _ = random_keep(2, 16, 0.75)
    encode_tokens(bb, torch.rand(2, 2, 32, 32), keep=keep)["tokens"].sum().backward()
    grads = [p.grad for n, p in bb.model.named_parameters() if "lora_A" in n]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_patchify_layout_and_inverse():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) holds pixels [4:8, 8:12] as (p, p, C)
    torch.testing.assert_close(p[0, 5].reshape(4, 4, 3).permute(2, 0, 1), x[0, :, 4:8, 8:12])
    torch.testing.assert_close(unpatchify(p, 4, (2, 3)), x)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 5] = True
    hidden = masked_image(x, mask, 4)
    assert hidden[:, :, 4:8, 8:12].abs().sum() == 0
    torch.testing.assert_close(hidden[:, :, :4], x[:, :, :4])


def test_random_patch_mask_counts():
    g = torch.Generator().manual_seed(3)
    mask = random_patch_mask(8, 100, (0.1, 0.5), 0.5, generator=g)
    per_image = mask.sum(1)
    assert int((per_image > 0).sum()) == 4
    assert all(10 <= int(n) <= 50 for n in per_image if n > 0)
    assert random_patch_mask(3, 10, (0.1, 0.5), 0.1).any(dim=1).sum() == 1  # at least one
    assert not random_patch_mask(3, 10, (0.1, 0.5), 0.0).any()


def test_seeded_masks_depend_on_the_sample_alone():
    """With one seed per sample, a sample's iBOT and MAE masks are the same whatever batch it
    is in (the ranks of a DDP run hold different shares of the global batch) and differ
    between samples."""
    from microfm.backbones.masking import random_keep

    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    mask = random_patch_mask(8, 64, (0.1, 0.5), 0.5, seeds=seeds)
    for part in ([0, 1, 2, 3], [4, 5, 6, 7], [6, 1]):
        sub = random_patch_mask(len(part), 64, (0.1, 0.5), 0.5, seeds=[seeds[i] for i in part])
        assert torch.equal(sub, mask[part])
    per_image = mask.sum(1)
    assert all(6 <= int(n) <= 32 for n in per_image if n > 0)
    many = random_patch_mask(400, 16, (0.1, 0.5), 0.5, seeds=range(400)).any(1).float()
    assert 0.4 < float(many.mean()) < 0.6  # each sample masked with the probability
    keep, hidden = random_keep(8, 64, 0.75, seeds=seeds)
    keep2, hidden2 = random_keep(2, 64, 0.75, seeds=[seeds[5], seeds[2]])
    assert torch.equal(keep2, keep[[5, 2]]) and torch.equal(hidden2, hidden[[5, 2]])
    assert len({tuple(k.tolist()) for k in keep}) == 8
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        random_keep(2, 64, 0.75, seeds=[1, 2, 3])
