"""Gather the results of many runs: one CSV row per run (backbone, finetune mode, task,
dataset, every metric of its ``metrics.json``) and summary plots of a metric by backbone ×
finetune mode for each dataset."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from microfm.errors import DataError
from microfm.inference.writers import write_rows
from microfm.utils.figures import _pyplot, save_figure

log = logging.getLogger(__name__)
KEYS = ("run", "task", "dataset", "backbone", "finetune", "seed")


def dataset_name(data: Mapping[str, Any]) -> str:
    """A short name of a run's dataset: the folder of ``data.root``, else the DataModule class
    (``SyntheticDataModule`` -> ``synthetic``)."""
    root = data.get("root")
    if root:
        return Path(str(root)).name or str(root)
    target = str(data.get("_target_", "unknown")).rsplit(".", 1)[-1]
    return target.removesuffix("DataModule").lower() or "unknown"


def _config(run: Path) -> dict[str, Any]:
    path = run / "config_used.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        return dict(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    except Exception as exc:  # a damaged file: the run still counts, without its config
        log.warning("%s: cannot read (%s)", path, exc)
        return {}


def run_row(metrics_path: Path, root: Path) -> dict[str, object]:
    """One row: what the run was (from ``config_used.yaml``) and its scalar metrics."""
    run = metrics_path.parent
    cfg = _config(run)
    task = cfg.get("task") or {}
    tasks = task.get("tasks") if isinstance(task.get("tasks"), list) else None
    row: dict[str, object] = {
        "run": str(run.relative_to(root)) if run != root else ".",
        "task": "+".join(map(str, tasks)) if tasks else task.get("name", ""),
        "dataset": dataset_name(cfg.get("data") or {}),
        "backbone": (cfg.get("backbone") or {}).get("name", ""),
        "finetune": (cfg.get("finetune") or {}).get("name", ""),
        "seed": cfg.get("seed", ""),
    }
    monitors = [task.get("monitor")] if task.get("monitor") else []
    monitors += [s.get("monitor") for s in (task.get("specs") or {}).values() if tasks]
    row["_monitors"] = [m for m in monitors if m]
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{metrics_path}: cannot read ({exc})") from None
    for key, value in sorted(metrics.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = float(value)
    return row


def default_metrics(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Each task's monitored metric at test and eval (``val/cellseg/op_csb`` ->
    ``test/cellseg/op_csb``, ``eval/cellseg/op_csb``) that some run has."""
    out: list[str] = []
    for row in rows:
        for monitor in row.get("_monitors", []):
            stage, _, rest = str(monitor).partition("/")
            for prefix in ("test", "eval"):
                key = f"{prefix}/{rest}" if stage == "val" else str(monitor)
                if key not in out and any(key in r for r in rows):
                    out.append(key)
    return out


def plot_metric(rows: Sequence[Mapping[str, object]], metric: str, path: Path) -> bool:
    """Bars of ``metric`` (mean ± std over runs) by backbone × finetune mode, one panel per
    dataset; False when no run has the metric."""
    have = [r for r in rows if isinstance(r.get(metric), float) and np.isfinite(r[metric])]
    if not have:
        return False
    plt = _pyplot()
    datasets = sorted({str(r["dataset"]) for r in have})
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = [r for r in have if r["dataset"] == ds]
        backbones = sorted({str(r["backbone"]) for r in sub})
        modes = sorted({str(r["finetune"]) for r in sub})
        width = 0.8 / max(len(modes), 1)
        for j, mode in enumerate(modes):
            means, stds = [], []
            for bb in backbones:
                vals = [
                    float(r[metric]) for r in sub if r["backbone"] == bb and r["finetune"] == mode
                ]
                means.append(np.mean(vals) if vals else np.nan)
                stds.append(np.std(vals) if len(vals) > 1 else 0.0)
            xs = np.arange(len(backbones)) + (j - (len(modes) - 1) / 2) * width
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=mode)
        ax.set_xticks(np.arange(len(backbones)), backbones, rotation=20, fontsize=8)
        ax.set_title(ds, fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(title="finetune", fontsize=7, title_fontsize=7)
    fig.suptitle(f"{metric}: mean ± std over runs", fontsize=9)
    save_figure(fig, path)
    return True


def summarize(
    results_root: str | os.PathLike,
    output: str | os.PathLike | None = None,
    metrics: Sequence[str] | None = None,
) -> tuple[list[dict[str, object]], list[Path]]:
    """Write ``<output>/summary.csv`` (one row per run under ``results_root``) and one plot per
    metric (``<output>/<metric with / as _>.png``); returns the rows and the plots."""
    root = Path(results_root).expanduser()
    if not root.is_dir():
        raise DataError(f"results_root: folder not found: {root}")
    out = Path(output).expanduser() if output else root / "summary"
    paths = sorted(
        p for p in root.rglob("metrics.json") if out not in p.parents and "/." not in str(p)
    )
    if not paths:
        raise DataError(f"results_root: no metrics.json under {root}")
    rows = [run_row(p, root) for p in paths]
    chosen = list(metrics) if metrics else default_metrics(rows)
    plots = []
    for metric in chosen:
        path = out / f"{metric.replace('/', '_')}.png"
        if plot_metric(rows, metric, path):
            plots.append(path)
        else:
            log.warning("no run has the metric %s", metric)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    header = list(KEYS) + sorted({k for r in clean for k in r} - set(KEYS))
    write_rows(out / "summary.csv", [{k: r.get(k, "") for k in header} for r in clean])
    return clean, plots
