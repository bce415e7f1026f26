"""``microfm-predict``: predict image files with a trained checkpoint.

microfm-predict ckpt=RUN/ckpts/best.ckpt input=images/ output=predictions/
microfm-predict ckpt=best.ckpt input='plate1/*.tif' output=out tta=true device=cuda
microfm-predict ckpt=best.ckpt input=huge.ome.zarr output=out zarr.block_size=4096
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from microfm.cli import user_errors
from microfm.run.config import config_dir

log = logging.getLogger("microfm")


def predict(cfg: DictConfig) -> int:
    """Run a prediction from the composed config; returns the exit status (1 when some
    inputs failed)."""
    from pathlib import Path

    from microfm.inference import Predictor, load_model
    from microfm.inference.files import find_inputs, predict_files
    from microfm.inference.predictor import resolve_device

    output = Path(str(cfg.output)).expanduser()
    spec = cfg.input
    spec = list(spec) if OmegaConf.is_list(spec) else str(spec)
    inputs = find_inputs(spec, recursive=bool(cfg.recursive), exclude=output)
    device = resolve_device(cfg.device)
    model = load_model(str(cfg.ckpt), device=device)
    channels = cfg.channels
    channels = list(channels) if OmegaConf.is_list(channels) else channels
    if channels not in ("checkpoint", None) and not isinstance(channels, list):
        from microfm.errors import ConfigError

        raise ConfigError(f"channels must be 'checkpoint', null or a list, got {channels!r}")
    predictor = Predictor(
        model,
        tile_size=cfg.tile_size,
        overlap=float(cfg.overlap),
        batch_size=int(cfg.batch_size),
        head_batch=cfg.head_batch,
        tta=bool(cfg.tta),
        device=device,
        channels=channels,
    )
    log.info(
        "%d image(s), tasks %s, tile %d px, overlap %.2f, device %s",
        len(inputs),
        model.task_names,
        predictor.tile_size,
        float(cfg.overlap),
        device,
    )
    outcome = predict_files(
        predictor,
        inputs,
        output,
        overwrite=bool(cfg.overwrite),
        save_raw=bool(cfg.save_raw),
        write_overlay=bool(cfg.overlay),
        cells=bool(cfg.cells),
        axes=cfg.axes,
        zarr_block=int(cfg.zarr.block_size),
        zarr_halo=int(cfg.zarr.halo),
        progress=bool(cfg.progress),
    )
    log.info(
        "predicted %d, skipped %d (outputs exist), failed %d; results in %s",
        len(outcome.done),
        len(outcome.skipped),
        len(outcome.failed),
        output,
    )
    for name, message in outcome.failed:
        print(f"microfm-predict: failed: {name}: {message}", file=sys.stderr)
    return 1 if outcome.failed else 0


@hydra.main(config_path=str(config_dir()), config_name="predict", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with user_errors("microfm-predict"):
        status = predict(cfg)
    if status:
        raise SystemExit(status)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
