"""``analyze(cfg)``: one analysis of features given as files or extracted (cached) from a
backbone and a dataset; metrics into ``<run_dir>/metrics.json``, figures into ``figs/``."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from microfm.analysis.featureset import FeatureSet, concat, describe
from microfm.errors import ConfigError
from microfm.run.build import build
from microfm.run.features import compute_features, dataset_images, write_run_files
from microfm.utils.io import update_json

log = logging.getLogger(__name__)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if OmegaConf.is_list(value) or isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def load_features(paths: list[str], names: list[str] | None = None) -> FeatureSet:
    """One feature set from ``features.npz`` files; several files become several domains,
    named by ``names`` or by each file's dataset name."""
    sets = [FeatureSet.load(p) for p in paths]
    if len(sets) > 1 and not names:
        names = [str(s.meta.get("name") or Path(p).parent.name) for s, p in zip(sets, paths)]
        if len(set(names)) < len(names):
            names = [f"{n}_{i}" for i, n in enumerate(names)]
    if names and len(names) != len(sets):
        raise ConfigError(f"feature_names has {len(names)} names for {len(sets)} files")
    return concat(sets, names)


def analyze(cfg: DictConfig) -> dict:
    """Run ``cfg.analysis`` and return the run's ``metrics.json`` contents.

    Features come from ``features`` (one or more ``features.npz`` files) or, when that is
    unset, from ``backbone``/``ckpt`` and ``data`` (extracted through the cache, and written
    to ``<run_dir>/features.npz`` so that every reported number can be recomputed from it).
    """
    analysis = build(cfg.analysis, "analysis")
    run_dir = Path(cfg.run_dir)
    paths = _as_list(cfg.get("features"))
    if paths:
        from microfm.analysis.images import ImageSource

        fs = load_features(paths, _as_list(cfg.get("feature_names")) or None)
        images = ImageSource(fs)
        info = {"cached": True}
    else:
        if analysis.needs_patch_tokens:
            with open_dict(cfg):
                cfg.extract.patch_tokens = True
                if cfg.extract.max_images is None:
                    cfg.extract.max_images = int(getattr(analysis, "n_images", 16))
        fs, info = compute_features(cfg)
        images = dataset_images(cfg, fs)
    if analysis.needs_patch_tokens and "patch" not in fs.arrays:
        raise ConfigError(
            f"analysis={analysis.name} needs patch tokens: the features file has none "
            "(extract with extract.patch_tokens=true)"
        )
    log.info("analysis %s on %s", analysis.name, describe(fs))
    write_run_files(run_dir, cfg)
    if not paths:
        fs.save(run_dir / "features.npz")
    figs = run_dir / "figs"
    figs.mkdir(parents=True, exist_ok=True)
    metrics = analysis.run(fs, figs, images)
    for key, value in sorted(metrics.items()):
        log.info("%s: %s", key, f"{value:.4f}" if isinstance(value, float) else value)
    metrics = {
        **metrics,
        "features/images": len(fs),
        "features/cached": bool(info.get("cached")),
        "features/files": paths or [str(run_dir / "features.npz")],
    }
    return update_json(run_dir / "metrics.json", metrics)
