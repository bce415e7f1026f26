"""``microfm-train``: fit and test a model from the composed Hydra config.

microfm-train backbone=dinov3_vits16 task=cellseg
microfm-train experiment=cellseg_quick trainer.max_epochs=2
microfm-train --help        # config groups and their options
microfm-train -m finetune.lora.r=4,8,16                      # a sweep, one job after the other
microfm-train cluster=slurm trainer.devices=4 finetune.lora.r=4,8   # one SLURM job per point
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from microfm.cli import user_errors
from microfm.distributed.resolvers import pin_run_stamp
from microfm.run.config import config_dir


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from microfm.run.train import train  # heavy imports after argument parsing

    # Hydra's handlers already print and file every record; drop Lightning's own console
    # handler so each message appears once.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        # a failed job of a multirun is recorded as such; the other jobs go on
        with user_errors("microfm-train", multirun=True):
            metrics = train(cfg)
    except SIGTERMException:
        print("microfm-train: stopped by SIGTERM (resume=auto continues)", file=sys.stderr)
        raise SystemExit(143) from None
    monitor = cfg.task.get("monitor", "")
    value = metrics.get(monitor.replace("val/", "test/", 1)) or metrics.get(f"best/{monitor}")
    return float(value) if value is not None else None


def main() -> None:
    # one run stamp for this launch: every rank, job and requeue names its folder with it
    pin_run_stamp()
    _main()


if __name__ == "__main__":
    main()
