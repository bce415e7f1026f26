"""Lightning callbacks that write a run's results (figures, metrics.json, config in ckpts)."""

from microfm.callbacks.checkpoint import LastCheckpoint
from microfm.callbacks.results import Figures, RunResults

__all__ = ["Figures", "LastCheckpoint", "RunResults"]
