"""Sweeps: the example sweep configs expand to composable jobs, every job gets its own run
folder, a failing job does not stop the others, and the summary lists every outcome."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from microfm.cli.slurm_preview import sweep_jobs
from microfm.distributed.sweep import failed_return, outcome, write_summary
from microfm.run.config import config_dir
from tests.conftest import REPO, TINY
from tests.test_slurm import full_config

SWEEPS = sorted(p.stem for p in (config_dir() / "sweep").glob("*.yaml"))


def test_there_are_sweep_examples():
    assert {"lora_rank_lr", "backbone_dataset"} <= set(SWEEPS)


@pytest.mark.parametrize("name", SWEEPS)
def test_every_point_of_a_sweep_composes(name, tmp_path):
    cfg = full_config([f"sweep={name}", f"results_root={tmp_path}"])
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    jobs = sweep_jobs([f"{k}={v}" for k, v in params.items()])
    assert len(jobs) == math.prod(len(v.split(",")) for v in params.values()) > 1
    for job in jobs:
        point = full_config([f"sweep={name}", *job, f"results_root={tmp_path}"])
        for key in point:
            if key != "hydra" and OmegaConf.is_config(point[key]):
                OmegaConf.to_container(point[key], resolve=True)  # interpolations resolve
        for key, value in (o.split("=", 1) for o in job):
            if key in point.hydra.runtime.choices:  # a config group: its option was chosen
                assert point.hydra.runtime.choices[key] == value
            else:
                assert OmegaConf.select(point, key) == yaml.safe_load(value)


def test_summary_lists_completed_failed_and_crashed_jobs(tmp_path):
    done = JobReturn()
    done.status, done._return_value = JobStatus.COMPLETED, 0.75
    raised = JobReturn()
    raised.status, raised._return_value = JobStatus.FAILED, ValueError("data.batch_size=64 ...")
    crashed = failed_return(["optim.lr=1"], RuntimeError("killed"))
    rows = [
        outcome(0, ["finetune.lora.r=4"], "r/j0", done),
        outcome(1, ["finetune.lora.r=8"], "r/j1", raised),
        outcome(2, ["finetune.lora.r=16"], "r/j2", crashed, error="UncompletedJobError: gone"),
    ]
    path = write_summary(tmp_path, "20250101-000000", rows[:2])
    write_summary(tmp_path, "20250101-000000", rows[2:])  # a later batch of the same sweep
    summary = json.loads(path.read_text())
    assert path.name == "sweep_20250101-000000.json"
    assert (summary["jobs_total"], summary["jobs_completed"], summary["jobs_failed"]) == (3, 1, 2)
    jobs = summary["jobs"]
    assert jobs[0]["status"] == "completed" and jobs[0]["result"] == 0.75
    assert jobs[1]["status"] == "failed" and "ValueError: data.batch_size=64" in jobs[1]["error"]
    assert jobs[2]["error"] == "UncompletedJobError: gone"
    with pytest.raises(RuntimeError, match="killed"):
        _ = crashed.return_value  # Hydra's sweeper re-raises it after the summary is written


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["none", "local"])
def test_a_failing_job_does_not_stop_the_sweep(tmp_path, cluster):
    """Job 0 asks for more samples per batch than the data has and fails; job 1 still runs
    (in this process, or as the next submitit job) in its own folder, and the summary says
    which job failed and why."""
    cmd = [sys.executable, "-m", "microfm.cli.train", "-m", *TINY, "debug=fast"]
    cmd += ["data.batch_size=64,4", f"results_root={tmp_path}", "experiment_id=sw"]
    cmd += [f"cluster={cluster}", "trainer.accelerator=cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0  # the sweep reports the failure ...
    assert (tmp_path / "seg" / "sw_j1" / "metrics.json").is_file()  # ... after every job ran
    (path,) = (tmp_path / "seg").glob("sweep_*.json")
    summary = json.loads(path.read_text())
    assert {j["num"]: j["status"] for j in summary["jobs"]} == {0: "failed", 1: "completed"}
    failed = summary["jobs"][0]
    assert "ConfigError" in failed["error"] and "data.batch_size=64" in failed["error"]
    assert failed["run_dir"].endswith("sw_j0") and "data.batch_size=64" in failed["overrides"]
    assert summary["jobs"][1]["result"] is not None  # the job's returned test metric
    assert "1 failed" in out.stdout + out.stderr  # the summary table in the log
