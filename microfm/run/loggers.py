"""Experiment loggers built from the ``logger`` config group, and what microfm does with them:
log the resolved config and figures through Lightning's logger API, continue the same log
after a restart, and close the W&B run when a job ends (so the next job of a multirun in the
same process starts its own run)."""

from __future__ import annotations

import csv
import logging
import os
import secrets
import string
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)

WANDB_ID_FILE = "wandb/run_id"


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv``; this one appends to it, so
    that a resumed run keeps the rows written before it was stopped."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues ``metrics.csv`` after a restart instead of replacing it.

    Example:
        >>> logger = ResumableCSVLogger("results/seg/run", name="logs", version="")
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def csv_logger(
    save_dir: str, name: str = "logs", version: str = "", flush_logs_every_n_steps: int = 1
) -> ResumableCSVLogger:
    """Metrics as CSV in ``<save_dir>/<name>/<version>/metrics.csv``, appended to on resume.

    Args:
        flush_logs_every_n_steps: write to disk after this many logging calls (1: a killed
            run loses no row it logged).
    """
    return ResumableCSVLogger(
        save_dir, name=name, version=version, flush_logs_every_n_steps=flush_logs_every_n_steps
    )


def _wandb_run_id(save_dir: str) -> str | None:
    """The W&B run id kept in ``<save_dir>/wandb/run_id`` (created by rank 0 on first use), so
    a restarted or requeued job continues the same W&B run. Other ranks log nothing."""
    if rank_zero_only.rank != 0:
        return None
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's own id format
    atomic_write_text(path, run_id + "\n")
    return run_id


def wandb_logger(
    project: str,
    name: str,
    save_dir: str,
    entity: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str = "auto",
    log_model: bool | str = False,
):
    """A Lightning ``WandbLogger``, offline unless ``mode="online"`` or the environment sets
    ``WANDB_MODE=online``. The run id lives in ``<save_dir>/wandb/run_id``: a resumed job
    (``resume=auto``) continues the same W&B run.

    Args:
        group: W&B group; ``${microfm.sweep_group:}`` groups the jobs of one multirun.
        mode: ``auto`` (the environment's ``WANDB_MODE``, default offline), ``online``,
            ``offline`` or ``disabled``. Offline runs are uploaded later with ``wandb sync``.
        log_model: upload checkpoints as W&B artifacts (``True`` at the end, ``"all"`` as
            they are written).
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
        id=_wandb_run_id(save_dir),
        resume="allow",
    )


def no_logger() -> None:
    """No experiment logger."""
    return None


def log_config(loggers: Iterable[Any], config: Mapping[str, Any]) -> None:
    """The resolved run config, through each logger's ``log_hyperparams`` (rank 0 only)."""
    for logger in loggers:
        logger.log_hyperparams(dict(config))


def log_figure(loggers: Iterable[Any], key: str, path: str | Path, step: int | None = None) -> None:
    """A figure file written by microfm, through each logger that takes images (W&B)."""
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[str(path)], step=step)


def finish_loggers(loggers: Iterable[Any], success: bool) -> None:
    """Flush every logger and close the W&B run of this job (a no-op for others)."""
    for logger in loggers:
        logger.finalize("success" if success else "failed")
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=0 if success else 1)
        from lightning.pytorch.loggers import WandbLogger

        for logger in loggers:  # a later `experiment` access must not reuse the finished run
            if isinstance(logger, WandbLogger):
                logger._experiment = None
