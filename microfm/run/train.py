"""``train(cfg)``: data, model, callbacks, loggers and trainer wired from a composed config."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from microfm.callbacks import Figures, RunResults
from microfm.data.sampling import SamplerProgress
from microfm.distributed.checks import check_launch
from microfm.distributed.environment import cluster_environment, current_launch, set_rank_zero
from microfm.distributed.preemption import (
    CheckpointOnSigterm,
    LauncherOwnsSignals,
    resume_path,
)
from microfm.distributed.resolvers import process_rank
from microfm.errors import ConfigError
from microfm.finetune.audit import lora_audit, save_adapters, write_lora_audit
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
from microfm.run.loggers import finish_loggers, log_config
from microfm.run.tasks import build_tasks, is_self_supervised
from microfm.utils.io import atomic_write_text, update_json

log = logging.getLogger(__name__)

# microfm's SeededSampler resumes mid-epoch (its position is saved with the DataModule's state)
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@rank_zero_only
def _write_run_files(run_dir: Path, cfg: DictConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config_used.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir)


def use_dataset_statistics(backbone, datamodule) -> None:
    """``backbone.norm_stats=dataset``: normalise the model input with the per-channel mean/std
    of the training images (stored in the checkpoint with the model)."""
    if getattr(backbone, "norm_stats", "pretrained") != "dataset":
        return
    if getattr(backbone, "channel_adapter", None) is not None:
        raise ConfigError(
            "backbone.norm_stats=dataset does not combine with backbone.channel_mode=adapter "
            "(the adapter's output is normalised with the pretraining statistics)"
        )
    mean, std = datamodule.channel_stats()
    std = [max(float(s), 1e-6) for s in std]
    backbone.set_normalization(mean, std)
    log.info("backbone input normalised with dataset statistics: mean %s, std %s", mean, std)


def train(cfg: DictConfig) -> dict:
    """Fit ``cfg.task`` on ``cfg.data`` and (unless ``test=false``) test the best checkpoint.

    Every object is built and the data are checked before the first training step, so a bad
    key, file or setting fails within seconds. Under a cluster launcher every process calls
    this; the processes must be those the trainer expects (one per device), and only rank 0
    writes the run folder's files.

    Returns:
        The contents of ``<run_dir>/metrics.json``.
    """
    check_settings(cfg)
    launch = current_launch()
    check_launch(cfg, launch, multirun=_is_multirun())
    set_rank_zero(launch.global_rank if launch else process_rank())
    run_dir = Path(cfg.run_dir)
    ckpt_path = resume_path(cfg.get("resume"), run_dir)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    ssl = is_self_supervised(cfg)
    tasks, weighting = ([], None) if ssl else build_tasks(cfg.task)
    datamodule = build(cfg.data, "data", augment=build(cfg.augment, "augment"))
    backbone = build(cfg.backbone, "backbone")
    finetune = build(cfg.finetune, "finetune").apply(backbone)
    optim = build(cfg.optim, "optim")
    if ssl:  # a self-supervised task's config is its LightningModule (MAE, DINO)
        module = build(cfg.task, "task", backbone=backbone, optim=optim)
    else:
        module = SupervisedModule(backbone, tasks, optim=optim, weighting=weighting)
    datamodule.setup("fit")
    use_dataset_statistics(backbone, datamodule)

    _write_run_files(run_dir, cfg)
    resolved = resolved_config(cfg)
    callbacks = [
        *build_callbacks(cfg),
        RunResults(
            run_dir,
            resolved,
            meta={"finetune_applied": finetune.mode, "adapted_modules": list(finetune.wrapped)},
        ),
        Figures(run_dir),
        SamplerProgress(),
        CheckpointOnSigterm(run_dir / "ckpts" / "last.ckpt"),
    ]
    if launch is not None and launch.source.startswith("submitit"):
        callbacks.append(LauncherOwnsSignals())
    environment = cluster_environment()
    plugins = [AtomicCheckpointIO(), *([environment] if environment is not None else [])]
    trainer = build_trainer(cfg, callbacks, build(cfg.get("logger"), "logger"), plugins=plugins)
    log_config(trainer.loggers, resolved)
    if trainer.is_global_zero:
        write_lora_audit(
            run_dir / "lora_targets.json", lora_audit(backbone, finetune.mode, finetune.wrapped)
        )
        n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        update_json(
            run_dir / "metrics.json",
            {
                "finetune_applied": finetune.mode,
                "trainable_params": n_train,
                "backbone_pretrained": bool(backbone.pretrained),
            },
        )

    success = False
    try:
        with warnings.catch_warnings():
            if ckpt_path:  # resuming into the run folder: its checkpoints are expected there
                warnings.filterwarnings("ignore", message="Checkpoint directory .* not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if cfg.get("test", True):
            ckpt = trainer.checkpoint_callback
            best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
            trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=False)
        if trainer.is_global_zero and (finetune.wrapped or backbone.channel_adapter is not None):
            # the tested (best) weights, or the last ones when there was no test
            save_adapters(
                backbone,
                run_dir / "ckpts" / "adapters.safetensors",
                {"backbone": resolved["backbone"], "finetune": resolved["finetune"]},
            )
        success = True
    finally:
        finish_loggers(trainer.loggers, success)  # closes this job's W&B run

    metrics_path = run_dir / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
