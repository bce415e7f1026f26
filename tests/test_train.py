"""microfm-train end to end on CPU with the tiny backbone: fast_dev_run, results layout,
reproducibility, bad input, and the README command as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from microfm.errors import ConfigError, MicrofmError
from microfm.run.config import compose
from microfm.run.train import train


def test_fast_dev_run(tiny_overrides):
    metrics = train(compose([*tiny_overrides, "debug=fast"]))
    assert "test/cellseg/op_csb" in metrics
    assert 0.0 <= metrics["test/cellseg/op_csb"] <= 1.0


def test_results_layout(tiny_overrides, tmp_path):
    cfg = compose([*tiny_overrides, "debug=smoke"])
    metrics = train(cfg)
    run = tmp_path / "results" / "seg" / "test"
    assert run.is_dir()
    for name in (
        "config_used.yaml",
        "run_info.txt",
        "metrics.json",
        "ckpts/best.ckpt",
        "ckpts/last.ckpt",
        "figs/training_curves.png",
        "figs/test_cellseg.png",
        "logs/metrics.csv",
    ):
        assert (run / name).is_file(), name
    used = yaml.safe_load((run / "config_used.yaml").read_text())
    assert used["backbone"]["name"] == "vit_test" and used["run_dir"] == str(run)
    info = (run / "run_info.txt").read_text()
    for field in ("command:", "git_commit:", "host:", "torch:", "timm:"):
        assert field in info
    stored = json.loads((run / "metrics.json").read_text())
    assert stored == metrics
    for key in (
        "test/cellseg/seg",
        "test/cellseg/det",
        "test/cellseg/op_csb",
        "val/cellseg/op_csb",
        "best/val/cellseg/op_csb",
        "finetune_applied",
    ):
        assert key in stored, key
    assert stored["test/cellseg/op_csb"] == pytest.approx(
        0.5 * (stored["test/cellseg/seg"] + stored["test/cellseg/det"])
    )
    # a checkpoint alone carries the resolved config that rebuilt its model
    ckpt = torch.load(run / "ckpts" / "best.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["microfm"]["config"]["backbone"]["name"] == "vit_test"
    assert ckpt["microfm"]["config"]["task"]["head"]["embed_dim"] == 64
    assert ckpt["microfm"]["meta"]["finetune_applied"] == "full"
    assert not [p for p in run.rglob("*.tmp")]


def test_same_command_twice_gives_same_metrics(tmp_path):
    def run(tag):
        from tests.conftest import TINY

        return train(
            compose(
                [*TINY, "debug=smoke", f"results_root={tmp_path}", f"experiment_id={tag}", "seed=7"]
            )
        )

    a, b = run("a"), run("b")
    keys = [k for k in a if k.startswith(("test/", "val/"))]
    assert keys
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}


@pytest.mark.parametrize(
    "override,match",
    [
        ("backbone.weights=/nonexistent/w.pth", "backbone.weights"),
        ("data.image_size=36", "data.image_size=36"),
        ("data.batch_size=64", "data.batch_size=64"),
        ("+trainer.max_epoch=3", "trainer.max_epoch"),
        ("+task.head.chanels=[8]", "task.head.chanels"),
    ],
)
def test_bad_settings_fail_before_training(tiny_overrides, tmp_path, override, match):
    with pytest.raises(MicrofmError, match=match):
        train(compose([*tiny_overrides, override]))
    assert not (tmp_path / "results" / "seg" / "test" / "ckpts").exists()


def test_unknown_trainer_key_suggests_the_right_one(tiny_overrides):
    with pytest.raises(ConfigError, match="Did you mean trainer.max_epochs"):
        train(compose([*tiny_overrides, "+trainer.max_epoch=3"]))


@pytest.mark.slow
def test_readme_command_as_subprocess(tmp_path):
    """The README's main command, shortened by overrides, run from another directory."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [
        str(Path(sys.executable).parent / "microfm-train"),
        "backbone=dinov3_vits16",
        "task=cellseg",
        "data.n_train=8",
        "data.n_val=4",
        "data.n_test=4",
        "data.image_size=64",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        f"results_root={tmp_path}",
        "experiment_id=readme",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads((tmp_path / "seg" / "readme" / "metrics.json").read_text())
    assert "test/cellseg/op_csb" in metrics
    assert metrics["finetune_applied"] == "full"  # no weights: LoRA falls back to full


@pytest.mark.slow
def test_cli_reports_bad_input_clearly(tmp_path):
    cli = str(Path(sys.executable).parent / "microfm-train")
    out = subprocess.run(
        [cli, "backbone.weights=/no/such/file.pth", f"results_root={tmp_path}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "backbone.weights" in out.stderr and "/no/such/file.pth" in out.stderr
    out = subprocess.run(
        [cli, "trainer.max_epoch=3"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0 and "trainer.max_epoch" in out.stderr
