"""``microfm-features``: per-image features of a dataset into ``<run_dir>/features.npz``.

microfm-features backbone=dinov2_vits14 data=classification data.root=/data/mlcp data.in_chans=3
microfm-features ckpt=results/seg/RUN/ckpts/best.ckpt data=folder data.root=/data/bbbc039
microfm-features backbone=vit_test data=synthetic extract.layers=[1,2] extract.max_images=64
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from microfm.cli import user_errors
from microfm.run.config import config_dir


@hydra.main(config_path=str(config_dir()), config_name="features", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from microfm.run.features import features  # heavy imports after argument parsing

    with user_errors("microfm-features"):
        metrics = features(cfg)
    print(f"{metrics['features/images']} images -> {cfg.run_dir}/features.npz")


def main() -> None:
    from microfm.distributed.resolvers import pin_run_stamp

    pin_run_stamp()
    _main()


if __name__ == "__main__":
    main()
