"""Metrics (plain numpy scores and torchmetrics wrappers)."""

from microfm.metrics.cellseg import InstanceMetrics
from microfm.metrics.instance import ctc_counts, ctc_scores, instance_scores, match_objects

__all__ = ["InstanceMetrics", "ctc_counts", "ctc_scores", "instance_scores", "match_objects"]
