"""LightningModule for supervised tasks: one backbone pass shared by one or several tasks."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import lightning as L
import torch
from torch import nn

from microfm.distributed.gather import all_reduce_sum, world_size
from microfm.losses.weighting import LossWeighting
from microfm.modules.optim import OptimConfig
from microfm.tasks.base import Task
from microfm.utils.seeding import derive_seed, sample_seeds


class SupervisedModule(L.LightningModule):
    """Backbone + tasks, trained on the (weighted) sum of the task losses.

    Every batch runs the backbone once; each task reads the features it needs (``cls``,
    ``patch`` or its intermediate ``layers``). Samples without a task's target contribute
    nothing to that task's loss and metrics, and a task without any target in a batch (on
    any rank) is left out of that step's loss balancing; it still enters the loss with weight
    zero, so DDP sees every parameter used without ``find_unused_parameters``.

    Logs ``train/loss``, ``{stage}/loss``, ``{stage}/{task}/loss``,
    ``train/{task}/weight`` (several tasks) and ``{stage}/{task}/{metric}``. Keeps a few test
    examples per task (``self.examples``) for figures.

    Args:
        backbone: a :class:`microfm.backbones.Backbone` (already adapted by a finetune mode).
        tasks: one task or a sequence of tasks with distinct names.
        optim: optimiser settings.
        weighting: loss balancing (:mod:`microfm.losses.weighting`); default weight 1 each.
        num_examples: test samples kept for figures.

    Example:
        >>> from microfm.backbones import build_backbone
        >>> from microfm.heads import ClassificationHead
        >>> from microfm.tasks import ClassifyTask
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> module = SupervisedModule(bb, ClassifyTask(ClassificationHead(64, 3), 3))
        >>> module(torch.rand(2, 1, 32, 32))["classify"].shape
        torch.Size([2, 3])
    """

    # evaluation steps run no collective: under DDP each sample is evaluated on one rank only
    # (no padding duplicates), and the ranks' shards may differ in length
    eval_steps_are_collective = False

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Task | Sequence[Task],
        optim: OptimConfig | None = None,
        weighting: LossWeighting | None = None,
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
        self.weighting = weighting if weighting is not None else LossWeighting(names)
        if sorted(self.weighting.tasks) != sorted(names):
            raise ValueError(f"weighting is for tasks {self.weighting.tasks}, not {names}")
        self.layers = sorted({i for t in tasks for i in (t.layers or ())})
        self.metrics = nn.ModuleDict(
            {f"{stage}_{t.name}": t.metrics(stage) for stage in ("val", "test") for t in tasks}
        )
        self.num_examples = num_examples
        self.examples: dict[str, list[dict]] = {}
        # per stage: (loss sum, labelled samples) of each task over this rank's batches
        self._eval_sums: dict[str, torch.Tensor] = {}

    @property
    def monitor(self) -> tuple[str, str]:
        first = next(iter(self.tasks.values()))
        return first.monitor, first.mode

    # ------------------------------------------------------------------ forward
    def features(self, image: torch.Tensor) -> dict[str, object]:
        """One backbone pass: ``cls``, ``patch`` and, when a task needs them, ``layers``
        (a dict block index -> map)."""
        if self.layers:
            feats = self.backbone.forward_dense(image, indices=self.layers)
            return {**feats, "layers": dict(zip(self.layers, feats["layers"]))}
        return dict(self.backbone.forward_features(image))

    def heads(self, feats: Mapping[str, object], image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for name, task in self.tasks.items():
            task_feats = dict(feats)
            if task.layers is not None:
                task_feats["layers"] = [feats["layers"][i] for i in task.layers]
            out[name] = task(task_feats, image)
        return out

    def _forward(
        self, image: torch.Tensor, shared_features: bool = False
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Predictions for a batch (and, when asked, the shared features loss balancing
        measures). Images whose size the backbone snaps to a patch multiple
        (``backbone.patch_multiple``) run at the snapped size, and dense predictions are
        mapped back to the input size."""
        snap = getattr(self.backbone, "snap", None)
        x, restore = snap(image) if snap is not None else (image, None)
        feats = self.features(x)
        shared = self._shared(feats) if shared_features else []
        preds = self.heads(feats, x)
        if x is not image:
            preds = {
                k: restore(v) if v.ndim == 4 and v.shape[-2:] == x.shape[-2:] else v
                for k, v in preds.items()
            }
        return shared, preds

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions of every task for a batch of images (B, C, H, W)."""
        return self._forward(image)[1]

    @staticmethod
    def _shared(feats: Mapping[str, object]) -> list[torch.Tensor]:
        shared = [feats[k] for k in ("cls", "patch") if k in feats]
        shared += list(feats.get("layers", {}).values())
        for t in shared:  # a frozen backbone's outputs are leaves: let GradNorm measure there
            if not t.requires_grad and t.grad_fn is None:
                t.requires_grad_()
        return shared

    def _losses(
        self, preds, batch, across_ranks: bool = False
    ) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
        """Each task's loss over its labelled samples and whether the batch had any.

        With ``across_ranks`` (training under DDP) a task counts as present when any rank has
        a labelled sample, and each rank's loss is scaled by ``n_rank · world / n_total``
        (its share of the task's labelled samples), so that the gradient DDP averages over
        the ranks is that of the loss over the whole global batch (exact for losses that are
        means over samples). Every rank then balances the same set of tasks.
        """
        losses, counts = {}, {}
        for name, task in self.tasks.items():
            valid = task.valid_samples(batch)
            counts[name] = 0 if valid is None else int(valid.sum())
            losses[name] = task.compute_loss(preds[name], batch, valid)
        world = world_size()
        if not (across_ranks and world > 1):
            return losses, {name: n > 0 for name, n in counts.items()}
        mine = torch.tensor(
            [counts[n] for n in self.tasks], dtype=torch.float64, device=self.device
        )
        total = all_reduce_sum(mine)  # one small collective per training step
        for i, name in enumerate(self.tasks):
            if total[i] > 0:
                losses[name] = losses[name] * float(mine[i] * world / total[i])
        return losses, {name: bool(total[i] > 0) for i, name in enumerate(self.tasks)}

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer is not None and self.trainer.datamodule is not None:
            for task in self.tasks.values():
                task.prepare(self.trainer.datamodule)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        with sample_seeds(self._row_seeds(batch)):  # per-sample drop-path choices
            shared, preds = self._forward(image, shared_features=self.weighting.needs_features)
        losses, present = self._losses(preds, batch, across_ranks=True)
        total = self.weighting(losses, shared, present)
        bs = image.shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        if len(losses) > 1:
            weights = self.weighting.weights()
            for name, value in losses.items():
                if present[name]:
                    self.log(f"train/{name}/loss", value, batch_size=bs)
                self.log(f"train/{name}/weight", weights[name], batch_size=bs)
        return total

    def _row_seeds(self, batch) -> list[int] | None:
        """One seed per training sample from (data seed, epoch, dataset index), the same on
        every rank and in every batch the sample is in; None without indices."""
        index = batch.get("index") if isinstance(batch, Mapping) else None
        if index is None:
            return None
        trainer = self._trainer
        seed = int(getattr(getattr(trainer, "datamodule", None), "seed", 0) or 0)
        epoch = int(self.current_epoch) if trainer is not None else 0
        return [derive_seed(seed, epoch, int(i), 500) for i in index.reshape(-1).tolist()]

    def on_after_backward(self) -> None:
        self.weighting.after_backward()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.weighting.after_step()

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        """Clip the model's gradients only: learned loss weights follow their own gradients."""
        stash = [(p, p.grad) for p in self.weighting.parameters()]
        for p, _ in stash:
            p.grad = None
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for p, grad in stash:
            p.grad = grad

    def _eval_step(self, batch, stage: str) -> None:
        preds = self(batch["image"])
        losses, counts = {}, {}
        for name, task in self.tasks.items():
            valid = task.valid_samples(batch)
            counts[name] = 0 if valid is None else int(valid.sum())
            losses[name] = task.compute_loss(preds[name], batch, valid)
        sums = self._eval_sums.setdefault(
            stage, torch.zeros(2 * len(self.tasks), dtype=torch.float64)
        )
        for i, name in enumerate(self.tasks):
            if counts[name]:  # each task's loss: mean over its labelled samples of the split
                sums[2 * i] += float(losses[name].detach()) * counts[name]
                sums[2 * i + 1] += counts[name]
        for name, task in self.tasks.items():
            out = task.update_metrics(self.metrics[f"{stage}_{name}"], preds[name], batch)
            if stage == "test" and out is not None:
                self._keep_examples(name, task, batch, out)

    def _keep_examples(self, name: str, task: Task, batch, out: list) -> None:
        kept = self.examples.setdefault(name, [])
        for i, pred in enumerate(out):
            if len(kept) >= self.num_examples:
                break
            if pred is None:
                continue
            kept.append(
                {
                    "image": batch["image"][i].detach().float().cpu().numpy(),
                    "target": task.example_target(batch, i),
                    "pred": pred,
                }
            )

    def _log_metrics(self, stage: str) -> None:
        """Epoch-end losses and metrics of a stage, the same on every rank.

        Under DDP the ranks' loss sums, labelled-sample counts and metric update counts are
        summed in one collective, so that every rank logs the same keys and takes part in the
        same metric ``compute()`` calls (each a collective), also a rank that saw no labelled
        sample of a task, or no batch at all (a split smaller than the world size).
        """
        names = list(self.tasks)
        sums = self._eval_sums.pop(stage, torch.zeros(2 * len(names), dtype=torch.float64))
        updates = torch.tensor(
            [self.metrics[f"{stage}_{n}"].update_count for n in names], dtype=torch.float64
        )
        total = all_reduce_sum(torch.cat([sums, updates]).to(self.device)).cpu()
        means = {
            n: torch.tensor(float(total[2 * i] / total[2 * i + 1]))
            for i, n in enumerate(names)
            if total[2 * i + 1] > 0
        }
        if means:
            present = {n: n in means for n in names}
            zero = torch.tensor(0.0)
            losses = {n: means.get(n, zero) for n in names}
            with torch.no_grad():
                loss = self.weighting(losses, (), present).detach().float().cpu()
            self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
            for n, value in means.items():
                self.log(f"{stage}/{n}/loss", value.float())
        for i, (name, task) in enumerate(self.tasks.items()):
            metric = self.metrics[f"{stage}_{name}"]
            if total[2 * len(names) + i] == 0:  # no rank had a sample with the task's target
                metric.reset()
                continue
            with warnings.catch_warnings():  # a rank without updates still joins the sync
                warnings.filterwarnings("ignore", message=".*compute.*before.*update")
                values = dict(metric.compute())
            task.epoch_end(stage, metric, values)
            for key, value in values.items():
                value = torch.as_tensor(value)
                if value.numel() == 1:
                    key = f"{stage}/{name}/{key}"
                    self.log(key, value.float(), prog_bar=key == task.monitor)
            metric.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._eval_sums.pop("val", None)

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_start(self) -> None:
        self.examples = {}
        self._eval_sums.pop("test", None)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def configure_optimizers(self):
        trainer = self._trainer  # None outside a Trainer (``self.trainer`` would raise)
        total = int(trainer.estimated_stepping_batches) if trainer is not None else 1000
        optimizer, scheduler = self.optim.build(
            self.backbone,
            self.tasks,
            getattr(self.backbone, "pretrained", False),
            total,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        learned = [p for p in self.weighting.parameters() if p.requires_grad]
        if learned:
            lr = self.weighting.lr if self.weighting.lr is not None else self.optim.lr
            optimizer.add_param_group(
                {"params": learned, "lr": lr, "weight_decay": 0.0, "name": "loss_weighting"}
            )
            # the schedule (warm-up + cosine) covers the new group too
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, scheduler.lr_lambdas[0])
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
