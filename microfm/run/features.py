"""``features(cfg)``: the features of a dataset for ``microfm-features`` and
``microfm-analyze``, from a named backbone or a microfm checkpoint, through the cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from microfm.analysis.cache import FeatureCache, cache_key, data_fingerprint, file_stamp
from microfm.analysis.featureset import FeatureSet
from microfm.errors import ConfigError, WeightsError
from microfm.run.build import build
from microfm.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# data settings that change how images are loaded, not what they are
_LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "cache", "cache_dir", "targets")
# extraction settings that do not change the features
_RUN_KEYS = ("batch_size", "num_workers", "device", "cache", "cache_dir", "progress")
_GENERIC = {"raw", "images", "image", "img", "data", "train", "val", "test", "."}
SPLITS = ("train", "val", "test")


def _checkpoint_config(path: str) -> dict:
    """The run config stored in a microfm checkpoint (read without unpickling code)."""
    from microfm.backbones.weights import read_microfm_config

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"ckpt: file not found: {p}")
    return read_microfm_config(p)["config"]


def dataset_name(cfg: DictConfig) -> str:
    """``dataset_name``, else the data root's folder name (skipping generic names such as
    ``raw`` or ``images``), else the DataModule's name."""
    if cfg.get("dataset_name"):
        return str(cfg.dataset_name)
    root = cfg.data.get("root") if "root" in cfg.data else None
    if root is not None and not OmegaConf.is_missing(cfg.data, "root"):
        first = str(root[0] if OmegaConf.is_list(root) else root)
        parts = [p for p in Path(first).parts if not any(c in p for c in "*?[")]
        for part in reversed(parts):
            if part.lower() not in _GENERIC:
                return part
    return str(cfg.data.get("_target_", "data")).rsplit(".", 1)[-1].removesuffix("DataModule")


def check_features_config(cfg: DictConfig) -> None:
    """Fail fast on settings that would only fail after loading the model and the data."""
    if cfg.get("ckpt"):
        stored = _checkpoint_config(str(cfg.ckpt))
        with open_dict(cfg):  # the checkpoint's backbone replaces the backbone group
            cfg.backbone = OmegaConf.create(stored["backbone"])
        if int(cfg.backbone.in_chans) != int(cfg.data.in_chans):
            raise ConfigError(
                f"ckpt: the checkpoint's backbone takes {cfg.backbone.in_chans} channel(s) but "
                f"data.in_chans={cfg.data.in_chans}"
            )
    ext = cfg.extract
    # `in cfg.data` is False for a missing (???) value: ask the keys
    if "root" in cfg.data.keys() and OmegaConf.is_missing(cfg.data, "root"):  # noqa: SIM118
        raise ConfigError(
            "data.root is not set: give the dataset location, e.g. data.root=/path/to/dataset"
        )
    weights = cfg.backbone.get("weights")
    named = str(weights).startswith(("http://", "https://")) or str(weights) == "official"
    if weights and not named and not Path(str(weights)).expanduser().is_file():
        raise ConfigError(f"backbone.weights: file not found: {weights}")
    patch = int(cfg.backbone.patch_size)
    size = cfg.data.get("image_size")
    if ext.image_size is None and size is not None and int(size) % patch:
        raise ConfigError(
            f"data.image_size={size} is not a multiple of backbone.patch_size={patch}: set "
            f"data.image_size={max(patch, int(size) // patch * patch)} or extract.image_size"
        )
    unknown = [s for s in ext.splits if s not in SPLITS]
    if unknown or not ext.splits:
        raise ConfigError(f"extract.splits must be a non-empty subset of {SPLITS}, got {unknown}")
    for key in ("image_size", "tile_size"):
        size = ext.get(key)
        if size is not None and (int(size) < patch or int(size) % patch):
            raise ConfigError(
                f"extract.{key}={size} is not a multiple of backbone.patch_size={patch}"
            )
    if ext.max_images is not None and int(ext.max_images) < 1:
        raise ConfigError(f"extract.max_images must be >= 1 or null, got {ext.max_images}")


def features_key(cfg: DictConfig) -> tuple[str, dict]:
    """The cache key of the features ``cfg`` describes, and what it hashes."""
    from microfm.analysis.features import autocast_dtype, resolve_device

    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    weights = backbone.pop("weights", None)
    data = {
        k: v
        for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
        if k not in _LOADER_KEYS
    }
    ext = {k: v for k, v in OmegaConf.to_container(cfg.extract, resolve=True).items()}
    device = resolve_device(str(ext["device"]))
    ext["precision"] = str(autocast_dtype(str(ext["precision"]), device))
    ext["device_type"] = device.type
    for k in _RUN_KEYS:
        ext.pop(k, None)
    parts = {
        "backbone": backbone,
        "weights": file_stamp(weights),
        "ckpt": file_stamp(cfg.ckpt) if cfg.get("ckpt") else None,
        "data": data,
        "data_files": data_fingerprint(data.get("root")),
        "extract": ext,
        "seed": int(cfg.seed),
    }
    return cache_key(parts), parts


def build_datamodule(cfg: DictConfig):
    """The DataModule for extraction: no augmentation, no targets, whole images."""
    extra = {"augment": None, "targets": []}
    if cfg.extract.whole_images and "crop_size" in cfg.data:
        extra["crop_size"] = None
    dm = build(cfg.data, "data", **extra)
    dm.setup()
    return dm


def build_source(cfg: DictConfig):
    """The backbone (from ``ckpt`` when given) and a description of it."""
    if cfg.get("ckpt"):
        from microfm.analysis.features import backbone_from_checkpoint

        backbone, info = backbone_from_checkpoint(str(cfg.ckpt))
        return backbone, {"ckpt": str(cfg.ckpt), "finetune": info["finetune"]}
    backbone = build(cfg.backbone, "backbone")
    return backbone, {"weights": cfg.backbone.get("weights"), "pretrained": backbone.pretrained}


def compute_features(cfg: DictConfig) -> tuple[FeatureSet, dict]:
    """The features of ``cfg`` (from the cache when there), and facts about the run
    (``cached``, ``seconds``, ``key``)."""
    check_features_config(cfg)
    ext = cfg.extract
    key, parts = features_key(cfg)
    cache = FeatureCache(ext.cache_dir if ext.cache else None)
    start = time.perf_counter()
    fs = cache.get(key)
    if fs is not None:
        log.info("features: %d images from the cache (%s)", len(fs), cache.path(key))
        return fs, {"cached": True, "seconds": time.perf_counter() - start, "key": key}
    backbone, source = build_source(cfg)
    dm = build_datamodule(cfg)
    datasets = {s: dm.datasets[s] for s in ext.splits if s in dm.datasets}
    if not datasets:
        raise ConfigError(f"extract.splits={list(ext.splits)}: the dataset has none of them")
    from microfm.analysis.features import extract_features  # torch: only when extracting
    from microfm.data.datamodule import resolve_num_workers

    name = dataset_name(cfg)
    fs = extract_features(
        backbone,
        datasets,
        batch_size=int(ext.batch_size),
        num_workers=resolve_num_workers(ext.num_workers),
        device=str(ext.device),
        precision=str(ext.precision),
        layers=[int(i) for i in ext.layers],
        patch_tokens=bool(ext.patch_tokens),
        image_size=ext.image_size,
        tile_size=ext.tile_size,
        max_images=ext.max_images,
        seed=int(cfg.seed),
        progress=bool(ext.progress),
        name=name,
        class_names=list(getattr(dm, "class_names", None) or []),
        domain_names=list(getattr(dm, "domain_names", None) or []),
    )
    seconds = time.perf_counter() - start
    fs.meta = {
        "name": name,
        "backbone": str(cfg.backbone.name),
        **source,
        "key": key,
        "extract": parts["extract"],
        "data": parts["data"],
    }
    cache.put(key, fs)
    log.info("features: %d images in %.1f s (%.1f images/s)", len(fs), seconds, len(fs) / seconds)
    return fs, {"cached": False, "seconds": seconds, "key": key}


def dataset_images(cfg: DictConfig, fs: FeatureSet) -> Callable[[int], np.ndarray | None]:
    """Image ``i`` of ``fs`` for figures, read from its dataset (built on first use) and
    prepared like the extraction (resize, tile)."""
    from microfm.analysis.images import ImageSource

    state: dict = {}

    def load(split: str, index: int) -> np.ndarray:
        if "dm" not in state:
            state["dm"] = build_datamodule(cfg)
        return state["dm"].datasets[split][index]["image"].numpy()

    return ImageSource(fs, load, cfg.extract.image_size, cfg.extract.tile_size)


def write_run_files(run_dir: Path, cfg: DictConfig) -> None:
    from microfm.run.info import write_run_info

    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config_used.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_run_info(run_dir)


def features(cfg: DictConfig) -> dict:
    """``microfm-features``: write ``<run_dir>/features.npz`` (through the cache) and the
    run files; returns the run's metrics (images, seconds, cached)."""
    from microfm.utils.io import update_json

    fs, info = compute_features(cfg)
    run_dir = Path(cfg.run_dir)
    write_run_files(run_dir, cfg)
    fs.save(run_dir / "features.npz")
    metrics = {
        "features/images": len(fs),
        "features/seconds": round(info["seconds"], 3),
        "features/cached": info["cached"],
        "features/key": info["key"],
    }
    log.info("features: %s", run_dir / "features.npz")
    return update_json(run_dir / "metrics.json", metrics)
