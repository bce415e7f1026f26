"""Who started this process, and the Lightning cluster environment that passes it on.

microfm never lets Lightning start processes inside a job that a launcher already split into
one process per device: under SLURM each task is one rank (Lightning's ``SLURMEnvironment``,
with its auto-requeue off because submitit owns requeueing), and under submitit's local
executor each task is one rank as well (:class:`SubmititLocalEnvironment`). Both report that
processes are created externally, so Lightning only joins them into a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment


@dataclass(frozen=True)
class Launch:
    """How the processes of a run were laid out by the launcher that started them.

    Attributes:
        source: ``submitit-local``, ``submitit-slurm`` or ``slurm``.
        world_size: number of processes (tasks) in the job.
        num_nodes: number of nodes.
        global_rank, local_rank, node_rank: this process.

    Example:
        >>> Launch("slurm", world_size=8, num_nodes=2, global_rank=5, local_rank=1,
        ...        node_rank=1).tasks_per_node
        4
    """

    source: str
    world_size: int
    num_nodes: int
    global_rank: int
    local_rank: int
    node_rank: int

    @property
    def tasks_per_node(self) -> int:
        return self.world_size // max(1, self.num_nodes)


def current_launch() -> Launch | None:
    """The launch layout of this process, or None when no cluster launcher started it."""
    executor = os.environ.get("SUBMITIT_EXECUTOR")
    if executor in ("local", "slurm"):
        import submitit

        env = submitit.JobEnvironment()
        return Launch(
            source=f"submitit-{executor}",
            world_size=env.num_tasks,
            num_nodes=env.num_nodes,
            global_rank=env.global_rank,
            local_rank=env.local_rank,
            node_rank=env.node,
        )
    if SLURMEnvironment.detect():
        return Launch(
            source="slurm",
            world_size=int(os.environ["SLURM_NTASKS"]),
            num_nodes=int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", 1))),
            global_rank=int(os.environ.get("SLURM_PROCID", 0)),
            local_rank=int(os.environ.get("SLURM_LOCALID", 0)),
            node_rank=int(os.environ.get("SLURM_NODEID", 0)),
        )
    return None


class SubmititLocalEnvironment(ClusterEnvironment):
    """Ranks of a job run by submitit's local executor (one task per device on this machine).

    The tasks are started by submitit, so Lightning must not start any; they find each other on
    ``127.0.0.1`` at a port derived from the job id (or ``MASTER_PORT`` when set).

    Example:
        Inside a task of ``microfm-train cluster=local trainer.devices=2``::

            trainer = L.Trainer(devices=2, strategy="ddp", plugins=[SubmititLocalEnvironment()])
    """

    def __init__(self) -> None:
        super().__init__()
        import submitit

        self._env = submitit.JobEnvironment()

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        digits = "".join(c for c in str(self._env.job_id) if c.isdigit()) or "0"
        return 20000 + int(digits) % 20000

    @staticmethod
    def detect() -> bool:
        return os.environ.get("SUBMITIT_EXECUTOR") == "local"

    def world_size(self) -> int:
        return self._env.num_tasks

    def set_world_size(self, size: int) -> None:
        pass  # fixed by the launcher

    def global_rank(self) -> int:
        return self._env.global_rank

    def set_global_rank(self, rank: int) -> None:
        pass  # fixed by the launcher

    def local_rank(self) -> int:
        return self._env.local_rank

    def node_rank(self) -> int:
        return self._env.node


def cluster_environment() -> ClusterEnvironment | None:
    """The cluster environment plugin for this process (None: Lightning's default).

    - submitit local executor: :class:`SubmititLocalEnvironment`;
    - SLURM (through submitit or a plain ``srun``): ``SLURMEnvironment(auto_requeue=False)``,
      so that Lightning neither installs its requeue signal handler nor calls ``scontrol``;
    - anything else: None.
    """
    if SubmititLocalEnvironment.detect():
        return SubmititLocalEnvironment()
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" or SLURMEnvironment.detect():
        return SLURMEnvironment(auto_requeue=False)
    return None


def set_rank_zero(rank: int) -> None:
    """Tell Lightning's ``rank_zero_only`` helpers this process's rank before the Trainer
    exists (they read it from ``RANK``/``SLURM_PROCID`` at import, which submitit's local
    executor does not set)."""
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only.rank = rank  # type: ignore[attr-defined]
