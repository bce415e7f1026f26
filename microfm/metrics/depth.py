"""Depth (height-map) regression scores, the monocular-depth conventions (Eigen et al. 2014):
computed per image over its valid pixels (target > 0 and finite), then averaged over images."""

from __future__ import annotations

import torch
from torchmetrics import Metric

DEPTH_KEYS = ("rmse", "absrel", "delta1", "delta2", "delta3", "rmse_log")


def depth_errors(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Scores of one image; ``pred`` and ``target`` are positive depths of equal shape.

    RMSE = sqrt(mean((p - t)²)); AbsRel = mean(|p - t| / t); δ<1.25^k = fraction of pixels with
    max(p/t, t/p) < 1.25^k; RMSE(log) on natural logarithms.
    """
    valid = torch.isfinite(target) & (target > 0)
    p = pred[valid].double().clamp_min(1e-12)
    t = target[valid].double()
    if t.numel() == 0:
        raise ValueError("no valid target pixel (target > 0)")
    ratio = torch.maximum(p / t, t / p)
    return {
        "rmse": float(torch.sqrt(((p - t) ** 2).mean())),
        "absrel": float(((p - t).abs() / t).mean()),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
        "rmse_log": float(torch.sqrt(((p.log() - t.log()) ** 2).mean())),
    }


class DepthMetrics(Metric):
    """Mean over images of RMSE, AbsRel, δ<1.25 (``delta1``), δ<1.25² and δ<1.25³, RMSE(log).

    Args:
        median_scaling: scale each prediction by median(target)/median(pred) first, the usual
            protocol for scale-ambiguous models.

    Example:
        >>> m = DepthMetrics()
        >>> t = torch.full((1, 1, 4, 4), 2.0)
        >>> out = m(t * 1.1, t)
        >>> round(float(out["absrel"]), 3), float(out["delta1"])
        (0.1, 1.0)
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, median_scaling: bool = False, **kw) -> None:
        super().__init__(**kw)
        self.median_scaling = median_scaling
        for key in DEPTH_KEYS:
            self.add_state(key, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Add (B, 1, H, W) (or (B, H, W)) predicted and target depths; images without a valid
        target pixel are skipped."""
        for p, t in zip(pred.detach(), target.detach()):
            valid = torch.isfinite(t) & (t > 0)
            if not valid.any():
                continue
            if self.median_scaling:
                p = p * (t[valid].median() / p[valid].median().clamp_min(1e-12))
            for key, value in depth_errors(p, t).items():
                setattr(self, key, getattr(self, key) + value)
            self.n_images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = max(float(self.n_images), 1.0)
        return {k: (getattr(self, k) / n).float() for k in DEPTH_KEYS}
