"""Figures of the tasks (written to a run's ``figs/``): confusion matrix, class examples,
semantic and depth predictions, the post-processing threshold grid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from microfm.utils.figures import _pyplot, display_range, save_figure


def plot_confusion_matrix(
    cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> None:
    """Row-normalised confusion matrix (recall per true class) with the raw counts."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.float64)
    k = len(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.2 + 0.55 * k
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}\n{norm[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if norm[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (counts, recall per row)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def plot_class_examples(
    examples: Sequence[Mapping[str, object]], class_names: Sequence[str], path: str | Path
) -> None:
    """Test images titled with their true and predicted class."""
    plt = _pyplot()
    n = len(examples)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.8), squeeze=False)
    for ax, ex in zip(axes[0], examples):
        ax.imshow(display_range(ex["image"]), cmap="gray")
        true, pred = int(ex["target"]), int(ex["pred"])
        ax.set_title(
            f"true {class_names[true]}\npred {class_names[pred]}",
            fontsize=8,
            color="black" if true == pred else "red",
        )
        ax.axis("off")
    save_figure(fig, path)


def plot_map_examples(
    examples: Sequence[Mapping[str, object]],
    path: str | Path,
    kind: str,
    num_classes: int | None = None,
) -> None:
    """Image, target and prediction per example; ``kind`` is ``semantic`` (class maps) or
    ``depth`` (height maps on a shared colour scale)."""
    plt = _pyplot()
    n = len(examples)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for row, ex in zip(axes, examples):
        target, pred = np.asarray(ex["target"]).squeeze(), np.asarray(ex["pred"]).squeeze()
        row[0].imshow(display_range(ex["image"]), cmap="gray")
        if kind == "semantic":
            shown = np.where(target < 0, np.nan, target)
            opts = {"cmap": "tab10", "vmin": 0, "vmax": 9, "interpolation": "nearest"}
        else:
            valid = np.isfinite(target) & (target > 0)
            lo, hi = np.percentile(target[valid], [1, 99]) if valid.any() else (0.0, 1.0)
            shown = np.where(valid, target, np.nan)
            opts = {"cmap": "viridis", "vmin": lo, "vmax": hi}
        row[1].imshow(shown, **opts)
        im = row[2].imshow(pred, **opts)
        for ax, title in zip(row, ("image", "target", "prediction")):
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        if kind == "depth":
            fig.colorbar(im, ax=row[2], fraction=0.046)
    save_figure(fig, path)


def plot_threshold_grid(
    grid: np.ndarray,
    cells_max: Sequence[float],
    cell_fill: Sequence[float],
    best: tuple[float, float],
    path: str | Path,
    score: str = "op_csb",
) -> None:
    """Heatmap of the validation score of every (cells_max, cell_fill) pair, best pair framed."""
    plt = _pyplot()
    grid = np.asarray(grid, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(cell_fill), 1.0 + 0.55 * len(cells_max)))
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="magma", aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(
                    j,
                    i,
                    f"{grid[i, j]:.3f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if grid[i, j] < np.nanmean(grid) else "black",
                )
    bi = int(np.argmin(np.abs(np.asarray(cells_max) - best[0])))
    bj = int(np.argmin(np.abs(np.asarray(cell_fill) - best[1])))
    ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, ec="cyan", lw=2))
    ax.set_xticks(range(len(cell_fill)), [f"{v:g}" for v in cell_fill], fontsize=8)
    ax.set_yticks(range(len(cells_max)), [f"{v:g}" for v in cells_max], fontsize=8)
    ax.set_xlabel("cell_fill (foreground threshold)")
    ax.set_ylabel("cells_max (seed threshold)")
    ax.set_title(
        f"validation {score}; chosen cells_max={best[0]:g}, cell_fill={best[1]:g}", fontsize=9
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)
