"""``microfm-inspect``: architecture summary, parameter counts and feature shapes of a backbone.

microfm-inspect backbone=dinov3_vits16
microfm-inspect backbone=dinov2_vitb14_reg finetune=lora finetune.lora.r=16 data.in_chans=2
microfm-inspect backbone=dinov3_vit7b16 finetune=lora    # on the meta device: no memory needed
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from microfm.cli import user_errors
from microfm.run.config import config_dir


@hydra.main(config_path=str(config_dir()), config_name="inspect", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from microfm.run.inspect import run_inspect

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with user_errors("microfm-inspect", logged=False):
        run_inspect(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
