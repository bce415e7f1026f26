"""``figs/mae_reconstructions.png``: validation images, their masked input and the MAE
reconstruction, after every validation (rank 0)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from microfm.run.loggers import log_figure
from microfm.utils.figures import _pyplot, save_figure

COLUMNS = ("image", "masked", "reconstruction", "pasted")
TITLES = {
    "image": "input",
    "masked": "masked (encoder input)",
    "reconstruction": "reconstruction",
    "pasted": "reconstruction + visible",
}


def plot_reconstructions(out: dict[str, torch.Tensor], path: str | Path) -> None:
    """One row per image, columns input / masked / reconstruction / reconstruction with the
    visible patches; first channel, all panels of a row on the input's display range."""
    plt = _pyplot()
    n = out["image"].shape[0]
    fig, axes = plt.subplots(n, len(COLUMNS), figsize=(2.4 * len(COLUMNS), 2.4 * n), squeeze=False)
    for i in range(n):
        ref = out["image"][i, 0].float().cpu().numpy()
        lo, hi = np.percentile(ref, [1, 99.8])
        for j, key in enumerate(COLUMNS):
            img = np.clip((out[key][i, 0].float().cpu().numpy() - lo) / max(hi - lo, 1e-6), 0, 1)
            if key == "masked" and "mask" in out:  # hidden patches in mid grey
                img = np.where(out["mask"][i, 0].cpu().numpy() > 0.5, 0.5, img)
            axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=1)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(TITLES[key], fontsize=8)
    save_figure(fig, path)


class Reconstructions(L.Callback):
    """Plots ``pl_module.reconstruct(pl_module.figure_images)`` (the first validation batch)
    to ``<run_dir>/figs/mae_reconstructions.png`` after every validation, and sends the last one
    to the loggers that take images.

    Args:
        run_dir: the run folder.

    Example:
        >>> cb = Reconstructions("results/ssl/run")
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "figs" / "mae_reconstructions.png"

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        images = getattr(pl_module, "figure_images", None)
        if trainer.sanity_checking or images is None:
            return
        with torch.inference_mode(False), torch.no_grad():
            out = pl_module.reconstruct(images.clone())
        plot_reconstructions(out, self.path)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path.is_file():
            log_figure(trainer.loggers, "figs/mae_reconstructions", self.path)
