"""Surviving preemption, time limits and kills: where a run resumes from, a checkpoint on
SIGTERM, and one owner of the job's signals.

- ``resume=auto`` continues from ``<run_dir>/ckpts/last.ckpt`` when it exists (written every
  ``callbacks.last.every_n_train_steps`` steps and at every validation), else starts afresh.
- Outside a submitit job, Lightning stops a run on SIGTERM after the step under way (all ranks
  agree on the step); :class:`CheckpointOnSigterm` then writes ``last.ckpt``, so a restart
  of the same command loses nothing. SIGKILL cannot be caught: a restart replays the steps
  since the last periodic checkpoint (deterministically on CPU).
- Inside a submitit job, submitit owns the signals (SIGUSR2 before the time limit: requeue;
  SIGTERM: ignored, as SLURM sends it before preempting). Lightning installs its own SIGTERM
  handler when ``fit`` starts; :class:`LauncherOwnsSignals` puts submitit's back.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from microfm.errors import ConfigError

log = logging.getLogger(__name__)


def resume_path(resume: str | None, run_dir: str | Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    Args:
        resume: null (start afresh), ``last`` (``<run_dir>/ckpts/last.ckpt``, which must
            exist), ``auto`` (that file when it exists, else start afresh) or a path.
        run_dir: the run folder.
    """
    if not resume:
        return None
    last = Path(run_dir) / "ckpts" / "last.ckpt"
    if resume == "auto":
        if last.is_file():
            log.info("resume=auto: continuing from %s", last)
            return str(last)
        return None
    path = last if resume == "last" else Path(str(resume))
    if not path.is_file():
        raise ConfigError(f"resume: checkpoint not found: {path}")
    return str(path)


class CheckpointOnSigterm(L.Callback):
    """Writes ``path`` when Lightning stops a fit because of SIGTERM.

    Lightning raises ``SIGTERMException`` on every rank at the same step boundary, so the
    checkpoint is consistent and the collective save cannot deadlock.

    Args:
        path: checkpoint to write (``<run_dir>/ckpts/last.ckpt``, what ``resume=auto`` reads).

    Example:
        >>> cb = CheckpointOnSigterm("results/seg/run/ckpts/last.ckpt")
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking:
            return
        if trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        trainer.save_checkpoint(self.path)
        log.warning(
            "SIGTERM: stopped after step %d; checkpoint written to %s (rerun the same command "
            "with resume=auto to continue)",
            trainer.global_step,
            self.path,
        )


class LauncherOwnsSignals(L.Callback):
    """Inside a submitit job, restores the SIGTERM handler that was there before ``fit``
    (submitit's), replacing the one Lightning installs, so that the job has one owner of
    preemption and requeue: submitit.

    Example:
        >>> callbacks = [LauncherOwnsSignals()]  # microfm adds it in submitit jobs
    """

    def __init__(self) -> None:
        self._saved: dict[int, object] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        self._saved = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}

    def on_train_start(self, trainer, pl_module) -> None:
        for signum, handler in self._saved.items():
            if handler is not None:
                signal.signal(signum, handler)
