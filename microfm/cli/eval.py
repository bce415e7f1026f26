"""``microfm-eval``: score a checkpoint on a dataset split through the full prediction path.

microfm-eval ckpt=RUN/ckpts/best.ckpt
microfm-eval ckpt=RUN/ckpts/best.ckpt threshold_search=true
microfm-eval ckpt=best.ckpt data=folder data.root=/data/bbbc039 split=test output=eval_out
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from microfm.cli import user_errors
from microfm.run.config import config_dir

log = logging.getLogger("microfm")


def eval_dir(ckpt: str, output: str | None = None) -> str:
    """``output``, or the run folder of a checkpoint (``RUN/ckpts/x.ckpt`` -> ``RUN``)."""
    if output not in (None, "", "None"):
        return str(output)
    path = Path(str(ckpt)).expanduser()
    parent = path.parent
    return str(parent.parent if parent.name == "ckpts" else parent)


if not OmegaConf.has_resolver("microfm.eval_dir"):
    OmegaConf.register_new_resolver("microfm.eval_dir", eval_dir)


def run_eval(cfg: DictConfig) -> dict:
    """Evaluate from the composed config; returns the metrics written."""
    from microfm.inference import Predictor, load_model
    from microfm.inference.checkpoint import read_checkpoint
    from microfm.inference.evaluate import eval_datamodule, evaluate, search_thresholds
    from microfm.inference.writers import write_rows
    from microfm.utils.io import update_json

    output = Path(eval_dir(cfg.ckpt, cfg.output))
    ckpt = read_checkpoint(cfg.ckpt)
    model = load_model(ckpt)
    model.source = str(cfg.ckpt)
    dm = eval_datamodule(ckpt["microfm"]["config"], cfg.get("data"))
    dm.setup()
    predictor = Predictor(
        model,
        tile_size=cfg.tile_size,
        overlap=float(cfg.overlap),
        batch_size=int(cfg.batch_size),
        head_batch=cfg.head_batch,
        tta=bool(cfg.tta),
        device=cfg.device,
        channels=None,  # the DataModule already selected the channels
    )
    for split in [cfg.split] + ([cfg.val_split] if cfg.threshold_search else []):
        if split not in dm.datasets:
            from microfm.errors import DataError

            raise DataError(f"split={split}: the data have no such split ({sorted(dm.datasets)})")
    progress = bool(cfg.progress)
    results: dict = {}
    if cfg.threshold_search:
        grids = {}
        for name, task in model.tasks.items():
            if getattr(task, "label_key", "") == "instances":
                grid = cfg.grid if cfg.grid is not None else task.search
                if grid is None:
                    from microfm.errors import ConfigError

                    raise ConfigError(
                        "threshold_search=true but grid is null and the checkpoint's task has "
                        "no threshold_search grid: give grid={cells_max:[...],cell_fill:[...]}"
                    )
                grids[name] = OmegaConf.to_container(grid) if OmegaConf.is_config(grid) else grid
        chosen = search_thresholds(
            predictor, dm.datasets[cfg.val_split], grids, cfg.val_split, progress
        )
        for name, values in chosen.items():
            results.update({f"eval/{name}/{k}": v for k, v in values.items()})
    stage = "eval" if cfg.split == "test" else f"eval_{cfg.split}"
    metrics, rows = evaluate(predictor, dm.datasets[cfg.split], cfg.split, stage, progress)
    for name, task in model.tasks.items():
        if hasattr(task, "postprocess") and hasattr(task, "thresholds"):
            metrics[f"{stage}/{name}/cells_max"] = task.postprocess.cells_max
            metrics[f"{stage}/{name}/cell_fill"] = task.postprocess.cell_fill
    results.update(metrics)
    results[f"{stage}_info"] = {
        "ckpt": str(cfg.ckpt),
        "split": str(cfg.split),
        "data": type(dm).__name__,
        "root": str(getattr(dm, "root", "")),
        "tile_size": predictor.tile_size,
        "overlap": float(cfg.overlap),
        "tta": bool(cfg.tta),
        "threshold_search": bool(cfg.threshold_search),
    }
    update_json(output / "metrics.json", results)
    write_rows(output / f"eval_{cfg.split}_per_image.csv", rows)
    for key in sorted(metrics):
        log.info("%s = %.4f", key, metrics[key])
    return results


@hydra.main(config_path=str(config_dir()), config_name="eval", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with user_errors("microfm-eval"):
        run_eval(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
