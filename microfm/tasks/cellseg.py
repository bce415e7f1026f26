"""Cell instance segmentation by distance-map regression and watershed (SAMCell / DINOCell)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microfm.inference.postprocess import Watershed
from microfm.metrics.ap import DEFAULT_THRESHOLDS
from microfm.metrics.cellseg import InstanceMetrics
from microfm.metrics.threshold_grid import ThresholdGridMetrics
from microfm.tasks.base import Task
from microfm.utils.figures import plot_instance_overlays


class CellSegTask(Task):
    """Regress per-cell normalised distance maps; watershed them into instances.

    The watershed thresholds (``cells_max``, ``cell_fill``) are buffers, so they travel in the
    checkpoint. With ``threshold_search``, every validation epoch scores each pair of the grid
    on the validation set and keeps the best one (by the monitored score): the checkpoint of the
    best epoch carries the pair chosen for its own weights, and test and predict use it. The
    validation scores are then those of the chosen pair.

    Args:
        head: a dense head called as ``head(layers, image)`` returning (B, 1, H, W) in [0, 1]
            (e.g. :class:`microfm.heads.UNetDecoder` with ``activation="sigmoid"``).
        layers: backbone blocks fed to the head (DINOCell: 2, 5, 8, 11).
        postprocess: initial watershed (default SAMCell thresholds 0.47 / 0.09, ``min_area``).
        threshold_search: ``{"cells_max": [...], "cell_fill": [...]}`` grid searched on the
            validation set, or None to keep the thresholds of ``postprocess``.
        iou_thresholds: IoU thresholds of the ``ap<T>`` scores.
        name, monitor, mode, targets: see :class:`Task`.

    Example:
        >>> from microfm.heads import UNetDecoder
        >>> task = CellSegTask(UNetDecoder(64, 4, in_chans=1), layers=[0, 1, 2, 3])
        >>> task.name, task.target, task.postprocess
        ('cellseg', 'dist', Watershed(cells_max=0.47, cell_fill=0.09))
    """

    target = "dist"
    label_key = "instances"

    def __init__(
        self,
        head: nn.Module,
        layers: Sequence[int],
        postprocess: Watershed | None = None,
        threshold_search: Mapping[str, Sequence[float]] | None = None,
        iou_thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        name: str = "cellseg",
        monitor: str = "val/cellseg/op_csb",
        mode: str = "max",
        targets: Sequence[str] = ("dist",),
    ) -> None:
        super().__init__(name, monitor=monitor, mode=mode, layers=layers, targets=targets)
        self.head = head
        ws = postprocess or Watershed()
        self.min_area = ws.min_area
        self.register_buffer(
            "thresholds", torch.tensor([ws.cells_max, ws.cell_fill], dtype=torch.float64)
        )
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.search: dict[str, list[float]] | None = None
        if threshold_search:
            unknown = set(threshold_search) - {"cells_max", "cell_fill"}
            if unknown:
                raise ValueError(
                    f"threshold_search takes cells_max and cell_fill, got {sorted(unknown)}"
                )
            self.search = {
                k: [float(v) for v in threshold_search[k]] for k in ("cells_max", "cell_fill")
            }
            shape = (len(self.search["cells_max"]), len(self.search["cell_fill"]))
            ThresholdGridMetrics(self.search["cells_max"], self.search["cell_fill"])  # validate
        else:
            shape = (0, 0)
        # validation score of each grid pair at the epoch the thresholds were chosen
        self.register_buffer("threshold_grid", torch.full(shape, float("nan")))

    @property
    def postprocess(self) -> Watershed:
        """The watershed with the current (possibly tuned) thresholds."""
        cells_max, cell_fill = (round(float(v), 6) for v in self.thresholds)
        return Watershed(cells_max=cells_max, cell_fill=cell_fill, min_area=self.min_area)

    @property
    def score_key(self) -> str:
        key = self.monitor.rsplit("/", 1)[-1]
        return (
            key
            if key in ("seg", "det", "op_csb", "f1", "pq") or key.startswith("ap")
            else ("op_csb")
        )

    def forward(self, features: Mapping[str, object], image: torch.Tensor) -> torch.Tensor:
        return self.head(features["layers"], image)

    def valid_samples(self, batch):
        if "instances" in batch or self.target not in batch:
            return super().valid_samples(batch)
        return torch.ones(batch[self.target].shape[0], dtype=torch.bool)

    def loss(self, pred: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(pred.float(), batch["dist"].float())

    def metrics(self, stage: str = "val"):
        if stage == "val" and self.search is not None:
            return ThresholdGridMetrics(
                self.search["cells_max"],
                self.search["cell_fill"],
                score=self.score_key,
                min_area=self.min_area,
                thresholds=self.iou_thresholds,
            )
        return InstanceMetrics(self.iou_thresholds)

    def predict_instances(self, pred: torch.Tensor) -> list[np.ndarray]:
        """(B, 1, H, W) distance maps -> B label images (watershed, current thresholds)."""
        ws = self.postprocess
        return [ws(d) for d in pred.detach().float().cpu().numpy()[:, 0]]

    def finalize(self, output: np.ndarray) -> dict[str, np.ndarray]:
        """(1, H, W) distance map -> ``{"labels": instance labels, "dist": distance map}``."""
        dist = np.asarray(output, dtype=np.float32)[0]
        return {"labels": self.postprocess(dist), "dist": dist}

    def score(self, metric, pred, batch) -> list[np.ndarray] | None:
        if isinstance(metric, ThresholdGridMetrics):
            metric.update(pred.detach().float().cpu().numpy()[:, 0], batch["instances"])
            return None
        labels = self.predict_instances(pred)
        metric.update(labels, batch["instances"])
        return labels

    def epoch_end(self, stage, metric, values) -> None:
        grid = values.pop("grid", None)
        if grid is None:
            return
        self.thresholds.copy_(
            torch.stack([values["cells_max"], values["cell_fill"]]).to(self.thresholds)
        )
        self.threshold_grid.copy_(grid.to(self.threshold_grid))

    def example_target(self, batch, index: int) -> np.ndarray:
        return batch["instances"][index].detach().cpu().numpy()

    def plot_examples(self, examples, path) -> None:
        plot_instance_overlays(examples, path)
        if self.search is not None and torch.isfinite(self.threshold_grid).any():
            from microfm.tasks.figures import plot_threshold_grid

            plot_threshold_grid(
                self.threshold_grid.cpu().numpy(),
                self.search["cells_max"],
                self.search["cell_fill"],
                (self.postprocess.cells_max, self.postprocess.cell_fill),
                path.parent / f"{self.name}_threshold_grid.png",
                score=self.score_key,
            )
