"""``microfm-summarize``: one CSV row per run and summary plots over a results folder.

microfm-summarize results_root=results
microfm-summarize results_root=results metrics=[test/cellseg/op_csb,eval/cellseg/seg]
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from microfm.cli import user_errors
from microfm.run.config import config_dir

log = logging.getLogger("microfm")


def summary_dir(results_root: str, output: str | None = None) -> str:
    if output not in (None, "", "None"):
        return str(output)
    return str(Path(str(results_root)).expanduser() / "summary")


if not OmegaConf.has_resolver("microfm.summary_dir"):
    OmegaConf.register_new_resolver("microfm.summary_dir", summary_dir)


@hydra.main(config_path=str(config_dir()), config_name="summarize", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from microfm.inference.summarize import summarize

    metrics = list(cfg.metrics) if OmegaConf.is_list(cfg.metrics) else cfg.metrics
    if isinstance(metrics, str):
        metrics = [metrics]
    with user_errors("microfm-summarize"):
        rows, plots = summarize(
            cfg.results_root, summary_dir(cfg.results_root, cfg.output), metrics
        )
    log.info(
        "%d run(s) -> %s; %d plot(s)",
        len(rows),
        summary_dir(cfg.results_root, cfg.output),
        len(plots),
    )


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
