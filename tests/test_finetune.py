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


# ------------------------------------------------------------------------------ audit
def test_lora_audit_counts():
    from microfm.finetune.audit import lora_audit, parameter_counts

    bb = build_backbone("vit_test")
    ft = Finetune(
        "lora", "lora", {"r": 4, "target_modules": ["attn.qkv", "mlp.fc1"]}, allow_random=True
    ).apply(bb)
    audit = lora_audit(bb, ft.mode, ft.wrapped)
    assert [e["module"] for e in audit["wrapped"]] == ft.wrapped and len(ft.wrapped) == 8
    qkv = next(e for e in audit["wrapped"] if e["module"] == "blocks.0.attn.qkv")
    assert (qkv["in_features"], qkv["out_features"]) == (64, 192)
    assert qkv["lora_params"] == 4 * (64 + 192)
    assert qkv["base_params"] == 64 * 192  # q/v biases live in the attention, not in qkv
    counts = parameter_counts(bb)
    assert counts["lora"] == sum(e["lora_params"] for e in audit["wrapped"])
    assert counts["trainable"] == counts["lora"]
    assert counts["total"] == counts["trainable"] + counts["frozen"]


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_adapters_saved_on_their_own_and_loaded_back(tmp_path, mode):
    from microfm.errors import WeightsError
    from microfm.finetune.audit import load_adapters, read_adapter_settings, save_adapters

    path = tmp_path / "w.pth"
    torch.save(build_backbone("vit_test", in_chans=1).model.state_dict(), path)
    settings = {"mode": mode, "lora": {"r": 2, "alpha": 4, "target_modules": ["attn.qkv"]}}
    bb = build_backbone("vit_test", weights=str(path), in_chans=1)
    Finetune(mode, **settings).apply(bb)
    with torch.no_grad():
        for p in bb.parameters():
            if p.requires_grad:
                p.add_(0.1)
    save_adapters(bb, tmp_path / "adapters.safetensors", {"finetune": settings})
    assert read_adapter_settings(tmp_path / "adapters.safetensors")["finetune"] == settings
    assert (tmp_path / "adapters.safetensors").stat().st_size < path.stat().st_size / 5
    again = build_backbone("vit_test", weights=str(path), in_chans=1)
    Finetune(mode, **settings).apply(again)
    load_adapters(again, tmp_path / "adapters.safetensors")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            again.eval().forward_features(x)["patch"], bb.eval().forward_features(x)["patch"]
        )
    other = build_backbone("vit_test", weights=str(path), in_chans=1)
    Finetune(mode, mode, {"r": 3}).apply(other)
    with pytest.raises(WeightsError, match="does not fit"):
        load_adapters(other, tmp_path / "adapters.safetensors")


def test_channel_adapter_trains_with_a_frozen_backbone(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(build_backbone("vit_test").model.state_dict(), path)
    bb = build_backbone("vit_test", weights=str(path), in_chans=4, channel_mode="adapter")
    Finetune("frozen", "frozen").apply(bb)
    assert trainable(bb) == {"channel_adapter.proj.weight", "channel_adapter.proj.bias"}


def test_training_run_writes_the_audit_and_the_adapters(tiny_overrides, tmp_path):
    import json

    from microfm.finetune.audit import read_adapter_settings
    from microfm.run.config import compose
    from microfm.run.train import train

    train(
        compose(
            [
                *tiny_overrides,
                "debug=smoke",
                "finetune=lora",
                "finetune.allow_random=true",
                "finetune.lora.r=2",
                "backbone.norm_stats=dataset",
            ]
        )
    )
    run = tmp_path / "results" / "seg" / "test"
    audit = json.loads((run / "lora_targets.json").read_text())
    assert audit["mode"] == "lora" and len(audit["wrapped"]) == 4
    assert audit["params"]["lora"] == 4 * 2 * (64 + 192)
    settings = read_adapter_settings(run / "ckpts" / "adapters.safetensors")
    assert settings["finetune"]["lora"]["r"] == 2 and settings["backbone"]["name"] == "vit_test"
    best = torch.load(run / "ckpts" / "best.ckpt", map_location="cpu", weights_only=False)
    mean = best["state_dict"]["backbone.mean"].flatten()
    assert 0.0 < float(mean[0]) < 1.0 and float(mean[0]) != pytest.approx(0.449, abs=1e-3)
    # the checkpoint alone rebuilds that backbone: LoRA merged, dataset statistics kept
    from microfm.backbones import backbone_from_checkpoint

    rebuilt, meta = backbone_from_checkpoint(run / "ckpts" / "best.ckpt")
    assert meta["meta"]["finetune_applied"] == "lora"
    assert not any("lora" in n for n, _ in rebuilt.named_parameters())
    torch.testing.assert_close(rebuilt.mean.flatten(), mean)
