"""Experiment loggers built from the ``logger`` config group."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def wandb_logger(
    project: str,
    name: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str = "auto",
    log_model: bool = False,
):
    """A Lightning ``WandbLogger``, offline unless ``mode="online"`` or the environment sets
    ``WANDB_MODE=online``.

    Args:
        mode: ``auto`` (the environment's ``WANDB_MODE``, default offline), ``online``,
            ``offline`` or ``disabled``.
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode == "auto":
        mode = os.environ.get("WANDB_MODE", "offline")
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode must be auto, online, offline or disabled, got {mode!r}")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=project,
        name=name,
        save_dir=save_dir,
        entity=entity,
        group=group,
        tags=list(tags),
        mode=mode,
        log_model=log_model,
    )


def no_logger() -> None:
    """No experiment logger."""
    return None
