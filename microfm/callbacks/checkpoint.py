"""``last.ckpt``: the latest state of a run, for resuming and for inspection."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimizer steps (so a
    preempted or killed run loses at most that many steps) and once more when fitting ends, so
    the final file holds the final state, including what the last validation changed (e.g.
    tuned post-processing thresholds) whether or not the monitored metric improved.

    With Lightning's ``save_last`` alone, the final ``last.ckpt`` is the periodic save of the
    last step, written before the last validation, unless that validation improved the
    monitored metric; a resumed run and an uninterrupted one could then end with different
    files. Saves are never made inside a validation: Lightning cannot resume from such a
    checkpoint (it replays an empty validation, and early stopping finds no metric).

    Args:
        dirpath: checkpoint folder.
        every_n_train_steps: interval of the periodic saves (0: only after validations).

    Example:
        >>> cb = LastCheckpoint("results/seg/run/ckpts", every_n_train_steps=100)
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 100) -> None:
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps or None,
            enable_version_counter=False,
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        """No save here (see the class doc); the periodic saves happen between steps."""

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
