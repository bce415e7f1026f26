"""Hydra's basic launcher and hydra-submitit-launcher's local and SLURM launchers, with what a
microfm sweep needs (see :mod:`microfm.distributed.sweep`): one launch stamp for every job,
rank and requeue, checks before submission, every job run to its end even when another fails,
and a summary of the sweep."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher as _BasicLauncher
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    LocalLauncher as _LocalLauncher,
)
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as _SlurmLauncher,
)


class BasicLauncher(_BasicLauncher):
    """Jobs one after the other in this process (``cluster=none``)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from microfm.distributed import sweep
        from microfm.distributed.resolvers import pin_run_stamp

        stamp = pin_run_stamp()
        dirs = [sweep.job_dir(c) for c in sweep.job_configs(self, job_overrides, initial_job_idx)]
        returns = super().launch(job_overrides, initial_job_idx)
        rows = [
            sweep.outcome(num, ov, d, ret)
            for num, (ov, d, ret) in enumerate(zip(job_overrides, dirs, returns), initial_job_idx)
        ]
        sweep.write_summary(str(self.config.hydra.sweep.dir), stamp, rows)
        return returns


class _SubmititSweep:
    stamp: str = ""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> Any:
        from microfm.distributed.sweep import run_submitit_job

        return run_submitit_job(self, sweep_overrides, job_dir_key, job_num, singleton_state)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from microfm.distributed.sweep import launch_submitit

        return launch_submitit(self, job_overrides, initial_job_idx)


class LocalLauncher(_SubmititSweep, _LocalLauncher):
    """One submitit job per sweep point on this machine (``cluster=local``)."""


class SlurmLauncher(_SubmititSweep, _SlurmLauncher):
    """One SLURM job per sweep point, submitted as a job array (``cluster=slurm``)."""
