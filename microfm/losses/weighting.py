"""Balancing the losses of several tasks trained on one backbone: fixed weights, learned
homoscedastic uncertainty (Kendall et al. 2018) and GradNorm (Chen et al. 2018).

Every weighting is an ``nn.Module`` called as ``weighting(losses, features, present)`` and
returning the total loss. ``losses`` maps task names to scalar losses; ``present`` says which
tasks had at least one sample with a target in the batch (the others are left out, so a batch
without, say, depth targets neither trains nor re-weights the depth task).

Absent tasks and learned weights still enter the total with weight zero: under DDP without
``find_unused_parameters`` every parameter must take part in every backward pass. GradNorm
measures its losses and gradient norms over all ranks (all-reduced), so its weights stay
identical on every rank and equal those of one process on the global batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from microfm.distributed.gather import all_reduce_sum, world_size

WEIGHTINGS = ("fixed", "uncertainty", "gradnorm")


class LossWeighting(nn.Module):
    """Base class: a fixed weight per task (default 1).

    Args:
        tasks: task names, in a fixed order.
        weights: weight per task name (missing names weigh 1).
        lr: learning rate of learned weights (None: the heads' rate).

    Example:
        >>> w = LossWeighting(["a", "b"], {"b": 0.5})
        >>> float(w({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}))
        4.0
    """

    needs_features = False

    def __init__(
        self,
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        lr: float | None = None,
    ) -> None:
        super().__init__()
        self.tasks = list(tasks)
        self.lr = None if lr is None else float(lr)
        unknown = set(weights or {}) - set(self.tasks)
        if unknown:
            raise ValueError(f"loss weights for unknown tasks {sorted(unknown)}; tasks: {tasks}")
        self.fixed = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}

    def _present(self, losses, present) -> list[str]:
        return [t for t in self.tasks if t in losses and (present is None or present.get(t, True))]

    def _absent(self, losses, names) -> torch.Tensor:
        """Zero, still connected to the losses of the absent tasks (their heads stay in the
        graph, with zero gradients)."""
        anchor = next(iter(losses.values()))
        return sum((losses[t] * 0.0 for t in losses if t not in names), anchor * 0.0)

    def forward(
        self,
        losses: Mapping[str, torch.Tensor],
        features: Sequence[torch.Tensor] = (),
        present: Mapping[str, bool] | None = None,
    ) -> torch.Tensor:
        names = self._present(losses, present)
        return sum((self.fixed[t] * losses[t] for t in names), self._absent(losses, names))

    def weights(self) -> dict[str, float]:
        """The current effective weight of each task (for logging)."""
        return dict(self.fixed)

    def after_backward(self) -> None:
        """Called after ``loss.backward()``, before the optimiser step."""

    def after_step(self) -> None:
        """Called after the optimiser step."""


class UncertaintyWeighting(LossWeighting):
    """Learned homoscedastic uncertainty: total = Σ_t ½·exp(-s_t)·L_t + ½·s_t with
    s_t = log σ_t² a trainable parameter per task (Kendall et al., the regression form, used for
    every task). At the optimum exp(s_t) = L_t, so each task is weighted by 1 / (2 L_t).

    Example:
        >>> w = UncertaintyWeighting(["a", "b"])
        >>> float(w({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}).detach())
        3.0
    """

    def __init__(
        self,
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        lr: float | None = None,
    ) -> None:
        super().__init__(tasks, weights, lr)
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))

    def forward(self, losses, features=(), present=None) -> torch.Tensor:
        names = self._present(losses, present)
        total = self._absent(losses, names) + self.log_vars.sum() * 0.0
        for t in names:
            s = self.log_vars[self.tasks.index(t)]
            total = total + self.fixed[t] * (0.5 * torch.exp(-s) * losses[t] + 0.5 * s)
        return total

    def weights(self) -> dict[str, float]:
        w = 0.5 * torch.exp(-self.log_vars.detach())
        return {t: self.fixed[t] * float(w[i]) for i, t in enumerate(self.tasks)}


class GradNormWeighting(LossWeighting):
    """GradNorm: task weights w_t (summing to the number of tasks) trained so that the gradient
    norms G_t = w_t·||∇ L_t|| approach mean(G)·r_t^α, where r_t is the task's relative inverse
    training rate L_t / L_t(0), normalised by its mean over tasks.

    The gradients are measured at the shared backbone features (the representation variant),
    which works with a full, LoRA-adapted or frozen backbone alike. Because G_t is linear in
    w_t, the GradNorm gradient of w_t is sign(G_t - target_t)·||∇ L_t|| in closed form (targets
    held constant, as in the paper); it replaces w's gradient after the backward pass. The
    model itself is trained on Σ w_t·L_t with w held constant.

    Args:
        tasks: task names.
        alpha: asymmetry α (1.5 in the paper; 0 equalises the gradient norms).
        lr: learning rate of the weights (None: the heads' rate).
    """

    needs_features = True

    def __init__(self, tasks: Sequence[str], alpha: float = 1.5, lr: float | None = None) -> None:
        super().__init__(tasks, lr=lr)
        self.alpha = float(alpha)
        self.w = nn.Parameter(torch.ones(len(self.tasks)))
        self.register_buffer("initial", torch.full((len(self.tasks),), float("nan")))
        self._pending: torch.Tensor | None = None

    def forward(self, losses, features=(), present=None) -> torch.Tensor:
        names = self._present(losses, present)
        idx = [self.tasks.index(t) for t in names]
        zero = self._absent(losses, names) + self.w.sum() * 0.0  # w's gradient is set later
        total = sum((self.w[i].detach() * losses[t] for i, t in zip(idx, names)), zero)
        feats = [f for f in features if f.requires_grad]
        if self.training and torch.is_grad_enabled() and feats and len(names) > 1:
            self._pending = self._gradnorm_grad(names, idx, losses, feats)
        return total

    def _gradnorm_grad(self, names, idx, losses, feats) -> torch.Tensor:
        norms = []
        for t in names:
            grads = torch.autograd.grad(losses[t], feats, retain_graph=True, allow_unused=True)
            zero = feats[0].new_zeros((), dtype=torch.float32)
            sq = sum((g.float().pow(2).sum() for g in grads if g is not None), zero)
            norms.append(sq.to(self.w.device))
        # over all ranks: the features of different ranks are disjoint and DDP averages the
        # rank losses, so the global squared norm is the sum of the ranks' over world²
        world = world_size()
        g = torch.sqrt(all_reduce_sum(torch.stack(norms)) / world**2)
        L = torch.stack([losses[t].detach().float() for t in names]).to(self.w.device)
        L = all_reduce_sum(L) / world
        ii = torch.tensor(idx, device=self.w.device)
        first = torch.isnan(self.initial[ii])
        if first.any():
            self.initial[ii[first]] = L[first].clamp_min(1e-12)
        ratio = L / self.initial[ii]
        r = ratio / ratio.mean().clamp_min(1e-12)
        G = self.w.detach()[ii] * g
        target = G.mean() * r.pow(self.alpha)
        grad = torch.zeros_like(self.w)
        grad[ii] = torch.sign(G - target) * g
        return grad

    def after_backward(self) -> None:
        if self._pending is not None:
            self.w.grad = self._pending.to(self.w.dtype)
            self._pending = None

    @torch.no_grad()
    def after_step(self) -> None:
        w = self.w.clamp_min(1e-3)
        self.w.copy_(w * len(self.tasks) / w.sum())

    def weights(self) -> dict[str, float]:
        w = self.w.detach()
        return {t: float(w[i]) for i, t in enumerate(self.tasks)}


def build_weighting(
    tasks: Sequence[str],
    mode: str = "fixed",
    weights: Mapping[str, float] | None = None,
    alpha: float = 1.5,
    lr: float | None = None,
) -> LossWeighting:
    """``fixed`` (``weights``), ``uncertainty`` (Kendall; ``weights`` multiply the learned ones)
    or ``gradnorm`` (``alpha``); ``lr`` is the learning rate of learned weights.

    Example:
        >>> type(build_weighting(["cellseg", "depth"], "uncertainty")).__name__
        'UncertaintyWeighting'
    """
    from microfm.errors import ConfigError

    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(tasks))
    if unknown:
        raise ConfigError(f"task.weighting.weights: unknown tasks {unknown}; tasks are {tasks}")
    if mode == "fixed":
        return LossWeighting(tasks, weights)
    if mode == "uncertainty":
        return UncertaintyWeighting(tasks, weights, lr=lr)
    if mode == "gradnorm":
        if weights:
            raise ConfigError("task.weighting.weights: gradnorm learns the weights; leave it {}")
        return GradNormWeighting(tasks, alpha=alpha, lr=lr)
    raise ConfigError(f"task.weighting.mode must be one of {list(WEIGHTINGS)}, got {mode!r}")
