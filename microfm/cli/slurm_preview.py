"""``microfm-slurm-preview``: print the sbatch script that ``microfm-train cluster=slurm`` would
submit for the same arguments, without submitting anything.

microfm-slurm-preview trainer.devices=4 trainer.num_nodes=2 finetune.lora.r=4,8,16
microfm-slurm-preview --launcher trainer.devices=4     # the resolved hydra.launcher node
microfm-train cluster=slurm --cfg hydra -p hydra.launcher   # the same node, unresolved

The script is rendered by submitit itself from the launcher parameters, exactly as the SLURM
launcher does (a job array for a sweep of several points). The same checks run as before a
real submission (one task per GPU, nodes), so a bad layout fails here too.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import OmegaConf

from microfm.cli import user_errors


@contextlib.contextmanager
def _srun_assumed() -> Iterator[None]:
    """submitit's SlurmExecutor refuses to exist where ``srun`` is missing (here: a preview)."""
    from unittest import mock

    from submitit.slurm import slurm

    with mock.patch.object(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2)):
        yield


def render_sbatch(params: dict[str, Any], num_jobs: int) -> str:
    """The sbatch script submitit writes for ``num_jobs`` jobs of a launcher with ``params``
    (the resolved ``hydra.launcher`` node)."""
    from submitit.slurm import slurm

    from microfm.distributed.sweep import make_executor

    with _srun_assumed():
        executor = make_executor(params, "slurm")._executor
        if num_jobs > 1:  # as SlurmExecutor._internal_process_submissions does for an array
            array = slurm.SlurmExecutor(executor.folder, executor.max_num_timeout)
            array.update_parameters(**executor.parameters)
            array.parameters["map_count"] = num_jobs
            return array._make_submission_file_text(executor._submitit_command_str, "preview")
        return executor._make_submission_file_text(executor._submitit_command_str, "preview")


def sweep_jobs(overrides: Sequence[str]) -> list[list[str]]:
    """The override list of every job of a sweep (Hydra's basic sweeper expansion)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def preview(overrides: Sequence[str], launcher: bool = False) -> tuple[str, list[list[str]]]:
    """The sbatch script and the jobs' overrides for ``microfm-train cluster=slurm <overrides>``
    (with ``launcher=True``: the resolved ``hydra.launcher`` node as YAML instead).

    Raises:
        ConfigError: the launcher and trainer disagree (one task per GPU, nodes).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from microfm.distributed.checks import check_launcher_config
    from microfm.errors import ConfigError
    from microfm.run.config import config_dir, register_resolvers

    overrides = list(overrides)
    clusters = [o.split("=", 1)[1] for o in overrides if o.startswith("cluster=")]
    if any(c != "slurm" for c in clusters):
        raise ConfigError(f"microfm-slurm-preview renders cluster=slurm, not cluster={clusters[0]}")
    if not clusters:
        overrides.insert(0, "cluster=slurm")
    register_resolvers()
    jobs = sweep_jobs(overrides)
    GlobalHydra.instance().clear()
    params = None
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        for job in jobs:
            cfg = compose(
                "train", overrides=[*job, "hydra.job.name=train"], return_hydra_config=True
            )
            check_launcher_config(cfg, "slurm")
            if params is None:
                params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    GlobalHydra.instance().clear()
    if launcher:
        return OmegaConf.to_yaml(params), jobs
    return render_sbatch(params, len(jobs)), jobs


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    show_launcher = "--launcher" in args
    args = [a for a in args if a != "--launcher"]
    with user_errors("microfm-slurm-preview", logged=False):
        script, jobs = preview(args, launcher=show_launcher)
    print(
        f"# {len(jobs)} job(s), submitted as {'a job array' if len(jobs) > 1 else 'one job'}:",
        file=sys.stderr,
    )
    for num, job in enumerate(jobs):
        print(f"#   {num}: {' '.join(job)}", file=sys.stderr)
    sys.stdout.write(script)


if __name__ == "__main__":
    main()
