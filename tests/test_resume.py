"""Fault tolerance: a run killed mid-epoch (SIGTERM, SIGKILL) and restarted with the same
command ends exactly like an uninterrupted run, and keeps every metric it had written."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from microfm.distributed.preemption import resume_path
from microfm.errors import ConfigError
from microfm.run.config import compose
from microfm.run.loggers import csv_logger
from microfm.run.train import train
from tests.conftest import REPO, TINY

# 4 batches per epoch, 3 epochs; last.ckpt every 2 optimizer steps and at every validation
COMMON = [
    *TINY,
    "data.n_train=16",
    "data.batch_size=4",
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
    "callbacks.last.every_n_train_steps=2",
    "resume=auto",
]


def test_resume_path(tmp_path):
    assert resume_path(None, tmp_path) is None
    assert resume_path("auto", tmp_path) is None  # nothing yet: start afresh
    with pytest.raises(ConfigError, match="last.ckpt"):
        resume_path("last", tmp_path)
    with pytest.raises(ConfigError, match="nope.ckpt"):
        resume_path(str(tmp_path / "nope.ckpt"), tmp_path)
    last = tmp_path / "ckpts" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resume_path("auto", tmp_path) == resume_path("last", tmp_path) == str(last)


def test_csv_log_continues_after_a_restart(tmp_path):
    first = csv_logger(str(tmp_path))
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"train/loss": 0.5}, step=1)
    second = csv_logger(str(tmp_path))  # Lightning's CSVLogger would delete metrics.csv here
    second.log_metrics({"train/loss": 0.25, "val/x": 3.0}, step=2)  # a new column too
    with open(tmp_path / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["train/loss"] for r in rows] == ["1.0", "0.5", "0.25"]
    assert rows[2]["val/x"] == "3.0" and rows[0]["val/x"] == ""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    train(compose([*COMMON, f"results_root={root}", "experiment_id=ref"]))
    return root / "seg" / "ref"


def rows(run) -> list[tuple]:
    with open(run / "logs" / "metrics.csv") as f:
        return [tuple(sorted((k, v) for k, v in r.items() if v != "")) for r in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum,step,saved_at",
    [
        (signal.SIGTERM, 5, 5),  # Lightning stops after step 5; last.ckpt is written then
        (signal.SIGKILL, 7, 6),  # nothing can be saved: the restart replays step 7
    ],
    ids=["SIGTERM", "SIGKILL"],
)
def test_killed_run_restarted_with_the_same_command_ends_like_an_uninterrupted_one(
    tmp_path, uninterrupted, signum, step, saved_at
):
    cmd = [sys.executable, "-m", "microfm.cli.train", *COMMON, f"results_root={tmp_path}"]
    cmd += [
        "experiment_id=run",
        "+callbacks.kill._target_=tests.callbacks.KillOnce",
        f"+callbacks.kill.step={step}",
        f"+callbacks.kill.signum={int(signum)}",
        f"+callbacks.kill.marker={tmp_path / 'killed'}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    run = tmp_path / "seg" / "run"

    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "killed").is_file(), first.stderr[-3000:]
    assert first.returncode == (143 if signum == signal.SIGTERM else -signal.SIGKILL)
    ckpt = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == saved_at  # mid-epoch (4 steps per epoch)
    written_rows, written_metrics = rows(run), json.loads((run / "metrics.json").read_text())
    assert written_rows and "val/cellseg/op_csb" in written_metrics

    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resume=auto: continuing from" in (run / "train.log").read_text()

    final = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    ref = torch.load(uninterrupted / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == ref["global_step"] == 12
    for name, value in ref["state_dict"].items():
        assert torch.equal(final["state_dict"][name], value), name
    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((uninterrupted / "metrics.json").read_text())
    keys = [k for k in expected if k.startswith(("val/", "test/", "best/"))]
    assert len(keys) >= 9
    assert {k: metrics[k] for k in keys} == {k: expected[k] for k in keys}
    # nothing written before the kill was lost
    assert set(written_rows) <= set(rows(run))
    assert set(written_metrics) <= set(metrics)
    # every row of the uninterrupted run is there (replayed steps may appear twice)
    assert set(rows(uninterrupted)) <= set(rows(run))
