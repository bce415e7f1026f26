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
