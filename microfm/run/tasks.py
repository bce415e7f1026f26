"""The ``task`` config node -> tasks and their loss weighting (one task, or ``task=multitask``
with ``task.tasks`` choosing among ``task.specs``); self-supervised task nodes build their
LightningModule directly (see :func:`is_self_supervised`)."""

from __future__ import annotations

import difflib

from omegaconf import DictConfig

from microfm.errors import ConfigError
from microfm.losses.weighting import LossWeighting
from microfm.run.build import build
from microfm.tasks.base import Task


def _check_classes(node: DictConfig, key: str) -> None:
    if "num_classes" in node and node.get("num_classes") is None:
        raise ConfigError(
            f"{key}.num_classes is not set: the data config does not define the class count "
            f"(data.num_classes); set {key}.num_classes=K"
        )


def is_self_supervised(cfg: DictConfig) -> bool:
    """``task_type: ssl``: the task node instantiates a self-supervised LightningModule
    (``task=mae``, ``task=dino``) from the backbone and optimiser settings."""
    return cfg.get("task_type") == "ssl"


def is_multitask(node: DictConfig) -> bool:
    return "specs" in node and "tasks" in node


def build_tasks(node: DictConfig, key: str = "task") -> tuple[list[Task], LossWeighting | None]:
    """Build the task(s) of a config.

    Returns:
        The tasks and, for ``task=multitask``, the loss weighting (None for a single task).
    """
    if not is_multitask(node):
        _check_classes(node, key)
        return [build(node, key)], None
    names = [str(n) for n in node.tasks]
    if not names:
        raise ConfigError(f"{key}.tasks is empty: name at least one of {sorted(node.specs)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{key}.tasks lists a task twice: {names}")
    tasks = []
    for name in names:
        if name not in node.specs:
            close = difflib.get_close_matches(name, list(node.specs), n=2)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{key}.tasks: unknown task {name!r}; known: {sorted(node.specs)}.{hint}"
            )
        spec = node.specs[name]
        _check_classes(spec, f"{key}.specs.{name}")
        task = build(spec, f"{key}.specs.{name}")
        if task.name != name:
            raise ConfigError(f"{key}.specs.{name}.name must be {name!r}, got {task.name!r}")
        tasks.append(task)
    weighting = build(node.weighting, f"{key}.weighting", tasks=names)
    return tasks, weighting
