"""What microfm's Hydra launchers add to Hydra's: a launch stamp shared by every job and rank,
checks before anything is submitted, jobs that keep running when another fails, and a
summary of the sweep (``<sweep dir>/sweep_<stamp>.json`` and a table in the log).

The launcher classes themselves live in ``hydra_plugins.microfm_launchers`` (Hydra only
instantiates launchers from that namespace); they are thin and call the functions here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from microfm.utils.io import atomic_write_text, file_lock

log = logging.getLogger("microfm.sweep")


def job_configs(launcher: Any, job_overrides: Sequence[Sequence[str]], first: int) -> list:
    """Each job's full config (with its ``hydra`` node and job number), as the job will see it."""
    configs = []
    for num, overrides in enumerate(job_overrides, start=first):
        cfg = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(overrides)
        )
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        configs.append(cfg)
    return configs


def job_dir(cfg: DictConfig) -> str:
    """The run folder of a job (Hydra's output folder, which microfm's run_dir equals)."""
    return os.path.join(str(cfg.hydra.sweep.dir), str(cfg.hydra.sweep.subdir))


def executor_parameters(params: dict[str, Any], executor: str) -> tuple[dict, dict]:
    """Split launcher parameters into submitit ``AutoExecutor`` constructor and
    ``update_parameters`` arguments, exactly as hydra-submitit-launcher does."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    params = {k: v for k, v in params.items() if k not in ("_target_", "parallel_jobs")}
    init_keys = {"max_num_timeout"}
    init = {"folder": params["submitit_folder"]}
    init.update({f"{executor}_{k}": v for k, v in params.items() if k in init_keys})
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    update = {
        (k if k in base else f"{executor}_{k}"): v
        for k, v in params.items()
        if k not in init_keys | {"submitit_folder"}
    }
    return init, update


def make_executor(params: dict[str, Any], executor: str):
    """The submitit executor a launcher with these parameters submits through."""
    import submitit

    init, update = executor_parameters(params, executor)
    ex = submitit.AutoExecutor(cluster=executor, **init)
    ex.update_parameters(**update)
    return ex


def outcome(num: int, overrides: Sequence[str], run_dir: str, ret: Any, error: str = "") -> dict:
    """One row of the summary, from a Hydra ``JobReturn`` (None when the job never returned)."""
    from hydra.core.utils import JobStatus, filter_overrides

    row: dict[str, Any] = {
        "num": num,
        "overrides": " ".join(filter_overrides(list(overrides))),
        "run_dir": run_dir,
        "status": "failed",
        "result": None,
        "error": error,
    }
    if ret is not None and ret.status == JobStatus.COMPLETED:
        row["status"] = "completed"
        value = ret._return_value
        row["result"] = value if isinstance(value, (int, float, str)) or value is None else None
    elif ret is not None and ret.status == JobStatus.FAILED and not error:
        exc = ret._return_value
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def failed_return(overrides: Sequence[str], error: BaseException) -> Any:
    """A Hydra ``JobReturn`` for a job that died without returning (killed, out of memory,
    node failure): Hydra's sweeper reports it like a job that raised."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.status = JobStatus.FAILED
    ret._return_value = error
    return ret


def write_summary(sweep_dir: str | Path, stamp: str, rows: list[dict]) -> Path:
    """Merge ``rows`` into ``<sweep_dir>/sweep_<stamp>.json`` and log a table of all jobs."""
    path = Path(sweep_dir) / f"sweep_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path):
        jobs = {}
        if path.exists():
            jobs = {str(j["num"]): j for j in json.loads(path.read_text()).get("jobs", [])}
        jobs.update({str(r["num"]): r for r in rows})
        ordered = sorted(jobs.values(), key=lambda r: r["num"])
        failed = [r for r in ordered if r["status"] != "completed"]
        summary = {
            "sweep": f"sweep_{stamp}",
            "jobs_total": len(ordered),
            "jobs_completed": len(ordered) - len(failed),
            "jobs_failed": len(failed),
            "jobs": ordered,
        }
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    lines = [
        f"sweep_{stamp}: {len(ordered)} jobs, {len(ordered) - len(failed)} completed, "
        f"{len(failed)} failed (summary: {path})"
    ]
    shared = set.intersection(*(set(r["overrides"].split()) for r in ordered))
    for r in ordered:  # the overrides that tell the jobs apart, the outcome, the folder
        own = " ".join(o for o in r["overrides"].split() if o not in shared) or "-"
        what = r["error"] if r["status"] != "completed" else f"result={r['result']}"
        lines.append(f"  #{r['num']} {r['status']:<9} {own}  {what}  {r['run_dir']}")
    (log.warning if failed else log.info)("\n".join(lines))
    return path


def run_submitit_job(
    launcher: Any,
    sweep_overrides: list[str],
    job_dir_key: str,
    job_num: int,
    singleton_state: dict,
) -> Any:
    """Body of a submitit job: runs in every task (rank) of the job and again after a requeue.

    As hydra-submitit-launcher's, plus: the launch stamp comes back from the pickled launcher
    (the run folder stays the same after a requeue), the job's Hydra config is installed
    before its folder name is resolved, and only rank 0 writes Hydra's ``.hydra/`` files.
    """
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from microfm.distributed.resolvers import pin_run_stamp

    if launcher.stamp:
        pin_run_stamp(launcher.stamp)
    Singleton.set_state(singleton_state)
    setup_globals()
    cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, sweep_overrides)
    env = submitit.JobEnvironment()
    with open_dict(cfg.hydra.job):
        cfg.hydra.job.id = env.job_id
        cfg.hydra.job.num = job_num
    if env.global_rank > 0:
        with open_dict(cfg.hydra):
            cfg.hydra.output_subdir = None
    HydraConfig.instance().set_config(cfg)
    return run_job(
        hydra_context=launcher.hydra_context,
        task_function=launcher.task_function,
        config=cfg,
        job_dir_key=job_dir_key,
        job_subdir_key="hydra.sweep.subdir",
    )


def launch_submitit(launcher: Any, job_overrides: Sequence[Sequence[str]], first: int) -> list:
    """Check every job, submit them all (a SLURM job array), wait for all of them and return
    one Hydra ``JobReturn`` each, failed ones included, after writing the sweep summary."""
    from hydra.core.singleton import Singleton

    from microfm.distributed.checks import check_launcher_config
    from microfm.distributed.resolvers import pin_run_stamp

    launcher.stamp = pin_run_stamp()
    executor_name = launcher._EXECUTOR
    configs = job_configs(launcher, job_overrides, first)
    for cfg in configs:  # nothing is submitted unless every job is laid out correctly
        check_launcher_config(cfg, executor_name)
    executor = make_executor(launcher.params, executor_name)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log.info("submitit %s sweep_%s: %d job(s)", executor_name, launcher.stamp, len(configs))
    args = [
        (list(ov), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
        for num, ov in enumerate(job_overrides, start=first)
    ]
    # submitit's local executor starts every job at once; one machine runs a few at a time
    parallel = int(launcher.params.get("parallel_jobs") or len(args))
    jobs = []
    for start in range(0, len(args), parallel):
        chunk = executor.map_array(launcher, *zip(*args[start : start + parallel]))
        if start + parallel < len(args):
            for job in chunk:
                job.wait()
        jobs += chunk
    returns, rows = [], []
    for (overrides, _, num, _, _), cfg, job in zip(args, configs, jobs):
        error = ""
        try:
            ret = job.results()[0]  # rank 0's return
        except Exception as exc:  # killed, out of memory, node failure: keep collecting
            last = (str(exc).strip().splitlines() or [""])[-1][:500]
            error = f"{type(exc).__name__}: {last} (job {job.job_id}, log {job.paths.stderr})"
            ret = failed_return(overrides, exc)
        returns.append(ret)
        rows.append(outcome(num, overrides, job_dir(cfg), ret, error))
    write_summary(sweep_dir, launcher.stamp, rows)
    return returns
