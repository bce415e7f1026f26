"""Config resolvers that name a run the same way in every process that serves it.

Every rank of a DDP job, every job of a sweep and every restart of a requeued job composes the
config on its own. Values that depend on the moment or the process (``${now:...}``) would then
differ between ranks and between restarts, and so would the run folder. These resolvers give:

- ``${microfm.stamp:}``: one time stamp per launch. The first microfm process of a launch pins
  it in the environment (``MICROFM_RUN_STAMP``), which every child inherits: Lightning's own
  processes, submitit's local tasks, ``sbatch``'s exported environment, and microfm's launchers
  store it with the pickled job so a requeued job gets it back. Without a pinned stamp, the
  tasks of one ``srun`` step agree on ``slurm<job>.<step>`` instead of a clock reading.
- ``${microfm.job_suffix:}``: ``_j<num>`` for job ``num`` of a multirun, empty otherwise, so
  that the jobs of a sweep that differ only in, say, ``finetune.lora.r`` get distinct folders.
- ``${microfm.rank_suffix:}``: empty on rank 0, ``.rank<r>`` on the others (per-rank log files).
- ``${microfm.sweep_group:}``: ``sweep_<stamp>`` in a multirun, null otherwise (W&B group).
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

STAMP_ENV = "MICROFM_RUN_STAMP"
STAMP_FORMAT = "%Y%m%d-%H%M%S"


def run_stamp() -> str:
    """The pinned stamp of this launch, or (when none is pinned) a new one."""
    pinned = os.environ.get(STAMP_ENV)
    if pinned:
        return pinned
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm{os.environ['SLURM_JOB_ID']}.{os.environ.get('SLURM_STEP_ID', '0')}"
    return dt.datetime.now().strftime(STAMP_FORMAT)


def pin_run_stamp(stamp: str | None = None) -> str:
    """Fix the stamp for this process and every process it starts; returns it."""
    stamp = stamp or run_stamp()
    os.environ[STAMP_ENV] = stamp
    return stamp


def process_rank() -> int:
    """Global rank of this process as its launcher told it (0 when not distributed)."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor == "local":
        return int(os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0"))
    if executor == "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    for key in ("RANK", "LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def _hydra_node(root: Any) -> Any:
    """The ``hydra`` node of the config being resolved, or of the running Hydra job."""
    hydra = root.get("hydra") if hasattr(root, "get") else None
    if hydra is not None:
        return hydra
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def _is_multirun(hydra: Any) -> bool:
    from hydra.types import RunMode

    return hydra is not None and hydra.get("mode") == RunMode.MULTIRUN


def _job_suffix(*, _root_: Any) -> str:
    # `hydra.sweep.subdir` is resolved before Hydra installs the job's HydraConfig, `run_dir`
    # after it and without the hydra node: read whichever describes the job being resolved.
    hydra = _hydra_node(_root_)
    if not _is_multirun(hydra):
        return ""
    num = hydra.job.get("num")
    return f"_j{num}" if num is not None else ""


def _sweep_group(*, _root_: Any) -> str | None:
    return f"sweep_{run_stamp()}" if _is_multirun(_hydra_node(_root_)) else None


def _rank_suffix() -> str:
    rank = process_rank()
    return f".rank{rank}" if rank else ""


def register() -> None:
    """Register the resolvers (idempotent)."""
    from omegaconf import OmegaConf

    resolvers = {
        "microfm.stamp": run_stamp,
        "microfm.job_suffix": _job_suffix,
        "microfm.sweep_group": _sweep_group,
        "microfm.rank_suffix": _rank_suffix,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            # stamp and rank are per process: cache them like Hydra's `now`
            OmegaConf.register_new_resolver(name, fn, use_cache=name == "microfm.stamp")
