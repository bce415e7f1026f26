"""Backbones: timm ViTs behind microfm's uniform interface."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import timm

from microfm.backbones.channels import CHANNEL_MODES, ChannelAdapter
from microfm.backbones.checkpointing import checkpointing_mode, enable_grad_checkpointing
from microfm.backbones.drop_path import use_sample_drop_path
from microfm.backbones.official import use_official_semantics
from microfm.backbones.registry import BACKBONES, BackboneSpec, get_spec
from microfm.backbones.vit import Backbone
from microfm.backbones.weights import load_into, resolve_weights
from microfm.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "backbone_from_checkpoint", "build_backbone"]

NORM_STATS = ("pretrained", "dataset")


def _per_channel(values: Sequence[float], in_chans: int, key: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if len(values) == 3:  # RGB statistics for a microscopy channel count: use their average
        return (sum(values) / 3.0,) * in_chans
    raise ConfigError(f"backbone.{key} has {len(values)} values but data has {in_chans} channels")


def build_backbone(
    name: str,
    weights: str | None = None,
    *,
    in_chans: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: bool = True,
    norm_stats: str = "pretrained",
    intermediate_layers: Sequence[int] | None = None,
    grad_checkpointing: bool | str = False,
    drop_path_rate: float = 0.0,
    require_pretrained: bool = False,
    channel_mode: str = "auto",
    patch_multiple: str | None = None,
    sha256: str | None = None,
    **overrides,
) -> Backbone:
    """Build a named backbone, optionally loading weights.

    Args:
        name: a key of :data:`BACKBONES` (``dinov3_vits16``, ``dinov2_vitb14_reg``...).
        weights: a checkpoint path (official Meta ``.pth``, timm/HF ``.safetensors``, MAE,
            STED-FM, DINO teacher or microfm checkpoint), ``official`` (download the public
            release once) or an ``http(s)://`` URL (downloaded once into the cache). None:
            ``$MICROFM_WEIGHTS`` and the torch hub / Hugging Face caches are searched, then
            the backbone starts from random weights with a warning.
        in_chans: channels of the data; RGB weights are adapted (``channel_mode``).
        mean, std: input normalisation; defaults to the pretraining statistics (averaged over
            RGB for other channel counts).
        normalize: apply mean/std inside the backbone.
        norm_stats: ``pretrained`` (``mean``/``std``) or ``dataset`` (the trainer replaces
            them with per-channel statistics of the training images).
        intermediate_layers: default blocks for dense heads.
        grad_checkpointing: recompute block activations in the backward pass to save memory:
            ``False``; ``True`` or ``"selective"`` (keep the residual-stream products, see
            :mod:`microfm.backbones.checkpointing`); ``"full"`` (recompute whole blocks).
        drop_path_rate: stochastic depth rate.
        require_pretrained: raise instead of warning when no weights are found.
        channel_mode: how RGB weights serve ``in_chans`` channels (see
            :mod:`microfm.backbones.channels`).
        patch_multiple: ``None`` (input sizes must be multiples of the patch size), ``resize``
            or ``pad``.
        sha256: expected SHA-256 of a downloaded file.
        **overrides: architecture arguments passed to ``timm.create_model`` (e.g.
            ``depth``); declared values equal to the spec are accepted.

    Returns:
        A :class:`Backbone`.

    Example:
        >>> bb = build_backbone("vit_test", in_chans=2)
        >>> bb.forward_features(torch.rand(1, 2, 32, 32))["patch"].shape
        torch.Size([1, 64, 4, 4])
    """
    try:
        spec: BackboneSpec = get_spec(name)
    except KeyError as exc:
        raise ConfigError(f"backbone.name: {exc.args[0]}") from None
    if channel_mode not in CHANNEL_MODES:
        raise ConfigError(
            f"backbone.channel_mode must be one of {CHANNEL_MODES}, got {channel_mode!r}"
        )
    if norm_stats not in NORM_STATS:
        raise ConfigError(f"backbone.norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    licence = overrides.pop("licence", spec.licence)
    # Declared numbers from the config: pass them on only when they change the architecture.
    for key in ("patch_size", "embed_dim", "depth"):
        if key in overrides and overrides[key] == getattr(spec, key):
            overrides.pop(key)
    adapter = None
    model_chans = in_chans
    if channel_mode == "adapter" and in_chans != spec.in_chans:
        adapter = ChannelAdapter(in_chans, spec.in_chans)
        model_chans = spec.in_chans
    kwargs = {**spec.timm_kwargs, **overrides}
    model = timm.create_model(
        spec.timm_name,
        pretrained=False,
        num_classes=0,
        in_chans=model_chans,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    use_official_semantics(model, dinov2_pos_embed="dinov2" in spec.timm_name)
    use_sample_drop_path(model)  # per-sample choices under DDP (microfm.utils.seeding)
    path = resolve_weights(name, spec, weights, sha256)
    stored_norm: dict = {}
    weights_format = None
    if path is not None:
        weights_format, stored_norm = load_into(
            model, path, channel_mode=channel_mode, channel_adapter=adapter
        )
    elif require_pretrained:
        raise WeightsError(
            f"backbone.require_pretrained=true but no weights were found for {name}: set "
            f"backbone.weights=/path/to/checkpoint.pth (from {spec.source or 'its authors'})"
        )
    else:
        log.warning(
            "backbone %s has RANDOM weights. To use pretrained weights download the checkpoint "
            "(%s) and pass backbone.weights=/path/to/checkpoint.pth, or put it in the folder "
            "named by $MICROFM_WEIGHTS",
            name,
            spec.source or "official release",
        )
    checkpointing = checkpointing_mode(grad_checkpointing)
    if checkpointing != "off":
        enable_grad_checkpointing(model, keep_residual=checkpointing == "selective")
    patch_size = int(model.patch_embed.patch_size[0])
    default_mean = _per_channel(spec.mean, model_chans, "mean")
    default_std = _per_channel(spec.std, model_chans, "std")
    backbone = Backbone(
        model,
        name=name,
        patch_size=patch_size,
        intermediate_layers=tuple(intermediate_layers or spec.intermediate_layers),
        mean=_per_channel(mean, model_chans, "mean") if mean is not None else default_mean,
        std=_per_channel(std, model_chans, "std") if std is not None else default_std,
        normalize=normalize,
        licence=licence,
        pretrained=path is not None,
        channel_adapter=adapter,
        patch_multiple=patch_multiple,
        norm_stats=norm_stats,
        weights_path=str(path) if path is not None else None,
        weights_format=weights_format,
    )
    # a microfm checkpoint's own input statistics, unless the caller gives them
    same_shape = stored_norm and stored_norm["mean"].shape == backbone.mean.shape
    if same_shape and mean is None and std is None:
        backbone.set_normalization(stored_norm["mean"].flatten(), stored_norm["std"].flatten())
    return backbone


def backbone_from_checkpoint(path: str | os.PathLike, **overrides) -> tuple[Backbone, dict]:
    """The backbone of a checkpoint written by ``microfm-train`` (supervised or SSL), rebuilt
    from the config stored in it, with its weights (LoRA/DoRA adapters merged in), channel
    adapter and input normalisation; read without unpickling code.

    Args:
        path: ``<run>/ckpts/best.ckpt`` or another microfm checkpoint.
        **overrides: backbone arguments that replace the stored ones (the input mean/std
            come from the checkpoint's own buffers).

    Returns:
        ``(backbone, meta)``: the backbone in eval mode and the checkpoint's ``microfm``
        metadata (``config``: the resolved run config; ``meta``: e.g. ``finetune_applied``).

    Example:
        >>> bb, meta = backbone_from_checkpoint("results/seg/run/ckpts/best.ckpt")  # doctest: +SKIP
        >>> meta["meta"]["finetune_applied"]  # doctest: +SKIP
        'lora'
    """
    from microfm.backbones.weights import read_microfm_config

    meta = read_microfm_config(path)
    args = {
        k: v
        for k, v in meta["config"]["backbone"].items()
        if not k.startswith("_")
        and k not in ("weights", "sha256", "require_pretrained", "mean", "std")
    }
    args.update(overrides)
    name = args.pop("name")
    backbone = build_backbone(name, weights=str(path), **args)
    return backbone.eval(), meta
