"""``task=dino``: DINO self-distillation with the DINOv2 additions (iBOT masked-patch loss,
KoLeo), from scratch or continued from released weights."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from microfm.backbones.masking import encode_tokens, random_patch_mask
from microfm.heads.projection import DINOHead
from microfm.losses.dino import DINOLoss
from microfm.losses.ibot import IBOTPatchLoss
from microfm.losses.koleo import KoLeoLoss
from microfm.modules.ema import cosine_momentum, ema_update, teacher_copy
from microfm.modules.optim import OptimConfig
from microfm.modules.ssl_base import SSLModule, resolve_steps
from microfm.transforms.multicrop import MultiCrop
from microfm.utils.seeding import derive_seed, sample_seeds

_VIEW = 200  # purpose of the seeds of a sample's views (+ view index)

# the EMA teacher is in eval mode on purpose
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


class DINOModule(SSLModule):
    """Student (backbone + heads) and an EMA teacher (a copy, in eval mode, no gradients).

    Per batch: multi-crop views; the teacher encodes the global views; the student encodes the
    global views (iBOT: some patches replaced by a mask token) and the local views. Losses:
    DINO on the class tokens (every student view against every other global teacher view),
    iBOT on the masked patches, KoLeo on the student's global class tokens. After each
    optimiser step (not each micro-batch under gradient accumulation) the teacher moves
    towards the student with a cosine momentum schedule and the centers are updated.

    Logs ``train/loss``, ``{stage}/dino/{dino_loss,ibot_loss,koleo_loss}``,
    ``train/dino/{teacher_temp,momentum,teacher_entropy}``, ``val/loss``.

    Args:
        backbone: the student backbone (adapted by the finetune mode: full, frozen, LoRA).
        head: the DINO projection head.
        views: the multi-crop view generator.
        optim: optimiser settings.
        ibot_head: a separate iBOT head, or None to share ``head`` (DINOv2's default).
        centering: teacher centering, ``mean`` (running mean) or ``sinkhorn``.
        center_momentum: running-mean momentum.
        student_temp: student temperature.
        teacher_temp: teacher temperature after the warm-up.
        warmup_teacher_temp: teacher temperature at step 0.
        teacher_temp_warmup: length of the linear teacher-temperature warm-up (fraction of
            the total steps, or steps).
        momentum: teacher momentum at step 0; ``final_momentum`` at the end (cosine).
        dino_weight, ibot_weight, koleo_weight: loss weights (0 turns a term off).
        mask_ratio: range of the fraction of patches masked in a masked global view.
        mask_probability: fraction of global views that are masked.
        freeze_last_layer: keep the prototype layer fixed for this fraction of the total
            steps (or steps), as DINO does for its first epoch.
        koleo_gather: KoLeo nearest neighbours over the global batch of all processes.
        **kwargs: see :class:`~microfm.modules.ssl_base.SSLModule` (``name``, ``seed``,
            ``in_chans``, ``layer_decay``, ``backbone_freeze``...).

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> head = DINOHead(64, out_dim=32, hidden_dim=32, bottleneck_dim=16)
        >>> dino = DINOModule(bb, head, MultiCrop(global_size=32, local_size=16, n_local=2))
        >>> views = dino.views(torch.rand(2, 1, 48, 48), seeds=[0, 1])
        >>> sorted(dino.compute(views, record=False))[:3]
        ['dino_loss', 'ibot_loss', 'koleo_loss']
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: DINOHead,
        views: MultiCrop,
        optim: OptimConfig | None = None,
        ibot_head: DINOHead | None = None,
        centering: str = "mean",
        center_momentum: float = 0.9,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup: float = 0.3,
        momentum: float = 0.992,
        final_momentum: float = 1.0,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        mask_ratio: Sequence[float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        freeze_last_layer: float = 0.0,
        koleo_gather: bool = False,
        name: str = "dino",
        monitor: str = "val/loss",
        mode: str = "min",
        targets: Sequence[str] = (),
        **kwargs,
    ) -> None:
        super().__init__(backbone, optim, name, monitor, mode, targets, **kwargs)
        self.views = views
        views.fit_patch(backbone.patch_size)
        self.check_view_channels(views.out_channels(self.in_chans), "task.views.channel_mode")
        self.head = head
        self.ibot_head = ibot_head
        D = int(backbone.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, D), requires_grad=ibot_weight > 0)
        nn.init.normal_(self.mask_token, std=0.02)  # unused without iBOT: no gradient (DDP)
        teacher = {"backbone": backbone, "head": head}
        if ibot_head is not None:
            teacher["ibot_head"] = ibot_head
        self.teacher = teacher_copy(nn.ModuleDict(teacher))
        self.dino_loss = DINOLoss(head.out_dim, student_temp, centering, center_momentum)
        ibot_dim = (ibot_head or head).out_dim
        self.ibot_loss = IBOTPatchLoss(ibot_dim, student_temp, centering, center_momentum)
        self.koleo = KoLeoLoss(gather=koleo_gather)
        self.teacher_temp_value = float(teacher_temp)
        self.warmup_teacher_temp = float(warmup_teacher_temp)
        self.teacher_temp_warmup = float(teacher_temp_warmup)
        self.base_momentum, self.final_momentum = float(momentum), float(final_momentum)
        self.weights = {"dino": dino_weight, "ibot": ibot_weight, "koleo": koleo_weight}
        self.mask_ratio = (float(mask_ratio[0]), float(mask_ratio[1]))
        self.mask_probability = float(mask_probability)
        self.freeze_last_layer = float(freeze_last_layer)
        self.ema_updates = 0  # optimiser steps the teacher followed (this process, this fit)

    # -- structure -------------------------------------------------------------------------
    def head_modules(self) -> nn.Module:
        heads = {"head": self.head, "mask_token": _ParamHolder(self.mask_token)}
        if self.ibot_head is not None:
            heads["ibot_head"] = self.ibot_head
        return nn.ModuleDict(heads)

    def export_source(self) -> nn.Module:
        return self.teacher["backbone"]

    def train(self, mode: bool = True):
        """The teacher stays in eval mode (no dropout / drop-path; fixed norms)."""
        super().train(mode)
        self.teacher.eval()
        return self

    # -- schedules ----------------------------------------------------------------------------
    def teacher_temp(self, step: int | None = None) -> float:
        step = int(self.trainer.global_step) if step is None else step
        warm = resolve_steps(self.teacher_temp_warmup, self.total_steps())
        if step >= warm:
            return self.teacher_temp_value
        frac = step / max(1, warm)
        return self.warmup_teacher_temp + frac * (
            self.teacher_temp_value - self.warmup_teacher_temp
        )

    def momentum(self, step: int) -> float:
        return cosine_momentum(step, self.total_steps(), self.base_momentum, self.final_momentum)

    def frozen_parameters(self, step: int) -> list[nn.Parameter]:
        frozen = super().frozen_parameters(step)
        if step < resolve_steps(self.freeze_last_layer, self.total_steps()):
            for head in (self.head, self.ibot_head):
                if head is not None:
                    frozen += [p for p in head.last_layer.parameters() if p.requires_grad]
        return frozen

    # -- the DINO step -------------------------------------------------------------------------
    def compute(
        self,
        views: Sequence[torch.Tensor],
        record: bool = True,
        teacher_temp: float | None = None,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch of views (``views.n_global`` global views first).

        Args:
            record: count the teacher outputs toward the next center update (training).
            teacher_temp: defaults to the scheduled value (0.04 outside a Trainer).
            generator: randomness of the iBOT masks when ``seeds`` is None.
            seeds: one per sample (:meth:`view_seeds`): the iBOT masks and the student's
                drop-path choices of each view of a sample come from its seed, so they differ
                between ranks and do not depend on the batch.
        """
        temp = teacher_temp
        if temp is None:
            temp = self.teacher_temp() if self._trainer is not None else self.warmup_teacher_temp
        g = self.views.n_global
        globals_ = torch.cat(list(views[:g]))
        gB = globals_.shape[0]
        p = self.backbone.patch_size
        n_patches = (globals_.shape[-2] // p) * (globals_.shape[-1] // p)
        ibot = self.weights["ibot"] > 0
        with torch.no_grad():
            t = encode_tokens(self.teacher["backbone"], globals_)
            t_logits = list(self.teacher["head"](t["cls"]).chunk(g))
        rows = None  # per view, the seeds of its rows
        if seeds is not None:
            rows = [[derive_seed(int(x), _VIEW + v) for x in seeds] for v in range(len(views))]
        global_rows = None if rows is None else [x for r in rows[:g] for x in r]
        mask = None
        if ibot:
            mask = random_patch_mask(
                gB,
                n_patches,
                self.mask_ratio,
                self.mask_probability,
                globals_.device,
                generator,
                seeds=global_rows,
            )
        with sample_seeds(global_rows):
            s = encode_tokens(self.backbone, globals_, mask=mask, mask_token=self.mask_token)
        s_logits = list(self.head(s["cls"]).chunk(g))
        if len(views) > g:
            with sample_seeds(None if rows is None else [x for r in rows[g:] for x in r]):
                local = encode_tokens(self.backbone, torch.cat(list(views[g:])))
            s_logits += list(self.head(local["cls"]).chunk(len(views) - g))
        targets = self.dino_loss.teacher_probs(t_logits, temp, record)
        out = {"dino_loss": self.dino_loss.from_probs(s_logits, targets)}
        ent = -(targets * targets.clamp(min=1e-12).log()).sum(-1).mean()
        out["teacher_entropy"] = ent.detach()
        zero = out["dino_loss"].new_zeros(())
        out["ibot_loss"] = zero
        if ibot:
            s_head = self.ibot_head if self.ibot_head is not None else self.head
            t_head = (
                self.teacher["ibot_head"] if self.ibot_head is not None else self.teacher["head"]
            )
            with torch.no_grad():
                t_patch = t_head(t["patch"][mask])
            s_patch = s_head(s["patch"][mask])
            out["ibot_loss"] = self.ibot_loss(s_patch, t_patch, mask, temp, record)
        out["koleo_loss"] = zero
        if self.weights["koleo"] > 0:
            out["koleo_loss"] = sum(self.koleo(c) for c in s["cls"].chunk(g))
        out["loss"] = sum(self.weights[k] * out[f"{k}_loss"] for k in ("dino", "ibot", "koleo"))
        return out

    def _views(self, batch: dict, train: bool) -> list[torch.Tensor]:
        images = batch["image"]
        if isinstance(images, (list, tuple)):  # views made by the data pipeline
            return list(images)
        return self.views(images, self.view_seeds(batch, train))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        views = self._views(batch, train=True)
        out = self.compute(views, record=True, seeds=self.view_seeds(batch, train=True))
        bs = views[0].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        for key in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy"):
            self.log(f"train/{self.name}/{key}", out[key], batch_size=bs)
        self.log(f"train/{self.name}/teacher_temp", self.teacher_temp(), batch_size=bs)
        return out["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        views = self._views(batch, train=False)
        out = self.compute(views, record=False, seeds=self.view_seeds(batch, train=False))
        bs = views[0].shape[0]
        self.log("val/loss", out["loss"], prog_bar=True, batch_size=bs, sync_dist=True)
        for key in ("dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy"):
            self.log(f"val/{self.name}/{key}", out[key], batch_size=bs, sync_dist=True)

    # -- once per optimiser step --------------------------------------------------------------
    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        self.after_optimizer_step(int(self.trainer.global_step))

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """Teacher EMA and center updates (called once per optimiser step)."""
        m = self.momentum(step)
        student = {"backbone": self.backbone, "head": self.head}
        for key, module in student.items():
            ema_update(self.teacher[key], module, m)
        if self.ibot_head is not None:
            ema_update(self.teacher["ibot_head"], self.ibot_head, m)
        self.dino_loss.update_center()
        self.ibot_loss.update_center()
        self.ema_updates += 1
        if self._trainer is not None:
            self.log(f"train/{self.name}/momentum", m)


class _ParamHolder(nn.Module):
    """Exposes a parameter owned elsewhere as a module (for optimiser grouping)."""

    def __init__(self, param: nn.Parameter) -> None:
        super().__init__()
        self.mask_token = param
