"""Figures written to a run's ``figs/`` folder (matplotlib, headless)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from microfm.utils.io import atomic_write_bytes


class _Figures:
    """The part of ``pyplot`` the figure writers use, without pyplot's global state.

    Figures are plain :class:`matplotlib.figure.Figure` objects rendered by Agg, so writing
    run figures never switches the user's backend (a notebook keeps showing its own plots)
    and never needs a display.
    """

    @staticmethod
    def figure(**kwargs):
        from matplotlib.figure import Figure

        return Figure(**kwargs)

    def subplots(self, nrows: int = 1, ncols: int = 1, **kwargs):
        fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi", "layout") if k in kwargs}
        fig = self.figure(**fig_kw)
        return fig, fig.subplots(nrows, ncols, **kwargs)

    @staticmethod
    def get_cmap(name: str):
        import matplotlib

        return matplotlib.colormaps[name]

    @property
    def Rectangle(self):  # noqa: N802 - mirrors pyplot's name
        from matplotlib.patches import Rectangle

        return Rectangle


def _pyplot() -> _Figures:
    return _Figures()


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Save a matplotlib figure atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> None:
    """One panel per metric group (loss, then each task's metrics) against the epoch."""
    plt = _pyplot()
    groups: dict[str, list[str]] = {}
    for key in sorted(history):
        parts = key.split("/")
        group = "loss" if parts[-1] == "loss" else "/".join(parts[1:-1]) or parts[-1]
        groups.setdefault(group, []).append(key)
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.2), squeeze=False)
    for ax, (group, keys) in zip(axes[0], groups.items()):
        for key in keys:
            xs, ys = zip(*history[key]) if history[key] else ((), ())
            ax.plot(xs, ys, marker="o", ms=3, label=key)
        ax.set_title(group)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def display_range(image: np.ndarray) -> np.ndarray:
    """First channel of a (C, H, W) image scaled to [0, 1] by its 1-99.8 percentiles."""
    img = np.asarray(image, dtype=np.float32)
    img = img[0] if img.ndim == 3 else img
    lo, hi = np.percentile(img, [1, 99.8])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1)


def plot_instance_overlays(examples: Sequence[Mapping[str, np.ndarray]], path: str | Path) -> None:
    """Images with ground-truth (green) and predicted (magenta) instance outlines."""
    from skimage.segmentation import find_boundaries

    plt = _pyplot()
    n = len(examples)
    if n == 0:
        return
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        base = display_range(ex["image"])
        rgb = np.stack([base] * 3, axis=-1)
        gt = find_boundaries(np.asarray(ex["target"]), mode="inner")
        pred = find_boundaries(np.asarray(ex["pred"]), mode="inner")
        rgb[gt] = (0.1, 0.9, 0.2)
        rgb[pred] = (1.0, 0.1, 0.9)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(
            f"gt {len(np.unique(ex['target'])) - 1} / pred {int(np.max(ex['pred']))}", fontsize=8
        )
        ax.axis("off")
    fig.suptitle("test: ground truth (green) and prediction (magenta)", fontsize=9)
    save_figure(fig, path)
