"""Finetune modes and the LoRA bypass guarantee."""

from __future__ import annotations

import pytest
import timm
import torch

from microfm.backbones import build_backbone
from microfm.finetune import Finetune, apply_lora, merge_adapters


def trainable(module):
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_frozen_and_full(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_backbone("vit_test").model.state_dict(), path)
    bb = build_backbone("vit_test", weights=str(path))
    assert Finetune("frozen", "frozen").apply(bb).mode == "frozen"
    assert not trainable(bb)
    Finetune("full", "full").apply(bb)
    assert trainable(bb) == {n for n, _ in bb.named_parameters()}


def test_lora_on_random_weights_falls_back_to_full(caplog):
    bb = build_backbone("vit_test")
    applied = Finetune("lora", "lora", {"r": 4}).apply(bb)
    assert applied.mode == "full"
    assert "random weights" in caplog.text


def test_lora_wraps_qualified_targets_and_blocks():
    bb = build_backbone("vit_test")
    ft = Finetune(
        "lora",
        "lora",
        {"r": 2, "target_modules": ["attn.qkv", "mlp.fc2"], "blocks": [1, 3]},
        allow_random=True,
    ).apply(bb)
    assert ft.wrapped == [
        "blocks.1.attn.qkv",
        "blocks.1.mlp.fc2",
        "blocks.3.attn.qkv",
        "blocks.3.mlp.fc2",
    ]
    names = trainable(bb)
    assert names and all("lora_" in n for n in names)
    assert not any("patch_embed" in n for n in names)


def test_lora_training_changes_output():
    torch.manual_seed(0)
    bb = build_backbone("vit_test")
    Finetune("lora", "lora", {"r": 2}, allow_random=True).apply(bb)
    x = torch.rand(2, 3, 32, 32)
    before = bb.forward_features(x)["cls"].detach()
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=1.0)
    bb.forward_features(x)["cls"].pow(2).sum().backward()
    opt.step()
    # layer scale starts at 1e-5 in DINOv3-style blocks, so the change is small but real
    assert (bb.forward_features(x)["cls"] - before).abs().max() > 0


def test_bypassed_adapter_is_an_error():
    # timm's qkv-bias DINOv3 attention calls F.linear on qkv.weight: peft's wrapper is skipped
    model = timm.create_model(
        "vit_small_patch16_dinov3_qkvb", num_classes=0, embed_dim=32, depth=2, num_heads=2
    )
    with pytest.raises(RuntimeError, match="bypasses"):
        apply_lora(model, r=2, target_modules=["attn.qkv"])


def test_no_matching_target_is_a_config_error():
    from microfm.errors import ConfigError

    bb = build_backbone("vit_test")
    with pytest.raises(ConfigError, match="target_modules"):
        Finetune("lora", "lora", {"target_modules": ["attn.nothing"]}, allow_random=True).apply(bb)


def test_merge_adapters_keeps_the_function():
    torch.manual_seed(0)
    bb = build_backbone("vit_test")
    Finetune(
        "lora", "lora", {"r": 2, "target_modules": ["attn.qkv", "mlp.fc1"]}, allow_random=True
    ).apply(bb)
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if "lora_B" in name:
                p.normal_()
    bb.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = bb.forward_features(x)["patch"]
        merge_adapters(bb.model)
        after = bb.forward_features(x)["patch"]
    assert not any("lora" in n for n, _ in bb.named_parameters())
    assert type(bb.model.blocks[0].attn.qkv) is torch.nn.Linear
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
