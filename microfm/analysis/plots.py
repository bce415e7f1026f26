"""Figures of the analyses (matplotlib, headless). No computation beyond layout: the numbers
come from the analysis modules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from microfm.utils.figures import _pyplot, save_figure

TAB = "tab10"


def to_display(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) image as something imshow shows: grey (H, W) for 1 or >3 channels (the
    first), RGB (H, W, 3) for 3 channels, each channel scaled by its 1-99.8 percentiles."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = img[None]
    chans = img[:3] if img.shape[0] == 3 else img[:1]
    out = []
    for c in chans:
        lo, hi = np.percentile(c, [1, 99.8])
        out.append(np.clip((c - lo) / max(hi - lo, 1e-6), 0, 1))
    return np.stack(out, -1) if len(out) == 3 else out[0]


def _colours(n: int):
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_embedding(
    emb: np.ndarray, colourings: Mapping[str, tuple[np.ndarray, Sequence[str]]], title: str, path
) -> None:
    """One scatter panel per colouring (class, domain); 3-D embeddings in 3-D axes."""
    plt = _pyplot()
    n = len(colourings)
    three = emb.shape[1] == 3
    fig = plt.figure(figsize=(5.2 * n, 4.6))
    for j, (by, (values, names)) in enumerate(colourings.items()):
        ax = fig.add_subplot(1, n, j + 1, projection="3d" if three else None)
        groups = np.unique(values)
        for c, colour in zip(groups, _colours(len(groups))):
            sel = values == c
            label = names[c] if c < len(names) else str(c)
            pts = [emb[sel, d] for d in range(emb.shape[1])]
            ax.scatter(*pts, s=8, color=colour, label=f"{label} ({sel.sum()})", alpha=0.75)
        ax.set_title(f"{title}\ncoloured by {by}", fontsize=9)
        ax.legend(fontsize=7, markerscale=1.5, loc="best")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, path)


def plot_explained_variance(ratio: np.ndarray, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    k = np.arange(1, len(ratio) + 1)
    ax.bar(k, ratio, color="#4c72b0", label="per component")
    ax.plot(k, np.cumsum(ratio), color="#dd8452", marker="o", ms=3, label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], path) -> None:
    """Row-normalised confusion matrix (rows: true class) with counts."""
    plt = _pyplot()
    n = max(len(names), int(max(y_true.max(), y_pred.max())) + 1)
    cm = np.zeros((n, n), dtype=int)
    np.add.at(cm, (y_true, y_pred), 1)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [names[i] if i < len(names) else str(i) for i in range(n)]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    save_figure(fig, path)


def plot_histograms(
    scores: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Sequence[str], path
) -> None:
    """One panel per score: histograms of the two groups."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(scores), figsize=(4.4 * len(scores), 3.2), squeeze=False)
    for ax, (name, groups) in zip(axes[0], scores.items()):
        lo = min(float(np.min(g)) for g in groups if len(g))
        hi = max(float(np.max(g)) for g in groups if len(g))
        bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
        for g, label in zip(groups, labels):
            ax.hist(g, bins=bins, alpha=0.6, density=True, label=f"{label} ({len(g)})")
        ax.set_title(f"{name} score", fontsize=9)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_bootstrap(d: np.ndarray, value: float, ci: tuple[float, float], path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(d, bins=30, color="#8da0cb")
    ax.axvline(value, color="black", label=f"FD {value:.3g}")
    for x in ci:
        ax.axvline(x, color="#e78ac3", ls="--")
    ax.set_title(f"bootstrap of the Fréchet distance ({len(d)} resamples)", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _image_or_text(ax, image, text: str) -> None:
    if image is not None:
        shown = to_display(image)
        ax.imshow(shown, cmap=None if shown.ndim == 3 else "gray", interpolation="nearest")
    else:
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=6, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_retrieval(queries, neighbours, sims, captions, images, path) -> None:
    """One row per query: the query, then its neighbours with their similarity."""
    plt = _pyplot()
    rows, k = neighbours.shape
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.7 * (k + 1), 2.1 * rows), squeeze=False)
    for r in range(rows):
        ids = [queries[r], *neighbours[r]]
        for c, i in enumerate(ids):
            ax = axes[r][c]
            _image_or_text(ax, images(int(i)) if images is not None else None, captions[r][c])
            cap = captions[r][c][-24:]
            ax.set_title(cap if c == 0 else f"{cap}\n{sims[r, c - 1]:.4f}", fontsize=6)
            if c == 0:
                for side in ax.spines.values():
                    side.set_color("red")
                    side.set_linewidth(2)
    fig.suptitle("queries (red) and their nearest neighbours (cosine similarity)", fontsize=9)
    save_figure(fig, path)


def plot_pca_rgb(rgb: np.ndarray, images, names: Sequence[str], path) -> None:
    """Image (when available) above its PCA-RGB map, per column."""
    plt = _pyplot()
    n = len(rgb)
    rows = 2 if images is not None else 1
    fig, axes = plt.subplots(rows, n, figsize=(2.0 * n, 2.1 * rows), squeeze=False)
    for j in range(n):
        if images is not None:
            _image_or_text(axes[0][j], images[j], names[j])
        ax = axes[rows - 1][j]
        ax.imshow(rgb[j], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        axes[0][j].set_title(Path(names[j]).name[-22:], fontsize=6)
    fig.suptitle("PCA of patch features as RGB (background removed)", fontsize=9)
    save_figure(fig, path)
