"""Backbones: timm ViTs behind microfm's uniform interface."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import timm

from microfm.backbones.registry import BACKBONES, BackboneSpec, get_spec
from microfm.backbones.vit import Backbone
from microfm.backbones.weights import load_into, read_state_dict
from microfm.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

__all__ = ["BACKBONES", "Backbone", "BackboneSpec", "build_backbone"]


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
    intermediate_layers: Sequence[int] | None = None,
    grad_checkpointing: bool = False,
    drop_path_rate: float = 0.0,
    require_pretrained: bool = False,
    **overrides,
) -> Backbone:
    """Build a named backbone, optionally loading weights.

    Args:
        name: a key of :data:`BACKBONES` (``dinov3_vits16``, ``dinov2_vits14``, ``vit_test``...).
        weights: path to a checkpoint (official Meta ``.pth``, timm/HF ``.safetensors`` or a
            microfm checkpoint). None: random initialisation with a warning.
        in_chans: number of input channels; RGB weights are adapted.
        mean, std: input normalisation; defaults to the pretraining statistics (averaged over
            RGB for other channel counts).
        normalize: apply mean/std inside the backbone.
        intermediate_layers: default blocks for dense heads.
        grad_checkpointing: recompute block activations in the backward pass to save memory.
        drop_path_rate: stochastic depth rate.
        require_pretrained: raise instead of warning when no weights are given.
        **overrides: architecture arguments passed to ``timm.create_model`` (e.g.
            ``patch_size``, ``embed_dim``); declared values equal to the spec are accepted.

    Returns:
        A :class:`Backbone`.
    """
    try:
        spec: BackboneSpec = get_spec(name)
    except KeyError as exc:
        raise ConfigError(f"backbone.name: {exc.args[0]}") from None
    overrides = {k: v for k, v in overrides.items() if v is not None}
    licence = overrides.pop("licence", spec.licence)
    # Declared numbers from the config: pass them on only when they change the architecture.
    for key in ("patch_size", "embed_dim", "depth"):
        if key in overrides and overrides[key] == getattr(spec, key):
            overrides.pop(key)
    kwargs = dict(spec.timm_kwargs)
    kwargs.update(overrides)
    model = timm.create_model(
        spec.timm_name,
        pretrained=False,
        num_classes=0,
        in_chans=in_chans,
        dynamic_img_size=True,
        drop_path_rate=drop_path_rate,
        **kwargs,
    )
    pretrained = False
    if weights:
        load_into(model, read_state_dict(weights), spec.family, source=str(weights))
        pretrained = True
    elif require_pretrained:
        raise WeightsError(
            f"backbone.require_pretrained=true but no weights were given for {name}: "
            "set backbone.weights=/path/to/checkpoint.pth"
        )
    else:
        log.warning(
            "backbone %s has RANDOM weights. To use pretrained weights download the checkpoint "
            "(%s) and pass backbone.weights=/path/to/checkpoint.pth",
            name,
            "gated: request access from Meta first" if spec.gated else "official release",
        )
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    patch_size = int(model.patch_embed.patch_size[0])
    return Backbone(
        model,
        name=name,
        patch_size=patch_size,
        intermediate_layers=tuple(intermediate_layers or spec.intermediate_layers),
        mean=_per_channel(mean if mean is not None else spec.mean, in_chans, "mean"),
        std=_per_channel(std if std is not None else spec.std, in_chans, "std"),
        normalize=normalize,
        licence=licence,
        pretrained=pretrained,
    )
