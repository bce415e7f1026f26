"""Rebuild a trained model from a microfm checkpoint alone (its stored config and weights).

A checkpoint written by ``microfm-train`` holds the resolved run configuration under
``checkpoint["microfm"]["config"]``, the finetune mode actually applied under
``checkpoint["microfm"]["meta"]``, and, for file-backed datasets, the input preparation of the
training data (normalisation with fitted dataset statistics, channel selection) in the
DataModule's state. :func:`load_model` turns these into an :class:`InferenceModel`: a plain
``nn.Module`` (no Lightning) computing exactly ``SupervisedModule.forward``, with LoRA/DoRA
adapters merged into the backbone weights.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from microfm.errors import WeightsError
from microfm.tasks.base import Task
from microfm.transforms.intensity import Normalizer

log = logging.getLogger(__name__)

# state-dict prefixes of the SupervisedModule that inference needs (weighting and metric states
# are training-only)
_KEEP = ("backbone.", "tasks.")


class InferenceModel(nn.Module):
    """Backbone + tasks for prediction: ``forward(image)`` -> ``{task: raw output}``.

    The forward pass is the one of :class:`microfm.modules.SupervisedModule`: one backbone
    pass (``forward_dense`` when a task reads intermediate layers), then each task's head.
    Raw outputs are what a sliding window blends (distance maps, logits, log-depth);
    ``task.finalize`` turns a whole-image raw output into results.

    Args:
        backbone: a :class:`microfm.backbones.Backbone` (adapters merged).
        tasks: the tasks, in the order of the training config.
        normalizer: the intensity normalisation of the training data.
        channels: channel indices the training data read from each file (None: all).
        image_size: the training ``data.image_size`` (resize for whole-image classification).
        crop_size: the training crop side (default tile size), if any.
        config: the resolved training config.
        source: where the checkpoint came from (for messages).

    Example:
        >>> from microfm.backbones import build_backbone
        >>> from microfm.heads import ClassificationHead
        >>> from microfm.tasks import ClassifyTask
        >>> bb = build_backbone("vit_test", in_chans=1)
        >>> m = InferenceModel(bb, [ClassifyTask(ClassificationHead(64, 3), 3)], Normalizer())
        >>> m(torch.rand(2, 1, 32, 32))["classify"].shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[Task],
        normalizer: Normalizer,
        channels: Sequence[int] | None = None,
        image_size: int | None = None,
        crop_size: int | None = None,
        config: Mapping[str, Any] | None = None,
        source: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tasks = nn.ModuleDict({t.name: t for t in tasks})
        self.layers = sorted({i for t in tasks for i in (t.layers or ())})
        self.normalizer = normalizer
        self.channels = [int(c) for c in channels] if channels is not None else None
        self.image_size = int(image_size) if image_size else None
        self.crop_size = int(crop_size) if crop_size else None
        self.config = dict(config or {})
        self.source = source

    @property
    def patch_size(self) -> int:
        return int(self.backbone.patch_size)

    @property
    def in_chans(self) -> int:
        return int(self.backbone.in_chans)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def forward(
        self, image: torch.Tensor, head_batch: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Raw outputs of every task for a batch of images.

        Args:
            image: (B, C, H, W) normalised images.
            head_batch: run the heads on at most this many images at a time (the backbone
                always sees the whole batch). On CPU, dense heads at full resolution are
                faster in small groups, whose activations stay in cache, while the backbone's
                matrix products gain from the whole batch; None: the whole batch.
        """
        feats = self.features(image)
        if head_batch is None:  # no Python loop over the batch: ONNX keeps a dynamic batch
            return self.heads(feats, image)
        groups = [
            self.heads(_rows(feats, start, int(head_batch)), image[start : start + head_batch])
            for start in range(0, image.shape[0], int(head_batch))
        ]
        return {name: torch.cat([g[name] for g in groups]) for name in self.tasks}

    def features(self, image: torch.Tensor) -> dict:
        """The one backbone pass: ``cls``, ``patch`` and, when a task reads them, ``layers``
        (block index -> map)."""
        if not self.layers:
            return dict(self.backbone.forward_features(image))
        feats = self.backbone.forward_dense(image, indices=self.layers)
        return {**feats, "layers": dict(zip(self.layers, feats["layers"]))}

    def heads(self, feats: dict, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every task's raw output from :meth:`features` of ``image``."""
        out = {}
        for name, task in self.tasks.items():
            task_feats = dict(feats)
            if task.layers is not None:
                task_feats["layers"] = [feats["layers"][i] for i in task.layers]
            out[name] = task(task_feats, image)
        return out


def _rows(feats: dict, start: int, count: int) -> dict:
    """The features of images ``start:start + count`` of a batch."""
    rows = slice(start, start + count)
    return {
        k: {i: t[rows] for i, t in v.items()} if k == "layers" else v[rows]
        for k, v in feats.items()
    }


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict of a microfm checkpoint; errors name the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"ckpt: file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"{path}: cannot read checkpoint safely (weights_only=True; microfm never unpickles "
            f"code from a checkpoint): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise WeightsError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    if not isinstance(ckpt.get("microfm"), Mapping) or "config" not in ckpt["microfm"]:
        raise WeightsError(
            f"{path}: holds no microfm config (checkpoint['microfm']['config']); only "
            "checkpoints written by microfm-train can be rebuilt for prediction"
        )
    return dict(ckpt)


def data_state(ckpt: Mapping[str, Any]) -> dict[str, Any] | None:
    """The input-preparation state a file-backed DataModule saved in the checkpoint
    (``normalizer``, ``channels``, ...), or None (e.g. synthetic data)."""
    for value in ckpt.values():
        if isinstance(value, Mapping) and isinstance(value.get("microfm_data"), Mapping):
            return dict(value["microfm_data"])
    return None


def training_normalizer(config: Mapping[str, Any], state: Mapping[str, Any] | None) -> Normalizer:
    """The normalisation the training data used: the checkpointed state (with fitted dataset
    statistics) when there is one, else ``data.normalize`` of the config."""
    if state is not None and state.get("normalizer"):
        return Normalizer.from_state(state["normalizer"])
    settings = dict((config.get("data") or {}).get("normalize") or {})
    return Normalizer(**settings)


@contextmanager
def _quiet(name: str):
    """Silence a logger (the random-weights warning of a backbone the checkpoint overwrites)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_inference_model(
    config: Mapping[str, Any], meta: Mapping[str, Any] | None = None
) -> tuple[nn.Module, list[Task]]:
    """Backbone (adapted like in training, weights not loaded) and tasks from a resolved
    training config."""
    from omegaconf import OmegaConf

    from microfm.finetune import Finetune
    from microfm.run.build import build
    from microfm.run.config import register_resolvers
    from microfm.run.tasks import build_tasks

    register_resolvers()
    cfg = OmegaConf.create(dict(config))
    tasks, _ = build_tasks(cfg.task)
    bb_node = OmegaConf.merge(
        cfg.backbone, {"weights": None, "require_pretrained": False, "grad_checkpointing": False}
    )
    with _quiet("microfm.backbones"):
        backbone = build(bb_node, "backbone")
    mode = (meta or {}).get("finetune_applied") or cfg.finetune.get("mode", "full")
    if mode in ("lora", "dora"):
        lora = OmegaConf.to_container(cfg.finetune.get("lora") or {}, resolve=True)
        Finetune(str(mode), str(mode), lora, allow_random=True).apply(backbone)
    return backbone, tasks


def load_model(
    ckpt: str | os.PathLike | Mapping[str, Any], device: str | torch.device = "cpu"
) -> InferenceModel:
    """Rebuild the model of a microfm checkpoint for prediction, on ``device``.

    The architecture comes from the config stored in the checkpoint (no config files or
    pretrained weights are needed); LoRA/DoRA adapters are merged into the backbone; the
    model is in eval mode.

    Args:
        ckpt: path of a checkpoint written by ``microfm-train`` (or its loaded dict).
        device: ``cpu``, ``cuda``, ``cuda:1``...

    Example:
        >>> model = load_model("results/seg/run/ckpts/best.ckpt")  # doctest: +SKIP
        >>> model.task_names, model.patch_size  # doctest: +SKIP
        (['cellseg'], 16)
    """
    from microfm.finetune.adapt import merge_adapters

    source = str(ckpt) if not isinstance(ckpt, Mapping) else "<checkpoint dict>"
    ck = read_checkpoint(ckpt) if not isinstance(ckpt, Mapping) else dict(ckpt)
    config = dict(ck["microfm"]["config"])
    meta = dict(ck["microfm"].get("meta") or {})
    try:
        backbone, tasks = build_inference_model(config, meta)
    except Exception as exc:
        raise WeightsError(
            f"{source}: cannot rebuild the model from the stored config "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    state = data_state(ck)
    data_cfg = dict(config.get("data") or {})
    channels = (state or {}).get("channels", data_cfg.get("channels"))
    crop = data_cfg.get("crop_size")
    if crop is None and str(data_cfg.get("_target_", "")).endswith("SyntheticDataModule"):
        crop = data_cfg.get("image_size")  # synthetic images are generated at this size
    model = InferenceModel(
        backbone,
        tasks,
        training_normalizer(config, state),
        channels=channels,
        image_size=data_cfg.get("image_size"),
        crop_size=crop,
        config=config,
        source=source,
    )
    weights = {k: v for k, v in ck["state_dict"].items() if k.startswith(_KEEP)}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{source}: the weights do not fit the model rebuilt from its config "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]})"
        )
    merge_adapters(model.backbone.model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval().to(device)
