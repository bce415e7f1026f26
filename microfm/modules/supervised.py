"""LightningModule for supervised tasks: one backbone pass shared by one or several tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch import nn

from microfm.modules.optim import OptimConfig
from microfm.tasks.base import Task


class SupervisedModule(L.LightningModule):
    """Backbone + tasks, trained on the sum of the task losses.

    Logs ``train/loss``, ``{stage}/{task}/loss`` and ``{stage}/{task}/{metric}``. Keeps a few
    test examples (``self.examples``) for figures.

    Args:
        backbone: a :class:`microfm.backbones.Backbone` (already adapted by a finetune mode).
        tasks: one task or a sequence of tasks with distinct names.
        optim: optimiser settings.
        num_examples: test samples kept for figures.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Task | Sequence[Task],
        optim: OptimConfig | None = None,
        num_examples: int = 4,
    ) -> None:
        super().__init__()
        tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        self.backbone = backbone
        self.tasks = nn.ModuleDict({t.name: t for t in tasks})
        self.optim = optim or OptimConfig()
        self.layers = sorted({i for t in tasks for i in (t.layers or ())})
        self.metrics = nn.ModuleDict(
            {f"{stage}_{t.name}": t.metrics() for stage in ("val", "test") for t in tasks}
        )
        self.num_examples = num_examples
        self.examples: dict[str, list[dict]] = {}

    @property
    def monitor(self) -> tuple[str, str]:
        first = next(iter(self.tasks.values()))
        return first.monitor, first.mode

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions of every task for a batch of images (B, C, H, W)."""
        if self.layers:
            feats = self.backbone.forward_dense(image, indices=self.layers)
            by_index = dict(zip(self.layers, feats["layers"]))
        else:
            feats, by_index = self.backbone.forward_features(image), {}
        out = {}
        for name, task in self.tasks.items():
            task_feats = dict(feats)
            if task.layers is not None:
                task_feats["layers"] = [by_index[i] for i in task.layers]
            out[name] = task(task_feats, image)
        return out

    def _losses(self, preds: Mapping[str, torch.Tensor], batch) -> dict[str, torch.Tensor]:
        return {name: task.loss(preds[name], batch) for name, task in self.tasks.items()}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        losses = self._losses(self(batch["image"]), batch)
        total = torch.stack(list(losses.values())).sum()
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        if len(losses) > 1:
            for name, value in losses.items():
                self.log(f"train/{name}/loss", value, batch_size=bs)
        return total

    def _eval_step(self, batch, stage: str) -> None:
        preds = self(batch["image"])
        bs = batch["image"].shape[0]
        for name, loss in self._losses(preds, batch).items():
            self.log(f"{stage}/{name}/loss", loss, batch_size=bs, sync_dist=True)
        for name, task in self.tasks.items():
            out = task.update_metrics(self.metrics[f"{stage}_{name}"], preds[name], batch)
            if stage == "test" and out is not None:
                kept = self.examples.setdefault(name, [])
                for i in range(bs):
                    if len(kept) >= self.num_examples:
                        break
                    kept.append(
                        {
                            "image": batch["image"][i].detach().float().cpu().numpy(),
                            "target": batch.get("instances", batch.get(task.target))[i]
                            .cpu()
                            .numpy(),
                            "pred": out[i],
                        }
                    )

    def _log_metrics(self, stage: str) -> None:
        for name in self.tasks:
            metric = self.metrics[f"{stage}_{name}"]
            for key, value in metric.compute().items():
                self.log(f"{stage}/{name}/{key}", value.float(), prog_bar=(stage == "val"))
            metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.examples = {}

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self):
        total = int(self.trainer.estimated_stepping_batches) if self.trainer else 1000
        optimizer, scheduler = self.optim.build(
            self.backbone,
            self.tasks,
            getattr(self.backbone, "pretrained", False),
            total,
            world_size=self.trainer.world_size if self.trainer else 1,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
