"""``ckpts/backbone.pth``: the pretrained backbone of a self-supervised run, in the format
``backbone.weights=`` loads in any task."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from microfm.utils.io import atomic_write_bytes, update_json

log = logging.getLogger(__name__)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """``torch.save`` a state dict atomically (readers never see a half-written file)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


class BackboneExport(L.Callback):
    """Writes ``pl_module.export_backbone()`` (a plain state dict of ``Backbone.model``, timm
    keys, LoRA adapters merged) to ``path`` after every validation and at the end of fitting,
    on rank 0, and records the path in ``metrics.json`` as ``backbone_export``.

    Args:
        path: the file (``<run_dir>/ckpts/backbone.pth``).
        metrics_path: the run's ``metrics.json`` (None: not recorded).

    Example:
        >>> cb = BackboneExport("results/ssl/run/ckpts/backbone.pth")
    """

    def __init__(self, path: str | Path, metrics_path: str | Path | None = None) -> None:
        self.path = Path(path)
        self.metrics_path = Path(metrics_path) if metrics_path else None

    def _export(self, trainer, pl_module) -> None:
        save_state_dict(pl_module.export_backbone(), self.path)
        if self.metrics_path is not None:
            update_json(self.metrics_path, {"backbone_export": str(self.path)})

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._export(trainer, pl_module)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module)
        log.info(
            "pretrained backbone written to %s (use backbone.weights=%s)", self.path, self.path
        )
