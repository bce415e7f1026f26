"""Metrics: plain numpy/torch scores and torchmetrics wrappers (DDP-reducible states)."""

from microfm.metrics.cellseg import InstanceMetrics
from microfm.metrics.instance import (
    ctc_counts,
    ctc_scores,
    instance_counts,
    instance_scores,
    match_objects,
)
from microfm.metrics.threshold_grid import ThresholdGridMetrics, grid_counts, grid_scores

__all__ = [
    "InstanceMetrics",
    "ThresholdGridMetrics",
    "ctc_counts",
    "ctc_scores",
    "grid_counts",
    "grid_scores",
    "instance_counts",
    "instance_scores",
    "match_objects",
]
