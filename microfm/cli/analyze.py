"""``microfm-analyze``: one analysis of frozen features; metrics into ``metrics.json``, figures
into ``figs/``.

microfm-analyze analysis=knn features=results/features/RUN/features.npz
microfm-analyze analysis=umap backbone=dinov2_vits14 data=classification data.root=/data/mlcp
microfm-analyze analysis=frechet features=[em/features.npz,fluo/features.npz]
microfm-analyze analysis=frechet ckpt=results/seg/RUN/ckpts/best.ckpt data=em_composed ...
microfm-analyze -m analysis=pca,umap,knn features=...    # several analyses
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from microfm.cli import user_errors
from microfm.run.config import config_dir


@hydra.main(config_path=str(config_dir()), config_name="analyze", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from microfm.run.analyze import analyze  # heavy imports after argument parsing

    with user_errors("microfm-analyze", multirun=True):
        metrics = analyze(cfg)
    prefix = f"{cfg.analysis.name}/"
    for key, value in sorted(metrics.items()):
        if key.startswith(prefix):
            print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"results: {cfg.run_dir}")


def main() -> None:
    from microfm.distributed.resolvers import pin_run_stamp

    pin_run_stamp()
    _main()


if __name__ == "__main__":
    main()
