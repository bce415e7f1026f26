"""Common mechanics of the self-supervised LightningModules (MAE, DINO): the optimiser with
layer-wise learning-rate decay and a head warm-up (backbone frozen for the first steps, then
its own warm-up), per-sample view seeds, and the export of the pretrained backbone."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from microfm.errors import ConfigError
from microfm.modules.layer_decay import layerwise_groups
from microfm.modules.optim import OptimConfig, param_groups, warmup_cosine


def resolve_steps(value: float, total: int) -> int:
    """A schedule length: a fraction of the total steps (< 1) or a number of steps (>= 1)."""
    value = float(value)
    if value < 0:
        raise ConfigError(f"schedule lengths must be >= 0, got {value}")
    return int(value * total) if value < 1 else int(value)


class SSLModule(L.LightningModule):
    """Base of :class:`~microfm.modules.MAEModule` and :class:`~microfm.modules.DINOModule`.

    Subclasses set ``self.backbone`` (trained), implement :meth:`head_modules` (the other
    trained modules) and :meth:`export_source` (the backbone to export: the EMA teacher for
    DINO, the encoder for MAE).

    Args:
        backbone: a :class:`microfm.backbones.Backbone` (already adapted by a finetune mode:
            full, frozen, LoRA).
        optim: optimiser settings; ``optim.lr`` is the heads' learning rate, the backbone's is
            ``optim.lr_backbone`` (``auto``: lr/10 for pretrained weights).
        name, monitor, mode: the task's name and the metric checkpoints follow.
        seed: run seed (view randomness depends on (seed, epoch, sample index)).
        in_chans: channels of the data (may differ from the backbone's with channel views).
        layer_decay: layer-wise learning-rate decay of the backbone (1: none).
        backbone_freeze: head warm-up: the backbone stays frozen for this fraction of the
            total steps (< 1) or number of steps (>= 1), then its learning rate warms up.
    """

    def __init__(
        self,
        backbone: nn.Module,
        optim: OptimConfig | None = None,
        name: str = "ssl",
        monitor: str = "val/loss",
        mode: str = "min",
        targets: Sequence[str] = (),
        seed: int = 0,
        in_chans: int | None = None,
        layer_decay: float = 1.0,
        backbone_freeze: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ConfigError(f"task.mode must be 'min' or 'max', got {mode!r}")
        self.backbone = backbone
        self.optim = optim or OptimConfig()
        self.name = name
        self.task_monitor, self.task_mode = monitor, mode
        self.targets = tuple(targets)
        self.seed = int(seed)
        self.in_chans = int(in_chans) if in_chans is not None else int(backbone.in_chans)
        self.layer_decay = float(layer_decay)
        self.backbone_freeze = float(backbone_freeze)
        self._freeze_steps = 0

    @property
    def monitor(self) -> tuple[str, str]:
        return self.task_monitor, self.task_mode

    # -- to implement ------------------------------------------------------------------------
    def head_modules(self) -> nn.Module:
        raise NotImplementedError

    def export_source(self) -> nn.Module:
        raise NotImplementedError

    # -- views -------------------------------------------------------------------------------
    def view_seeds(self, batch: dict, train: bool) -> list[int]:
        """One seed per sample from (run seed, epoch, index); validation views do not change
        between epochs."""
        index = batch.get("index")
        images = batch["image"]
        n = len(images[0] if isinstance(images, (list, tuple)) else images)
        ids = index.tolist() if index is not None else list(range(n))
        epoch = int(self.current_epoch) if train else -1
        return [
            int(np.random.SeedSequence([self.seed, epoch + 1, int(i), 7]).generate_state(1)[0])
            for i in ids
        ]

    def total_steps(self) -> int:
        trainer = self._trainer
        return max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1000

    # -- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        trainer = self._trainer
        total = self.total_steps()
        world = trainer.world_size if trainer is not None else 1
        factor = self.optim.scale(world)
        pretrained = bool(getattr(self.backbone, "pretrained", False))
        bb_lr = self.optim.backbone_lr(pretrained) * factor
        wd = self.optim.weight_decay
        depth = int(getattr(self.backbone, "depth", len(self.backbone.model.blocks)))
        backbone_groups = layerwise_groups(self.backbone, bb_lr, wd, self.layer_decay, depth)
        head_groups = param_groups(
            self.head_modules().named_parameters(), self.optim.lr * factor, wd, "head"
        )
        groups = backbone_groups + head_groups
        if not groups:
            raise ConfigError("nothing to train: every parameter is frozen")
        optimizer = torch.optim.AdamW(groups, betas=self.optim.betas)
        o = self.optim
        warmup = resolve_steps(o.warmup, total)
        self._freeze_steps = min(resolve_steps(self.backbone_freeze, total), total)
        head_schedule = warmup_cosine(total, warmup, o.min_lr_ratio, o.scheduler)
        start = self._freeze_steps
        after = warmup_cosine(max(1, total - start), warmup, o.min_lr_ratio, o.scheduler)

        def backbone_schedule(step: int) -> float:
            return 0.0 if step < start else after(step - start)

        lambdas = [backbone_schedule] * len(backbone_groups) + [head_schedule] * len(head_groups)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def frozen_parameters(self, step: int) -> list[nn.Parameter]:
        """Parameters that must not move at optimiser step ``step`` (their gradients are
        dropped, so AdamW neither updates them nor their moments)."""
        if step < self._freeze_steps:
            return [p for p in self.backbone.parameters() if p.requires_grad]
        return []

    def on_before_optimizer_step(self, optimizer) -> None:
        for p in self.frozen_parameters(int(self.trainer.global_step)):
            p.grad = None

    # -- export ------------------------------------------------------------------------------
    @torch.no_grad()
    def export_backbone(self) -> dict[str, torch.Tensor]:
        """State dict of the exported backbone's timm model (LoRA adapters merged), the format
        ``backbone.weights=`` loads."""
        from microfm.finetune import merge_adapters

        source = copy.deepcopy(self.export_source()).cpu()
        model = merge_adapters(source.model)
        return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    def _channel_groups(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Model inputs for images with the data's channels (see the views' channel mode)."""
        views = getattr(self, "views", None)
        mode = getattr(views, "channel_mode", "all")
        if mode == "average":
            return [images.mean(dim=1, keepdim=True)]
        if mode == "as_view":
            k = views.view_channels
            C = images.shape[1]
            return [images[:, i : i + k] for i in range(0, C - k + 1, k)]
        return [images]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features (B, D) of the exported backbone (class token; with
        channel views, the mean over channel groups), for the kNN monitor."""
        source = self.export_source()
        feats = [source.forward_features(x)["cls"].float() for x in self._channel_groups(images)]
        return F.normalize(torch.stack(feats).mean(dim=0), dim=-1)

    def check_view_channels(self, out_channels: int, key: str) -> None:
        bb = int(self.backbone.in_chans)
        if out_channels != bb:
            raise ConfigError(
                f"{key} gives {out_channels}-channel views of the {self.in_chans}-channel data "
                f"but the backbone takes {bb}: set backbone.in_chans={out_channels}"
            )
