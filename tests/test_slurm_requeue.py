"""cluster=slurm end to end on one machine through a minimal fake SLURM (tests/fakeslurm.py):
the launcher submits the script microfm-slurm-preview shows, SLURM starts one task per device
and Lightning joins them (DDP, gloo) without spawning; SIGUSR2 before a "time limit" makes
submitit requeue the job, which resumes in the same run folder and finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from microfm.cli.slurm_preview import preview
from microfm.run.config import compose
from microfm.run.train import train
from tests.conftest import REPO, TINY

FAKESLURM = Path(__file__).parent / "fakeslurm.py"


@pytest.mark.slow
def test_slurm_job_is_requeued_after_sigusr2_and_resumes(tmp_path):
    state, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    subprocess.run([sys.executable, str(FAKESLURM), "install", str(bin_dir)], check=True)
    common = [
        *TINY,
        "data.n_train=16",
        "data.batch_size=4",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        "callbacks.last.every_n_train_steps=2",
        f"results_root={tmp_path}",
    ]
    sweep = [
        "cluster=slurm",
        "trainer.devices=2",
        "hydra.launcher.timeout_min=30",
        "experiment_id=slurm",
        "+callbacks.preempt._target_=tests.callbacks.PreemptOnce",
        "+callbacks.preempt.step=5",  # mid-epoch 2; last.ckpt was written at step 4
        f"+callbacks.preempt.marker={tmp_path / 'preempted'}",
    ]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "PYTHONWARNINGS": "ignore",
        "FAKESLURM_STATE": str(state),
    }
    cmd = [sys.executable, "-m", "microfm.cli.train", *common, *sweep]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    logs = "\n".join(p.read_text() for p in tmp_path.glob("seg/.submitit/*/*_log.*"))
    assert out.returncode == 0, out.stderr[-3000:] + logs[-5000:]

    # the launcher submitted exactly what the preview shows
    (submitted,) = state.glob("*.sbatch")
    assert submitted.read_text() == preview([*common, *sweep])[0]

    # preempted once, requeued by submitit (not by Lightning), resumed in the same folder
    assert (tmp_path / "preempted").is_file()
    for _ in range(100):  # the batch script ends a moment after the tasks' results appear
        (job,) = [json.loads(p.read_text()) for p in state.glob("*.json")]
        if job["state"] != "RUNNING":
            break
        time.sleep(0.1)
    assert job["state"] == "COMPLETED" and job["restarts"] == 1
    # only rank 0 requeues; rank 1 may be blocked in a collective until it is killed, but if
    # it handled the signal it must have declined to requeue
    submitit0 = "".join(p.read_text() for p in tmp_path.glob("seg/.submitit/*/*_0_log.*"))
    rank1 = "".join(p.read_text() for p in tmp_path.glob("seg/.submitit/*/*_1_log.*"))
    assert "Requeued job" in submitit0 and "Requeued job" not in rank1
    if "Caught signal SIGUSR2" in rank1:
        assert "Not checkpointing nor requeuing" in rank1
    run = tmp_path / "seg" / "slurm_j0"
    assert sorted(p.name for p in (tmp_path / "seg").iterdir() if p.name.startswith("slurm")) == [
        "slurm_j0"
    ]
    rank0 = (run / "train.log").read_text()
    assert rank0.count("resume=auto: continuing from") == 1
    assert (
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"
        in (run / "train.rank1.log").read_text()
    )

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 8
    summary = json.loads(next((tmp_path / "seg").glob("sweep_*.json")).read_text())
    assert summary["jobs"][0]["status"] == "completed"

    # and it trained like one uninterrupted process on the same global batch
    single = train(compose([*common, "experiment_id=single"]))
    for key in [k for k in single if k.startswith(("val/", "test/"))]:
        assert metrics[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    a = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "seg" / "single" / "ckpts" / "last.ckpt", weights_only=False)
    for name, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][name], value, rtol=1e-3, atol=1e-4)
