"""microfm-export: ONNX with dynamic batch/height/width through the dynamo exporter (DINOv3
RoPE and DINOv2 position-embedding interpolation), LoRA merged, parity with onnxruntime as
part of the export; TorchScript."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from microfm.inference import load_model
from microfm.inference.export import ExportModule, check_parity, export_onnx
from microfm.run.config import compose
from tests.inference_fixtures import trained_run  # noqa: F401  (session fixture)


def _export(trained_run, tmp_path, *extra):  # noqa: F811
    from microfm.cli.export import run_export

    cfg = compose(
        [f"ckpt={trained_run / 'ckpts' / 'best.ckpt'}", f"output={tmp_path / 'model'}", *extra],
        config_name="export",
    )
    return run_export(cfg)


@pytest.mark.slow
def test_onnx_export_of_a_lora_checkpoint_dinov3_rope(trained_run, tmp_path):  # noqa: F811
    import onnxruntime as ort

    report = _export(trained_run, tmp_path, "format=onnx")
    assert report["max_abs_diff"] <= 1e-4 and len(report["shapes"]) == 3
    path = tmp_path / "model"
    meta = json.loads(path.with_name("model.json").read_text())
    model = load_model(trained_run / "ckpts" / "best.ckpt")
    ws = model.tasks["cellseg"].postprocess
    assert meta["tasks"]["cellseg"]["watershed"]["cells_max"] == ws.cells_max
    assert meta["patch_size"] == 8 and meta["outputs"] == ["cellseg"]
    # a batch and a size the export never saw
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 40, 72)
    with torch.no_grad():
        ref = model(x)["cellseg"].numpy()
    (out,) = session.run(None, {"image": x.numpy()})
    assert out.shape == (5, 1, 40, 72)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch",
    [{}, {"reg_tokens": 4, "no_embed_class": True}],
    ids=["plain", "registers"],  # registers: the antialiased resize of the dinov2_*_reg models
)
def test_onnx_export_dinov2_position_embedding_interpolation(tmp_path, arch):
    from microfm.backbones import build_backbone
    from microfm.heads import LinearHead
    from microfm.inference.checkpoint import InferenceModel
    from microfm.tasks import SemSegTask
    from microfm.transforms.intensity import Normalizer

    torch.manual_seed(0)
    backbone = build_backbone("vit_test_dinov2", in_chans=2, **arch)
    assert backbone.model.num_reg_tokens == arch.get("reg_tokens", 0)
    task = SemSegTask(LinearHead(64, 1, out_channels=3), layers=[3], num_classes=3)
    model = InferenceModel(backbone, [task], Normalizer()).eval()
    report = export_onnx(model, tmp_path / "dinov2.onnx")
    assert report["max_abs_diff"] <= 1e-4
    # the native 8x8 grid (64 px, no interpolation needed) and others were checked
    assert [3, 2, 64, 64] in report["shapes"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "dinov2.onnx"))
    x = torch.rand(1, 2, 96, 24)
    with torch.no_grad():
        ref = model(x)["semseg"].numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], ref, atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_export(trained_run, tmp_path):  # noqa: F811
    report = _export(trained_run, tmp_path, "format=torchscript")
    assert report["max_abs_diff"] <= 1e-4
    loaded = torch.jit.load(str(tmp_path / "model"))
    model = load_model(trained_run / "ckpts" / "best.ckpt")
    x = torch.rand(2, 1, 56, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)["cellseg"], atol=1e-4, rtol=0)


def test_parity_check_measures_the_difference(trained_run):  # noqa: F811
    module = ExportModule(load_model(trained_run / "ckpts" / "best.ckpt"))

    def off_by(delta):
        def run(x):
            with torch.no_grad():
                return [o.numpy() + delta for o in module(torch.from_numpy(x))]

        return run

    assert check_parity(off_by(0.0), module, [(1, 1, 16, 16)]) == 0.0
    assert check_parity(off_by(0.01), module, [(1, 1, 16, 24)]) == pytest.approx(0.01, rel=1e-3)


def test_export_format_is_checked(trained_run, tmp_path):  # noqa: F811
    from microfm.errors import ConfigError

    with pytest.raises(ConfigError, match="format"):
        _export(trained_run, tmp_path, "format=tflite")
