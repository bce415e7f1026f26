"""microfm-inspect: counts, adapted modules, feature shapes and the parameter table."""

from __future__ import annotations

import csv

import pytest

from microfm.run.config import compose
from microfm.run.inspect import run_inspect


def test_inspect_tiny_backbone_with_lora(tmp_path, capsys):
    table = tmp_path / "params.csv"
    cfg = compose(
        [
            "backbone=vit_test",
            "finetune=lora",
            "finetune.lora.r=4",
            "finetune.lora.target_modules=[attn.qkv,mlp.fc2]",
            "data.in_chans=2",
            "input_size=[64,96]",
            f"csv={table}",
        ],
        config_name="inspect",
    )
    info = run_inspect(cfg)
    printed = capsys.readouterr().out
    assert info["device"] == "cpu"
    assert len(info["wrapped"]) == 8
    # r * (in + out) per adapted Linear: qkv 64 -> 192, fc2 256 -> 64
    assert info["params"]["lora"] == 4 * 4 * (64 + 192) + 4 * 4 * (256 + 64)
    assert info["params"]["trainable"] == info["params"]["lora"]
    assert info["features"]["patch"] == [1, 64, 8, 12]
    assert info["features"]["layer3"] == [1, 64, 8, 12]
    assert "blocks.3.mlp.fc2" in printed and "(1, 64, 8, 12)" in printed
    with open(table) as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["numel"]) for r in rows) == info["params"]["total"]
    assert {r["kind"] for r in rows} == {"base", "lora"}
    assert rows[0]["name"].startswith("model.")


@pytest.mark.slow
def test_inspect_7b_on_the_meta_device(capsys):
    cfg = compose(["backbone=dinov3_vit7b16", "finetune=lora", "csv=null"], config_name="inspect")
    info = run_inspect(cfg)
    assert info["device"] == "meta"
    assert 6.7e9 < info["params"]["total"] < 6.8e9
    assert info["params"]["lora"] == 40 * 8 * (4096 + 3 * 4096)
    assert info["features"]["patch"] == [1, 4096, 14, 14]
    assert "meta device" in capsys.readouterr().out
