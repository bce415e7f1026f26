"""Callbacks writing a run's results folder: metrics.json, figures, config inside checkpoints."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from microfm.run.loggers import log_figure
from microfm.utils.figures import plot_curves
from microfm.utils.io import update_json


def _scalars(metrics: Mapping[str, object], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            try:
                out[key] = float(value)
            except (TypeError, ValueError):
                continue
    return out


class RunResults(L.Callback):
    """Stores the resolved config in every checkpoint and merges results into
    ``<run_dir>/metrics.json`` (atomically, rank 0 only).

    Args:
        run_dir: the run folder.
        config: the resolved run configuration (a plain dict), stored under
            ``checkpoint["microfm"]["config"]`` so that a checkpoint alone rebuilds its model.
        meta: facts decided at run time that the config does not say (e.g. the finetune mode
            actually applied), stored under ``checkpoint["microfm"]["meta"]``.
    """

    def __init__(
        self, run_dir: str | Path, config: Mapping | None = None, meta: Mapping | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = dict(config or {})
        self.meta = dict(meta or {})
        self._fit_start = 0.0

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.json"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        import microfm

        checkpoint["microfm"] = {
            "config": self.config,
            "meta": self.meta,
            "version": microfm.__version__,
        }

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.time()

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the
    # module logs the epoch's metrics, so callback_metrics would still hold the previous ones
    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        val = _scalars(trainer.callback_metrics, "val/")
        update_json(self.metrics_path, {**val, "epoch": trainer.current_epoch})

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        ckpt = trainer.checkpoint_callback
        results: dict[str, object] = {"train_seconds": round(time.time() - self._fit_start, 2)}
        if ckpt is not None and ckpt.best_model_score is not None:
            results[f"best/{ckpt.monitor}"] = float(ckpt.best_model_score)
            results["best_ckpt"] = str(ckpt.best_model_path)
        results["global_step"] = trainer.global_step
        update_json(self.metrics_path, results)

    @rank_zero_only
    def on_test_end(self, trainer, pl_module) -> None:
        update_json(self.metrics_path, _scalars(trainer.callback_metrics, "test/"))


class Figures(L.Callback):
    """Training curves (``figs/training_curves.png``) and test predictions
    (``figs/test_<task>.png``), rank 0 only; each figure also goes to the experiment loggers
    that take images (``logger=wandb``) under ``figs/<name>``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.figs = Path(run_dir) / "figs"
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer, prefix: str) -> None:
        for key, value in _scalars(trainer.callback_metrics, prefix).items():
            if key.endswith("_step"):
                continue
            self.history.setdefault(key.removesuffix("_epoch"), []).append(
                (trainer.current_epoch, value)
            )

    @rank_zero_only
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._record(trainer, "train/")

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, "val/")

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        if self.history:
            path = self.figs / "training_curves.png"
            plot_curves(self.history, path)
            log_figure(trainer.loggers, "figs/training_curves", path)

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {k: [tuple(p) for p in v] for k, v in state_dict.get("history", {}).items()}

    @rank_zero_only
    def on_test_end(self, trainer, pl_module) -> None:
        for name, examples in getattr(pl_module, "examples", {}).items():
            if examples:
                path = self.figs / f"test_{name}.png"
                pl_module.tasks[name].plot_examples(examples, path)
                if path.is_file():
                    log_figure(trainer.loggers, f"figs/test_{name}", path)
