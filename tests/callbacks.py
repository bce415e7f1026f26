"""Callbacks used by tests through the config (``+callbacks.<name>._target_=tests.callbacks.X``)
in runs started as subprocesses."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch


class KillOnce(L.Callback):
    """Sends ``signum`` to its own process after optimizer step ``step``, unless ``marker``
    exists (created just before), so that the same command run again trains to the end.

    Lightning runs ModelCheckpoint callbacks last, so with SIGKILL the checkpoint that step
    would have written is never written.
    """

    def __init__(self, step: int, signum: int, marker: str) -> None:
        self.step = int(step)
        self.signum = int(signum)
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"signal {self.signum} after step {self.step}\n")
            os.kill(os.getpid(), self.signum)


class SaveGradients(L.Callback):
    """Saves the gradients of the first optimizer step (after DDP's all-reduce) on rank 0."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0 and trainer.is_global_zero:
            grads = {
                n: p.grad.detach().clone()
                for n, p in pl_module.named_parameters()
                if p.grad is not None
            }
            torch.save(grads, self.path)


class PreemptOnce(L.Callback):
    """Under tests/fakeslurm.py: after optimizer step ``step``, rank 0 sends SIGUSR2 to every
    task of its job, as SLURM does before a time limit or a preemption (``--signal``), unless
    ``marker`` exists (created just before)."""

    def __init__(self, step: int, marker: str) -> None:
        self.step = int(step)
        self.marker = Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step or not trainer.is_global_zero or self.marker.exists():
            return
        self.marker.write_text(f"SIGUSR2 after step {self.step}\n")
        state = Path(os.environ["FAKESLURM_STATE"])
        pids = (state / f"{os.environ['FAKESLURM_KEY']}.pids").read_text().split()
        for pid in sorted(pids, key=lambda p: int(p) == os.getpid()):  # this process last
            os.kill(int(pid), signal.SIGUSR2)
