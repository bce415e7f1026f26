"""Test helpers: a callback that kills its own training process once, mid-epoch."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class KillOnce(L.Callback):
    """Sends ``signum`` to this process after optimizer step ``step``, unless ``marker`` exists
    (created just before), so that the same command run again trains to the end.

    Placed in the callback list before Lightning's ModelCheckpoint (which Lightning runs last),
    so with SIGKILL the checkpoint of that step is never written.
    """

    def __init__(self, step: int, signum: int, marker: str) -> None:
        self.step = int(step)
        self.signum = int(signum)
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"killed with signal {self.signum} after step {self.step}\n")
            os.kill(os.getpid(), self.signum)
