"""Feature extraction: every image of a dataset through a backbone, into a :class:`FeatureSet`.

Loading runs in DataLoader workers and device-to-host copies in a background thread, so the
backbone's forward pass is the only thing the loop waits for. Images can be resized
(``image_size``) or cut into non-overlapping tiles (``tile_size``; each tile is one row, its
path ending in ``#<row>,<col>``) before the backbone sees them.

:func:`backbone_from_checkpoint` rebuilds the backbone of a microfm checkpoint (LoRA adapters
merged), so that fine-tuned and self-supervised models are a feature source like any other.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from microfm.analysis.featureset import FeatureSet
from microfm.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)


def backbone_from_checkpoint(path: str | Path):
    """The backbone of a microfm checkpoint (``microfm-train``'s ``ckpts/*.ckpt``), LoRA/DoRA
    adapters merged in (:func:`microfm.backbones.backbone_from_checkpoint`).

    Returns:
        ``(backbone, info)``: the :class:`~microfm.backbones.Backbone` in eval mode and what
        the checkpoint says about it (``config`` of the backbone, ``finetune`` applied).

    Example:
        >>> bb, info = backbone_from_checkpoint("results/seg/run/ckpts/best.ckpt")  # doctest: +SKIP
        >>> info["finetune"]  # doctest: +SKIP
        'lora'
    """
    from microfm.backbones import backbone_from_checkpoint as load

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"ckpt: file not found: {path}")
    backbone, meta = load(path)
    config = meta["config"]
    mode = (meta.get("meta") or {}).get("finetune_applied") or (config.get("finetune") or {}).get(
        "mode", "full"
    )
    return backbone, {"config": config["backbone"], "finetune": mode}


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ConfigError(f"extract.device: unknown device {device!r}") from None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 autocast on CUDA, none (fp32) elsewhere; ``bf16``/``fp16``/``fp32``."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision not in table:
        raise ConfigError(f"extract.precision must be auto, bf16, fp16 or fp32, got {precision!r}")
    return table[precision]


def _base(ds: Dataset) -> Dataset:
    """The dataset under sampling views (domain-balanced draws are not wanted here)."""
    return ds.dataset if hasattr(ds, "draw") and hasattr(ds, "dataset") else ds


def sample_name(ds: Dataset, index: int, fallback: str) -> str:
    """The image file of sample ``index`` (``::member`` in archives, ``@plane`` in stacks)."""
    records = getattr(ds, "records", None)
    if records is None:
        return fallback
    r = records[index]
    name = str(r.image) + (f"::{r.member}" if r.member else "")
    return name + (f"@{r.plane}" if r.plane is not None else "")


def to_tiles(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, int, int]:
    """(B, C, H, W) -> (B * nh * nw, C, tile, tile), row-major tiles of each image (a
    remainder narrower than ``tile`` at the bottom/right is left out)."""
    B, C, H, W = x.shape
    nh, nw = H // tile, W // tile
    if not nh or not nw:
        raise ConfigError(f"extract.tile_size={tile} is larger than the images ({H}x{W})")
    x = x[:, :, : nh * tile, : nw * tile].reshape(B, C, nh, tile, nw, tile)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, tile, tile), nh, nw


def prepare_batch(x: torch.Tensor, image_size: int | None, tile_size: int | None):
    """Resize then tile a batch as the extraction does; returns ``(x, tiles per image, grid)``."""
    if image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True)
    if tile_size:
        x, nh, nw = to_tiles(x, tile_size)
        return x, nh * nw, (nh, nw)
    return x, 1, (1, 1)


@torch.inference_mode()
def embed_batch(
    backbone, x: torch.Tensor, layers: Sequence[int] = (), patch_tokens: bool = False
) -> dict[str, torch.Tensor]:
    """``cls``, ``mean_patch``, ``layer<i>_mean_patch`` and optionally ``patch`` (B, h, w, D)
    of one batch of images."""
    if layers:
        out = backbone.forward_dense(x, list(layers))
    else:
        out = backbone.forward_features(x)
    feats = {"cls": out["cls"], "mean_patch": out["patch"].mean(dim=(2, 3))}
    for i, m in zip(layers, out.get("layers", ())):
        feats[f"layer{i}_mean_patch"] = m.mean(dim=(2, 3))
    if patch_tokens:
        feats["patch"] = out["patch"].permute(0, 2, 3, 1)
    return feats


class _Writer(threading.Thread):
    """Moves each batch's features to host memory off the compute thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.inbox: queue.Queue = queue.Queue(maxsize=8)
        self.parts: dict[str, list[np.ndarray]] = {}
        self.error: BaseException | None = None

    def run(self) -> None:
        while (item := self.inbox.get()) is not None:
            try:
                for k, v in item.items():
                    dtype = torch.float16 if k == "patch" else torch.float32
                    self.parts.setdefault(k, []).append(v.to(dtype).cpu().numpy())
            except BaseException as exc:  # reported to the caller by finish()
                self.error = exc

    def finish(self) -> dict[str, np.ndarray]:
        self.inbox.put(None)
        self.join()
        if self.error is not None:
            raise self.error
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def extract_features(
    backbone,
    datasets: Mapping[str, Dataset] | Dataset,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str | torch.device = "auto",
    precision: str = "auto",
    layers: Sequence[int] = (),
    patch_tokens: bool = False,
    image_size: int | None = None,
    tile_size: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
    name: str = "dataset",
    class_names: Sequence[str] = (),
    domain_names: Sequence[str] = (),
) -> FeatureSet:
    """Features of every image of ``datasets`` (``{split: dataset}``, items with ``image`` and
    optionally ``label`` / ``domain``), split after split in dataset order.

    Args:
        backbone: a :class:`~microfm.backbones.Backbone`.
        datasets: the datasets by split (a single dataset counts as ``train``).
        batch_size, num_workers: the loader.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        precision: ``auto`` (bf16 on CUDA), ``bf16``, ``fp16`` or ``fp32``.
        layers: blocks whose mean patch token is also kept.
        patch_tokens: keep every patch token (``patch``, float16).
        image_size: resize images to this square size first.
        tile_size: cut images into square tiles of this size (one row per tile).
        max_images: at most this many images per split (a seeded random choice).
        seed: seeds that choice.
        progress: show a progress bar.
        name: dataset name for the ``paths`` of in-memory samples.
        class_names, domain_names: names of the ``label`` and ``domain`` values.

    Example:
        >>> from microfm.backbones import build_backbone
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> fs = extract_features(bb, {"test": ds}, batch_size=8)  # doctest: +SKIP
        >>> fs.feature("cls").shape  # doctest: +SKIP
        (32, 64)
    """
    if not isinstance(datasets, Mapping):
        datasets = {"train": datasets}
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    amp = autocast_dtype(precision, dev)
    backbone = backbone.to(dev).eval()
    for size, key in ((image_size, "image_size"), (tile_size, "tile_size")):
        if size and int(size) % backbone.patch_size:
            raise ConfigError(
                f"extract.{key}={size} is not a multiple of the patch size {backbone.patch_size}"
            )
    plan = []
    for split, ds in datasets.items():
        ds = _base(ds)
        idx = np.arange(len(ds))
        if max_images is not None and len(ds) > max_images:
            idx = np.sort(
                np.random.default_rng([seed, len(plan)]).permutation(len(ds))[:max_images]
            )
        plan.append((split, ds, idx))
    total = sum(-(-len(idx) // batch_size) for _, _, idx in plan)
    bar = _progress(total, progress)
    writer = _Writer()
    writer.start()
    paths: list[str] = []
    splits: list[str] = []
    index: list[int] = []
    labels: list[int] = []
    domains: list[int] = []
    has_label = has_domain = True
    try:
        for split, ds, idx in plan:
            loader = DataLoader(
                Subset(ds, idx.tolist()),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                pin_memory=dev.type == "cuda",
                persistent_workers=False,
                prefetch_factor=4 if num_workers else None,
            )
            pos = 0
            for batch in loader:
                x = batch["image"].to(dev, non_blocking=True)
                x, per, (nh, nw) = prepare_batch(x, image_size, tile_size)
                with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                    writer.inbox.put(embed_batch(backbone, x, layers, patch_tokens))
                n = len(batch["image"])
                rows = idx[pos : pos + n]
                pos += n
                for j, i in enumerate(rows):
                    base = sample_name(ds, int(i), f"{name}:{split}:{int(i)}")
                    tiles = (
                        [f"#{a},{b}" for a in range(nh) for b in range(nw)] if tile_size else [""]
                    )
                    paths += [base + t for t in tiles]
                    splits += [split] * per
                    index += [int(i)] * per
                    if "label" in batch:
                        labels += [int(batch["label"][j])] * per
                    if "domain" in batch:
                        domains += [int(batch["domain"][j])] * per
                has_label &= "label" in batch
                has_domain &= "domain" in batch
                bar.update(1)
    finally:
        arrays = writer.finish()
        bar.close()
    return FeatureSet(
        arrays,
        paths,
        splits,
        np.asarray(labels) if has_label and len(labels) == len(paths) else None,
        np.asarray(domains) if has_domain and len(domains) == len(paths) else None,
        class_names=[str(c) for c in class_names],
        domain_names=[str(d) for d in domain_names],
        index=np.asarray(index, dtype=np.int64),
    )


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="features", unit="batch", disable=not enabled, leave=False)
