"""Lightning callbacks that write a run's results (figures, metrics.json, config in ckpts, the
pretrained backbone of self-supervised runs) and monitor self-supervised training (kNN)."""

from microfm.callbacks.checkpoint import LastCheckpoint
from microfm.callbacks.export import BackboneExport
from microfm.callbacks.knn import KNNMonitor
from microfm.callbacks.reconstructions import Reconstructions
from microfm.callbacks.results import Figures, RunResults

__all__ = [
    "BackboneExport",
    "Figures",
    "KNNMonitor",
    "LastCheckpoint",
    "Reconstructions",
    "RunResults",
]
