"""``train(cfg)``: data, model, callbacks, loggers and trainer wired from a composed config."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from microfm.callbacks import Figures, RunResults
from microfm.modules import SupervisedModule
from microfm.run.build import (
    build,
    build_callbacks,
    build_trainer,
    check_settings,
    resolved_config,
)
from microfm.run.checkpoint_io import AtomicCheckpointIO
from microfm.run.info import write_run_info
from microfm.run.tasks import build_tasks
from microfm.utils.io import atomic_write_text, update_json

log = logging.getLogger(__name__)


def _resume_path(cfg: DictConfig, run_dir: Path) -> str | None:
    resume = cfg.get("resume")
    if not resume:
        return None
    path = run_dir / "ckpts" / "last.ckpt" if resume == "last" else Path(str(resume))
    if not path.is_file():
        from microfm.errors import ConfigError

        raise ConfigError(f"resume: checkpoint not found: {path}")
    return str(path)


@rank_zero_only
def _write_run_files(run_dir: Path, cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config_used.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir)


def train(cfg: DictConfig) -> dict:
    """Fit ``cfg.task`` on ``cfg.data`` and (unless ``test=false``) test the best checkpoint.

    Every object is built and the data are checked before the first training step, so a bad
    key, file or setting fails within seconds.

    Returns:
        The contents of ``<run_dir>/metrics.json``.
    """
    check_settings(cfg)
    run_dir = Path(cfg.run_dir)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    tasks, weighting = build_tasks(cfg.task)
    datamodule = build(cfg.data, "data", augment=build(cfg.augment, "augment"))
    backbone = build(cfg.backbone, "backbone")
    finetune = build(cfg.finetune, "finetune").apply(backbone)
    module = SupervisedModule(backbone, tasks, optim=build(cfg.optim, "optim"), weighting=weighting)
    datamodule.setup("fit")

    _write_run_files(run_dir, cfg)
    callbacks = [
        *build_callbacks(cfg),
        RunResults(
            run_dir,
            resolved_config(cfg),
            meta={"finetune_applied": finetune.mode, "adapted_modules": list(finetune.wrapped)},
        ),
        Figures(run_dir),
    ]
    trainer = build_trainer(
        cfg, callbacks, build(cfg.get("logger"), "logger"), plugins=[AtomicCheckpointIO()]
    )
    if trainer.is_global_zero:
        n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        update_json(
            run_dir / "metrics.json",
            {
                "finetune_applied": finetune.mode,
                "trainable_params": n_train,
                "backbone_pretrained": bool(backbone.pretrained),
            },
        )

    trainer.fit(module, datamodule=datamodule, ckpt_path=_resume_path(cfg, run_dir))
    if cfg.get("test", True):
        ckpt = trainer.checkpoint_callback
        best = "best" if ckpt is not None and ckpt.best_model_path else None
        trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)

    metrics_path = run_dir / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
