"""Real data end to end: cellseg on BBBC039 through data=folder, and microfm-data check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from microfm.run.config import compose
from microfm.run.train import train


@pytest.mark.slow
def test_cellseg_trains_on_bbbc039_through_data_folder(shared, tmp_path):
    root = shared / "data" / "bbbc039_nuclei"
    cfg = compose(
        [
            "task=cellseg",
            "backbone=vit_test",
            "data=folder",
            f"data.root={root}",
            "data.crop_size=64",
            "data.batch_size=4",
            "data.num_workers=0",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.min_foreground=0.05",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            f"results_root={tmp_path / 'results'}",
            "experiment_id=bbbc039",
        ]
    )
    metrics = train(cfg)
    run = tmp_path / "results" / "seg" / "bbbc039"
    assert (run / "ckpts" / "best.ckpt").is_file()
    stored = json.loads((run / "metrics.json").read_text())
    for key in ("test/cellseg/op_csb", "best/val/cellseg/op_csb", "test/cellseg/loss"):
        assert key in stored and stored[key] == metrics[key]
    assert 0.0 <= metrics["test/cellseg/op_csb"] <= 1.0
    # the checkpoint carries what inference needs to normalise images the same way
    import torch

    from microfm.transforms import Normalizer

    ckpt = torch.load(run / "ckpts" / "best.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["FolderDataModule"]["microfm_data"]
    assert state["in_chans"] == 1 and state["channels"] is None
    norm = Normalizer.from_state(state["normalizer"])
    assert norm.settings() == {**norm.settings(), "mode": "percentile", "low": 1.0, "high": 99.8}


def test_check_command_describes_the_splits(shared, tmp_path, capsys):
    from microfm.cli.data import main

    root = shared / "data" / "bbbc039_nuclei"
    main(["check", "data=folder", f"data.root={root}", f"data.cache_dir={tmp_path}"])
    text = capsys.readouterr().out
    for expected in (
        "train: 42 images",
        "val: 9 images",
        "test: 9 images",
        "1x520x696 (42)",
        "uint16 (42)",
        "labelled objects: ",
    ):
        assert expected in text, text
    total = sum(
        int(line.split(":")[1].split()[0])
        for line in text.splitlines()
        if "labelled objects" in line
    )
    from microfm.data.io import read_label

    expected_total = sum(len(set(read_label(p).ravel()) - {0}) for p in (root / "labels").iterdir())
    assert total == expected_total


@pytest.mark.slow
def test_check_command_as_a_subprocess(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "microfm.cli.data",
            "check",
            "data=folder",
            f"data.root={tmp_path / 'missing'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "data.root: not found" in out.stderr
