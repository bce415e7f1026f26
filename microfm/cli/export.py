"""``microfm-export``: export the model of a checkpoint to ONNX or TorchScript.

microfm-export ckpt=RUN/ckpts/best.ckpt                       # RUN/ckpts/best.onnx
microfm-export ckpt=RUN/ckpts/best.ckpt format=torchscript    # RUN/ckpts/best.torchscript.pt
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from microfm.cli import user_errors
from microfm.run.config import config_dir

log = logging.getLogger("microfm")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def export_path(ckpt: str, output: str | None, fmt: str) -> Path:
    if output not in (None, "", "None"):
        return Path(str(output)).expanduser()
    ckpt_path = Path(str(ckpt)).expanduser()
    return ckpt_path.with_name(ckpt_path.stem + SUFFIX.get(fmt, f".{fmt}"))


def _export_dir(ckpt: str, output: str | None = None) -> str:
    return str(export_path(ckpt, output, "onnx").parent)


if not OmegaConf.has_resolver("microfm.export_dir"):
    OmegaConf.register_new_resolver("microfm.export_dir", _export_dir)


def run_export(cfg: DictConfig) -> dict:
    from microfm.inference import load_model
    from microfm.inference.export import FORMATS, export

    fmt = str(cfg.format)
    if fmt not in FORMATS:
        from microfm.errors import ConfigError

        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    path = export_path(cfg.ckpt, cfg.output, fmt)
    model = load_model(str(cfg.ckpt), device="cpu")
    report = export(model, path, fmt, check=bool(cfg.check), opset=cfg.opset)
    diff = report.get("max_abs_diff")
    log.info(
        "exported %s to %s%s",
        fmt,
        path,
        f" (parity: max abs diff {diff:.2e} over shapes {report['shapes']})"
        if diff is not None
        else "",
    )
    return report


@hydra.main(config_path=str(config_dir()), config_name="export", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    with user_errors("microfm-export"):
        run_export(cfg)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
