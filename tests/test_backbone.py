"""The backbone wrapper: interface, shapes, declared numbers, weights, bad input."""

from __future__ import annotations

import pytest
import torch
import yaml

from microfm.backbones import BACKBONES, build_backbone
from microfm.errors import ConfigError, WeightsError
from microfm.run.config import config_dir


def test_forward_features_shapes():
    bb = build_backbone("vit_test", in_chans=1)
    out = bb.forward_features(torch.rand(2, 1, 40, 48))
    assert out["cls"].shape == (2, 64)
    assert out["patch"].shape == (2, 64, 5, 6)
    maps = bb.get_intermediate_layers(torch.rand(2, 1, 40, 48), [1, 3])
    assert [m.shape for m in maps] == [(2, 64, 5, 6)] * 2


def test_forward_dense_equals_separate_calls():
    torch.manual_seed(0)
    bb = build_backbone("vit_test", in_chans=2).eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        dense = bb.forward_dense(x, [0, 3])
        feats = bb.forward_features(x)
        layers = bb.get_intermediate_layers(x, [0, 3])
    torch.testing.assert_close(dense["cls"], feats["cls"])
    torch.testing.assert_close(dense["patch"], feats["patch"])
    for a, b in zip(dense["layers"], layers):
        torch.testing.assert_close(a, b)
    # the last block's normed map is the final patch map
    torch.testing.assert_close(layers[1], feats["patch"])


def test_input_size_must_be_patch_multiple():
    bb = build_backbone("vit_test", in_chans=1)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        bb.forward_features(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="expects"):
        bb.forward_features(torch.rand(1, 3, 32, 32))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_declared_numbers_match_built_model(name, monkeypatch, tmp_path):
    monkeypatch.setenv("MICROFM_WEIGHTS", str(tmp_path))  # no weights found: random init
    declared = yaml.safe_load((config_dir() / "backbone" / f"{name}.yaml").read_text())
    with torch.device("meta"):  # architecture only (ViT-7B has 6.7e9 parameters)
        bb = build_backbone(name, in_chans=BACKBONES[name].in_chans)
    assert bb.patch_size == declared["patch_size"]
    assert bb.embed_dim == declared["embed_dim"]
    assert max(declared["intermediate_layers"]) < bb.depth
    assert tuple(declared["intermediate_layers"]) == bb.intermediate_layers
    assert declared["licence"] == bb.licence
    assert bb.depth == BACKBONES[name].depth
    assert declared["mean"] == pytest.approx(list(BACKBONES[name].mean))
    assert declared["std"] == pytest.approx(list(BACKBONES[name].std))


def test_unknown_backbone_suggests():
    with pytest.raises(ConfigError, match="dinov3_vits16"):
        build_backbone("dinov3_vits61")


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth"):
        build_backbone("vit_test", weights=str(missing))


def test_require_pretrained():
    with pytest.raises(WeightsError, match="backbone.weights"):
        build_backbone("vit_test", require_pretrained=True)


def test_weights_roundtrip_and_channel_adaptation(tmp_path):
    torch.manual_seed(0)
    src = build_backbone("vit_test", in_chans=3)
    path = tmp_path / "w.pth"
    torch.save(src.model.state_dict(), path)
    same = build_backbone("vit_test", weights=str(path), in_chans=3).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            same.forward_features(x)["cls"], src.eval().forward_features(x)["cls"]
        )
    assert same.pretrained
    # one channel: the RGB kernel is summed, so a grey image gives the same patch embedding
    grey = build_backbone("vit_test", weights=str(path), in_chans=1, normalize=False).eval()
    src_raw = build_backbone("vit_test", weights=str(path), in_chans=3, normalize=False).eval()
    g = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            grey.forward_features(g)["patch"],
            src_raw.forward_features(g.repeat(1, 3, 1, 1))["patch"],
        )


def test_weights_that_do_not_fit_list_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="missing keys") as err:
        build_backbone("vit_test", weights=str(path))
    assert "foo.weight" in str(err.value)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a module object needs unpickling code
    with pytest.raises(WeightsError, match="weights_only"):
        build_backbone("vit_test", weights=str(path))


# ------------------------------------------------------------------------------ channels
def _rgb_weights(tmp_path):
    torch.manual_seed(0)
    src = build_backbone("vit_test", in_chans=3)
    path = tmp_path / "rgb.pth"
    torch.save(src.model.state_dict(), path)
    return path


@pytest.mark.parametrize(
    "mode,in_chans", [("sum", 1), ("repeat", 2), ("repeat", 4), ("mean", 2), ("mean", 5)]
)
def test_channel_modes_keep_the_response_to_equal_channels(tmp_path, mode, in_chans):
    path = _rgb_weights(tmp_path)
    rgb = build_backbone("vit_test", weights=str(path), in_chans=3, normalize=False).eval()
    bb = build_backbone(
        "vit_test", weights=str(path), in_chans=in_chans, channel_mode=mode, normalize=False
    ).eval()
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            bb.forward_features(grey.repeat(1, in_chans, 1, 1))["patch"],
            rgb.forward_features(grey.repeat(1, 3, 1, 1))["patch"],
        )
    if in_chans > 1:  # the channels are not interchangeable copies of one another
        x = torch.rand(1, in_chans, 32, 32)
        with torch.no_grad():
            a = bb.forward_features(x)["patch"]
            b = bb.forward_features(x.flip(1))["patch"]
        assert (mode == "mean") == torch.allclose(a, b, atol=1e-5)


def test_learned_channel_adapter(tmp_path):
    path = _rgb_weights(tmp_path)
    rgb = build_backbone("vit_test", weights=str(path), in_chans=3).eval()
    bb = build_backbone("vit_test", weights=str(path), in_chans=4, channel_mode="adapter").eval()
    assert bb.in_chans == 4 and bb.model.patch_embed.proj.in_channels == 3
    grey = torch.rand(2, 1, 32, 32)
    with torch.no_grad():  # starts as the channel mean copied to R, G and B
        torch.testing.assert_close(
            bb.forward_features(grey.repeat(1, 4, 1, 1))["cls"],
            rgb.forward_features(grey.repeat(1, 3, 1, 1))["cls"],
        )
    probe = torch.randn(1, 64, 4, 4)  # (a plain sum of LayerNorm outputs has no gradient)
    (bb.forward_features(torch.rand(1, 4, 32, 32))["patch"] * probe).sum().backward()
    assert bb.channel_adapter.proj.weight.grad.abs().sum() > 0
    # a checkpoint holding the adapter needs an adapter backbone
    state = {f"backbone.{k}": v for k, v in bb.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    again = build_backbone(
        "vit_test", weights=str(tmp_path / "run.ckpt"), in_chans=4, channel_mode="adapter"
    )
    torch.testing.assert_close(again.channel_adapter.proj.weight, bb.channel_adapter.proj.weight)
    with pytest.raises(WeightsError, match="channel_mode=adapter"):
        build_backbone("vit_test", weights=str(tmp_path / "run.ckpt"), in_chans=4)


def test_bad_channel_settings():
    with pytest.raises(ConfigError, match="channel_mode"):
        build_backbone("vit_test", channel_mode="avg")
    with pytest.raises(ConfigError, match="one input channel"):
        from microfm.backbones.channels import adapt_patch_kernel

        adapt_patch_kernel(torch.zeros(8, 3, 4, 4), 2, "sum")


# ------------------------------------------------------------------------------ input sizes
@pytest.mark.parametrize("mode,grid", [("pad", (5, 6)), ("resize", (4, 6))])
def test_patch_multiple_snapping(mode, grid):
    bb = build_backbone("vit_test", in_chans=1, patch_multiple=mode).eval()
    x = torch.rand(2, 1, 35, 44)
    with torch.no_grad():
        out = bb.forward_features(x)
        layers = bb.get_intermediate_layers(x, [1])
    assert out["patch"].shape[-2:] == grid and layers[0].shape[-2:] == grid
    snapped, restore = bb.snap(x)
    assert snapped.shape[-2:] == tuple(8 * g for g in grid)
    assert restore(torch.zeros(2, 3, *snapped.shape[-2:])).shape == (2, 3, 35, 44)
    if mode == "pad":  # the image itself is kept, the border is mirrored
        torch.testing.assert_close(snapped[..., :35, :44], x)
        torch.testing.assert_close(restore(snapped), x)
    with pytest.raises(ConfigError, match="patch_multiple"):
        build_backbone("vit_test", patch_multiple="crop")


def test_dense_predictions_of_snapped_inputs_keep_the_input_size():
    from microfm.heads import UNetDecoder
    from microfm.modules import SupervisedModule
    from microfm.tasks import CellSegTask

    bb = build_backbone("vit_test", in_chans=1, patch_multiple="pad")
    module = SupervisedModule(bb, CellSegTask(UNetDecoder(64, 4, in_chans=1), layers=[0, 1, 2, 3]))
    with torch.no_grad():
        assert module(torch.rand(2, 1, 30, 43))["cellseg"].shape == (2, 1, 30, 43)


def test_dataset_normalisation_statistics():
    bb = build_backbone("vit_test", in_chans=2, norm_stats="dataset")
    bb.set_normalization([0.2, 0.3], [0.1, 0.5])
    assert bb.mean.flatten().tolist() == pytest.approx([0.2, 0.3])
    with pytest.raises(ValueError, match="positive"):
        bb.set_normalization([0.2, 0.3], [0.0, 0.5])
    with pytest.raises(ConfigError, match="norm_stats"):
        build_backbone("vit_test", norm_stats="imagenet")


# ------------------------------------------------------------------------------ LoRA paths
def test_qkv_bias_attention_would_bypass_lora_without_microfm(tmp_path):
    """timm's EVA attention with q/v biases calls F.linear on qkv.weight: an adapter on qkv
    is never used. microfm routes the call through the module; the guard catches the rest."""
    import timm

    from microfm.finetune.adapt import apply_lora

    raw = timm.create_model(
        "vit_small_patch16_dinov3_qkvb",
        num_classes=0,
        embed_dim=64,
        depth=2,
        num_heads=2,
        patch_size=8,
    )
    with pytest.raises(RuntimeError, match="do not take part"):
        apply_lora(raw, r=2)
    bb = build_backbone("vit_test", in_chans=1)
    assert len(apply_lora(bb.model, r=2)) == 4  # routed: every adapter is used


def _lora_step(name: str, checkpointing, probe_seed: int = 2):
    """LoRA (B non-zero) gradients and output of one backward pass through ``name``."""
    from microfm.finetune.adapt import Finetune

    torch.manual_seed(0)
    bb = build_backbone(name, in_chans=1, grad_checkpointing=checkpointing)
    Finetune("lora", "lora", {"r": 4}, allow_random=True).apply(bb)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    probe = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(probe_seed))
    out = bb.train().forward_features(x)["patch"]
    (out * probe).sum().backward()
    grads = [p.grad.clone() for n, p in bb.named_parameters() if p.requires_grad]
    return out.detach(), grads


@pytest.mark.parametrize("name", ["vit_test", "vit_test_dinov2"])
@pytest.mark.parametrize("mode", ["selective", "full"])
def test_gradient_checkpointing_keeps_lora_gradients(name, mode):
    out0, grads0 = _lora_step(name, False)
    out1, grads1 = _lora_step(name, True if mode == "selective" else mode)
    assert grads0 and all(g.abs().sum() > 0 for g in grads0)
    torch.testing.assert_close(out0, out1)
    for a, b in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(a, b)


def test_selective_checkpointing_recomputes_less_than_whole_blocks():
    """The backward pass of a LoRA step recomputes the blocks' forward: all of it with
    ``full``, all but the attention projection and fc2 products with ``selective``."""
    from torch.utils.flop_counter import FlopCounterMode

    from microfm.finetune.adapt import Finetune

    def backward_flops(checkpointing) -> int:
        torch.manual_seed(0)
        bb = build_backbone("vit_test", in_chans=1, grad_checkpointing=checkpointing)
        Finetune("lora", "lora", {"r": 4, "target_modules": ["attn.qkv"]}, allow_random=True).apply(
            bb
        )
        loss = bb.train().forward_features(torch.rand(2, 1, 64, 64))["patch"].square().sum()
        with FlopCounterMode(display=False) as counter:
            loss.backward()
        return counter.get_total_flops()

    plain, selective, full = (backward_flops(m) for m in (False, "selective", "full"))
    # vit_test: D=64, MLP 4D, 4 blocks, 2 x (64 patches + 5 prefix tokens); per token and block
    # the products are qkv 3D², proj D², fc1 4D², fc2 4D² (2 flops each): selective skips
    # recomputing proj and fc2
    blocks, tokens, D = 4, 2 * (64 + 5), 64
    proj_fc2 = blocks * tokens * 2 * (D * D + 4 * D * D)
    assert full > selective > plain
    assert full - selective == proj_fc2


def test_gradient_checkpointing_survives_deepcopy():
    """An EMA teacher is a deep copy: its blocks must run their own weights."""
    import copy

    bb = build_backbone("vit_test", in_chans=1, grad_checkpointing=True)
    twin = copy.deepcopy(bb)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    x = torch.rand(1, 1, 32, 32)
    for model in (bb, twin):
        with torch.no_grad():
            expected = model.forward_features(x)["patch"]
        torch.testing.assert_close(model.forward_features(x)["patch"].detach(), expected)
    assert not torch.allclose(bb.forward_features(x)["patch"], twin.forward_features(x)["patch"])


def test_gradient_checkpointing_rejects_unknown_setting():
    with pytest.raises(ConfigError, match="backbone.grad_checkpointing"):
        build_backbone("vit_test", in_chans=1, grad_checkpointing="partial")
