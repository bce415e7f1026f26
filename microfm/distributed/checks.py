"""Checks that a distributed run is laid out as one launcher task per device, before anything
is submitted (launcher side) and again when each process starts (job side)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from microfm.distributed.environment import Launch
from microfm.errors import ConfigError

# strategies with which Lightning starts processes itself: never inside a launcher's task
_SPAWNING = ("ddp_spawn", "ddp_fork", "ddp_notebook", "spawn", "fork")
RULE = "one task per device: tasks per node == GPUs per node == trainer.devices"


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{key} must be a positive integer when a cluster launcher starts the processes "
            f"({RULE}), got {value!r}"
        )
    return value


def _world(cfg: DictConfig) -> tuple[int, int]:
    devices = _positive_int(cfg.trainer.get("devices"), "trainer.devices")
    nodes = _positive_int(cfg.trainer.get("num_nodes", 1), "trainer.num_nodes")
    return devices, nodes


def _check_strategy_and_batch(cfg: DictConfig, world: int) -> None:
    strategy = cfg.trainer.get("strategy", "auto")
    if (
        world > 1
        and isinstance(strategy, str)
        and (strategy in _SPAWNING or not strategy.startswith("ddp"))
    ):
        raise ConfigError(
            f"trainer.strategy={strategy} with {world} processes started by a cluster launcher: "
            "use trainer.strategy=ddp (the launcher starts the ranks; Lightning must not)"
        )
    batch = cfg.data.get("batch_size")
    if isinstance(batch, int) and batch % world:
        raise ConfigError(
            f"data.batch_size={batch} is the global batch and must be divisible by the "
            f"{world} processes (trainer.devices x trainer.num_nodes)"
        )


def check_launcher_config(cfg: DictConfig, executor: str) -> None:
    """Before submission: ``hydra.launcher`` asks for what the trainer will use.

    Args:
        cfg: a job's config including its ``hydra`` node.
        executor: ``slurm`` or ``local`` (submitit's executor).
    """
    launcher = cfg.hydra.launcher
    devices, nodes = _world(cfg)
    tasks = launcher.get("tasks_per_node")
    if tasks != devices:
        raise ConfigError(
            f"hydra.launcher.tasks_per_node={tasks} but trainer.devices={devices} ({RULE}); "
            "set trainer.devices and leave the launcher to follow it"
        )
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    gpus = launcher.get("gpus_per_node")
    if executor == "slurm" and accelerator != "cpu" and gpus != devices:
        raise ConfigError(
            f"hydra.launcher.gpus_per_node={gpus} but trainer.devices={devices} ({RULE}); "
            "set trainer.devices and leave the launcher to follow it"
        )
    if launcher.get("nodes") != nodes:
        raise ConfigError(
            f"hydra.launcher.nodes={launcher.get('nodes')} but trainer.num_nodes={nodes}; "
            "set trainer.num_nodes and leave the launcher to follow it"
        )
    if executor == "local" and nodes != 1:
        raise ConfigError(f"cluster=local runs on one machine: trainer.num_nodes={nodes} must be 1")
    _check_strategy_and_batch(cfg, devices * nodes)


def check_launch(cfg: DictConfig, launch: Launch | None, multirun: bool = False) -> None:
    """When a process starts: the processes the launcher started are those the trainer expects.

    Args:
        cfg: the job's config.
        launch: what the launcher started (:func:`microfm.distributed.current_launch`).
        multirun: whether this is a job of a Hydra multirun.
    """
    if launch is None:
        devices = cfg.trainer.get("devices", 1)
        nodes = cfg.trainer.get("num_nodes", 1)
        spawns = isinstance(devices, int) and (devices > 1 or devices == -1)
        if nodes != 1:
            raise ConfigError(
                f"trainer.num_nodes={nodes} needs a cluster launcher: use cluster=slurm"
            )
        if multirun and spawns:
            raise ConfigError(
                f"trainer.devices={devices} in a sweep without a cluster launcher: Lightning "
                "would start its extra processes by re-running the whole sweep command; use "
                "cluster=local (this machine) or cluster=slurm"
            )
        return
    devices, nodes = _world(cfg)
    if launch.world_size != devices * nodes or launch.num_nodes != nodes:
        raise ConfigError(
            f"the launcher ({launch.source}) started {launch.world_size} tasks on "
            f"{launch.num_nodes} node(s) but trainer.devices={devices} x "
            f"trainer.num_nodes={nodes} ({RULE})"
        )
    _check_strategy_and_batch(cfg, devices * nodes)
