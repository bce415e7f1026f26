"""Checkpoint formats recognised automatically, the weights resolution order, downloads over a
loopback server with hash checks, and errors that list what does not fit."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file

import microfm.backbones as backbones
from microfm.backbones import build_backbone
from microfm.backbones.registry import get_spec
from microfm.errors import WeightsError
from microfm.finetune.adapt import Finetune
from tests.loopback import LoopbackServer
from tests.reference_dino import official_dinov2_state_dict


@pytest.fixture(autouse=True)
def _no_local_weights(monkeypatch, tmp_path):
    """Tests see no weights folder and empty torch hub / HF caches unless they add one."""
    monkeypatch.delenv("MICROFM_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("MICROFM_CACHE", str(tmp_path / "cache"))


def _features(bb, x):
    with torch.no_grad():
        return bb.eval().forward_features(x)


def _same(a, b, x):
    fa, fb = _features(a, x), _features(b, x)
    torch.testing.assert_close(fa["cls"], fb["cls"])
    torch.testing.assert_close(fa["patch"], fb["patch"])


def _randomised(bb):
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in bb.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return bb


def test_official_mae_checkpoint_drops_the_decoder(tmp_path):
    src = _randomised(build_backbone("mae_vitb16", depth=1, intermediate_layers=[0]))
    state = dict(src.model.state_dict())
    state["mask_token"] = torch.zeros(1, 1, 512)
    state["decoder_embed.weight"] = torch.zeros(512, 768)
    state["decoder_blocks.0.norm1.weight"] = torch.ones(512)
    torch.save({"model": state}, tmp_path / "mae_pretrain_vit_base.pth")
    bb = build_backbone(
        "mae_vitb16",
        weights=str(tmp_path / "mae_pretrain_vit_base.pth"),
        depth=1,
        intermediate_layers=[0],
    )
    _same(bb, src, torch.rand(1, 3, 32, 48))


def test_stedfm_lightning_checkpoint(tmp_path):
    src = _randomised(build_backbone("stedfm_vits16", in_chans=1, depth=1, intermediate_layers=[0]))
    state = {f"backbone.vit.{k}": v for k, v in src.model.state_dict().items()}
    state["decoder.decoder_pred.weight"] = torch.zeros(256, 512)
    torch.save(
        {"state_dict": state, "epoch": 10, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "a.ckpt"
    )
    bb = build_backbone(
        "stedfm_vits16",
        weights=str(tmp_path / "a.ckpt"),
        in_chans=1,
        depth=1,
        intermediate_layers=[0],
    )
    assert get_spec("stedfm_vits16").in_chans == 1
    _same(bb, src, torch.rand(2, 1, 32, 32))


def _official_dinov2(tmp_path):
    sd = official_dinov2_state_dict("dinov2_vits14", depth=1, seed=5)
    torch.save(sd, tmp_path / "official.pth")
    ref = build_backbone(
        "dinov2_vits14", weights=str(tmp_path / "official.pth"), depth=1, intermediate_layers=[0]
    )
    return sd, ref


def test_dinov2_teacher_checkpoint_of_the_official_training_code(tmp_path):
    sd, ref = _official_dinov2(tmp_path)
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 384)
    teacher["ibot_head.last_layer.weight"] = torch.zeros(8, 8)
    torch.save({"teacher": teacher}, tmp_path / "teacher_checkpoint.pth")
    bb = build_backbone(
        "dinov2_vits14",
        weights=str(tmp_path / "teacher_checkpoint.pth"),
        depth=1,
        intermediate_layers=[0],
    )
    _same(bb, ref, torch.rand(1, 3, 42, 56))


def test_dino_checkpoint_with_student_and_teacher_loads_the_teacher(tmp_path):
    sd, ref = _official_dinov2(tmp_path)
    student = {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()}
    teacher = {f"backbone.{k}": v for k, v in sd.items()}
    torch.save({"student": student, "teacher": teacher, "epoch": 3}, tmp_path / "checkpoint.pth")
    bb = build_backbone(
        "dinov2_vits14", weights=str(tmp_path / "checkpoint.pth"), depth=1, intermediate_layers=[0]
    )
    _same(bb, ref, torch.rand(1, 3, 28, 28))


def test_two_encoders_without_a_teacher_is_an_error(tmp_path):
    sd, _ = _official_dinov2(tmp_path)
    both = {**{f"a.{k}": v for k, v in sd.items()}, **{f"b.{k}": v for k, v in sd.items()}}
    torch.save(both, tmp_path / "two.pth")
    with pytest.raises(WeightsError, match="several encoders"):
        build_backbone(
            "dinov2_vits14", weights=str(tmp_path / "two.pth"), depth=1, intermediate_layers=[0]
        )


def test_timm_safetensors(tmp_path):
    src = _randomised(build_backbone("vit_test_dinov2"))
    save_file(src.model.state_dict(), str(tmp_path / "model.safetensors"))
    _same(
        build_backbone("vit_test_dinov2", weights=str(tmp_path / "model.safetensors")),
        src,
        torch.rand(1, 3, 24, 40),
    )


def test_timm_dinov3_weights_without_qkv_bias_load_with_zero_biases(tmp_path):
    """timm's bias-free DINOv3 variants (HF hub files) fit microfm's q/v-bias model."""
    plain = timm.create_model(
        "vit_small_patch16_dinov3",
        num_classes=0,
        embed_dim=64,
        depth=4,
        num_heads=2,
        patch_size=8,
    ).eval()
    save_file(plain.state_dict(), str(tmp_path / "model.safetensors"))
    bb = build_backbone("vit_test", weights=str(tmp_path / "model.safetensors"), normalize=False)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = plain.forward_features(x)[:, 0]
    torch.testing.assert_close(_features(bb, x)["cls"], expected)


def test_openclip_trunk_checkpoint(tmp_path):
    src = _randomised(build_backbone("clip_vitl14", depth=1, intermediate_layers=[0]))
    state = {f"visual.trunk.{k}": v for k, v in src.model.state_dict().items()}
    state["text.token_embedding.weight"] = torch.zeros(4, 8)
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    bb = build_backbone(
        "clip_vitl14",
        weights=str(tmp_path / "open_clip_pytorch_model.bin"),
        depth=1,
        intermediate_layers=[0],
    )
    _same(bb, src, torch.rand(1, 3, 28, 28))


@pytest.mark.parametrize("mode", ["lora", "dora"])
def test_microfm_checkpoint_with_adapters_is_merged(tmp_path, mode):
    torch.manual_seed(0)
    bb = build_backbone("vit_test", in_chans=2)
    Finetune(
        mode,
        mode,
        {"r": 4, "alpha": 8, "target_modules": ["attn.qkv", "mlp.fc2"]},
        allow_random=True,
    ).apply(bb)
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                p.add_(0.1 * torch.randn_like(p))
    state = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    state["tasks.cellseg.head.out.weight"] = torch.zeros(1, 8)
    config = {"finetune": {"mode": mode, "lora": {"r": 4, "alpha": 8}}}
    torch.save({"state_dict": state, "microfm": {"config": config}}, tmp_path / "best.ckpt")
    merged = build_backbone("vit_test", weights=str(tmp_path / "best.ckpt"), in_chans=2)
    assert not any("lora" in k for k in merged.state_dict())
    _same(merged, bb, torch.rand(2, 2, 32, 24))


def test_weights_that_do_not_fit_name_the_format_and_keys(tmp_path):
    _official_dinov2(tmp_path)
    with pytest.raises(WeightsError, match="official DINOv2 format") as err:
        build_backbone(
            "dinov2_vitb14",
            weights=str(tmp_path / "official.pth"),
            depth=1,
            intermediate_layers=[0],
        )
    assert "shape mismatches" in str(err.value) and "blocks.0.attn.qkv.weight" in str(err.value)


# ------------------------------------------------------------------------------ resolution
def _tiny_official_file(tmp_path, name="dinov2_vits14_pretrain.pth"):
    src = _randomised(build_backbone("vit_test_dinov2"))
    path = tmp_path / name
    torch.save(src.model.state_dict(), path)
    return src, path


def _with_files(monkeypatch, **changes):
    spec = dataclasses.replace(get_spec("vit_test_dinov2"), **changes)
    monkeypatch.setattr(backbones, "get_spec", lambda name: spec)
    return spec


def test_weights_folder_from_the_environment(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    src, _ = _tiny_official_file(folder, "tiny_pretrain.pth")
    _with_files(monkeypatch, files=("tiny_pretrain*.pth",))
    monkeypatch.setenv("MICROFM_WEIGHTS", str(folder))
    bb = build_backbone("vit_test_dinov2")
    assert bb.pretrained and bb.weights_path == str(folder / "tiny_pretrain.pth")
    _same(bb, src, torch.rand(1, 3, 16, 16))


def test_torch_hub_cache_then_hf_cache(tmp_path, monkeypatch):
    _with_files(monkeypatch, files=("tiny_pretrain*.pth",), hf_hub_id="timm/tiny.lvd")
    hf = tmp_path / "hf" / "models--timm--tiny.lvd" / "snapshots" / "abc"
    hf.mkdir(parents=True)
    src = _randomised(build_backbone("vit_test_dinov2"))
    save_file(src.model.state_dict(), str(hf / "model.safetensors"))
    bb = build_backbone("vit_test_dinov2")
    assert bb.weights_path == str(hf / "model.safetensors")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    _tiny_official_file(hub, "tiny_pretrain.pth")
    assert build_backbone("vit_test_dinov2").weights_path == str(hub / "tiny_pretrain.pth")


def test_no_weights_anywhere(caplog):
    bb = build_backbone("vit_test_dinov2")
    assert not bb.pretrained and "RANDOM weights" in caplog.text
    with pytest.raises(WeightsError, match="require_pretrained"):
        build_backbone("vit_test_dinov2", require_pretrained=True)


def test_gated_weights_are_never_downloaded():
    with pytest.raises(WeightsError, match="gated") as err:
        build_backbone("dinov3_vits16", weights="official")
    assert "ai.meta.com" in str(err.value)


def test_official_download_once_with_hash_check(tmp_path, monkeypatch):
    src, path = _tiny_official_file(tmp_path)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    name = f"tiny_pretrain-{digest[:8]}.pth"
    server = LoopbackServer({name: data})
    try:
        _with_files(monkeypatch, url=f"{server.url}/{name}", files=("tiny_pretrain*.pth",))
        bb = build_backbone("vit_test_dinov2", weights="official")
        assert bb.weights_path.endswith(name) and len(server.requests) == 1
    finally:
        server.close()
    # cached: no network needed any more
    again = build_backbone("vit_test_dinov2", weights="official")
    _same(again, src, torch.rand(1, 3, 16, 16))


def test_url_download_refuses_a_wrong_hash(tmp_path):
    _, path = _tiny_official_file(tmp_path)
    server = LoopbackServer({"w-deadbeef.pth": path.read_bytes(), "x.pth": path.read_bytes()})
    try:
        with pytest.raises(WeightsError, match="deadbeef"):
            build_backbone("vit_test_dinov2", weights=f"{server.url}/w-deadbeef.pth")
        with pytest.raises(WeightsError, match="checksum"):
            build_backbone("vit_test_dinov2", weights=f"{server.url}/x.pth", sha256="0" * 64)
        ok = build_backbone(
            "vit_test_dinov2",
            weights=f"{server.url}/x.pth",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        assert ok.pretrained
    finally:
        server.close()
    assert not list((tmp_path / "cache" / "weights").glob("w-deadbeef*"))


def _hf_snapshots(tmp_path, repo: str, commits: list[str], main: str | None) -> dict[str, object]:
    """A Hugging Face cache layout (as huggingface_hub writes it) with one model.safetensors
    per commit, each from differently randomised weights, and ``refs/main`` -> ``main``."""
    folder = tmp_path / "hf" / ("models--" + repo.replace("/", "--"))
    models = {}
    for i, commit in enumerate(commits):
        snap = folder / "snapshots" / commit
        snap.mkdir(parents=True)
        src = build_backbone("vit_test_dinov2")
        with torch.no_grad():
            for p in src.parameters():
                p.add_(0.05 * (i + 1) * torch.randn_like(p))
        save_file(src.model.state_dict(), str(snap / "model.safetensors"))
        models[commit] = src
    if main is not None:
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(main)
    return models


def test_hf_cache_follows_refs_main_not_the_last_snapshot(tmp_path, monkeypatch):
    # refs/main names the first of the sorted snapshots; the newest-looking name is a stale one
    old, stale = "0a" * 20, "f0" * 20
    models = _hf_snapshots(tmp_path, "timm/tiny.lvd", [old, stale], main=old)
    _with_files(monkeypatch, hf_hub_id="timm/tiny.lvd")
    bb = build_backbone("vit_test_dinov2")
    snap = tmp_path / "hf" / "models--timm--tiny.lvd" / "snapshots"
    assert bb.weights_path == str(snap / old / "model.safetensors")
    _same(bb, models[old], torch.rand(1, 3, 16, 16))


def test_hf_cache_with_several_snapshots_and_no_ref_is_not_guessed(tmp_path, monkeypatch, caplog):
    _hf_snapshots(tmp_path, "timm/tiny.lvd", ["0a" * 20, "f0" * 20], main=None)
    _with_files(monkeypatch, hf_hub_id="timm/tiny.lvd")
    bb = build_backbone("vit_test_dinov2")
    assert not bb.pretrained and "name a revision" in caplog.text


def test_hf_hub_weights_with_a_revision(tmp_path):
    a, b = "0a" * 20, "f0" * 20
    models = _hf_snapshots(tmp_path, "org/tiny", [a, b], main=b)
    snap = tmp_path / "hf" / "models--org--tiny" / "snapshots"
    x = torch.rand(1, 3, 16, 16)
    main = build_backbone("vit_test_dinov2", weights="hf-hub:org/tiny")
    assert main.weights_path == str(snap / b / "model.safetensors")
    pinned = build_backbone("vit_test_dinov2", weights=f"hf-hub:org/tiny@{a}")
    assert pinned.weights_path == str(snap / a / "model.safetensors")
    _same(pinned, models[a], x)
    with pytest.raises(WeightsError, match="huggingface-cli download org/tiny.*--revision v2"):
        build_backbone("vit_test_dinov2", weights="hf-hub:org/tiny@v2")
    with pytest.raises(WeightsError, match="hf-hub:ORG/NAME"):
        build_backbone("vit_test_dinov2", weights="hf-hub:tiny")
