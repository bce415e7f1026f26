"""Backbone names -> timm architectures and their pretrained metadata.

A small explicit dict; timm holds the architectures, microfm adds the names users type, the
default intermediate layers for dense heads, the pretraining normalisation and the licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a named backbone.

    Attributes:
        timm_name: the timm architecture it is built from.
        family: weight-format family (``dinov2``, ``dinov3``, ``test``), selects the converter.
        patch_size, embed_dim, depth: architecture numbers (declared, checked by tests).
        intermediate_layers: default block indices feeding dense heads.
        mean, std: per-channel normalisation of the pretraining data (RGB).
        licence: licence of the official weights.
        timm_kwargs: extra arguments for ``timm.create_model``.
        gated: official weights need a licence acceptance and are never auto-downloaded.
    """

    timm_name: str
    family: str
    patch_size: int
    embed_dim: int
    depth: int
    intermediate_layers: tuple[int, ...]
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    licence: str = "unknown"
    timm_kwargs: dict = field(default_factory=dict)
    gated: bool = False


BACKBONES: MappingProxyType[str, BackboneSpec] = MappingProxyType(
    {
        "dinov2_vits14": BackboneSpec(
            "vit_small_patch14_dinov2",
            "dinov2",
            14,
            384,
            12,
            (2, 5, 8, 11),
            licence="Apache-2.0",
        ),
        "dinov3_vits16": BackboneSpec(
            "vit_small_patch16_dinov3",
            "dinov3",
            16,
            384,
            12,
            (2, 5, 8, 11),
            licence="DINOv3 License",
            gated=True,
        ),
        # A DINOv3-architecture ViT (RoPE, 4 register tokens, layer scale) small enough for
        # CPU unit tests: embed 64, depth 4, patch 8.
        "vit_test": BackboneSpec(
            "vit_small_patch16_dinov3",
            "test",
            8,
            64,
            4,
            (0, 1, 2, 3),
            licence="none (random weights)",
            timm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 2, "patch_size": 8},
        ),
        # A DINOv2-architecture ViT (learned absolute position embeddings, interpolated to the
        # input size; layer scale) of the same tiny size.
        "vit_test_dinov2": BackboneSpec(
            "vit_small_patch14_dinov2",
            "test",
            8,
            64,
            4,
            (0, 1, 2, 3),
            licence="none (random weights)",
            timm_kwargs={
                "embed_dim": 64,
                "depth": 4,
                "num_heads": 2,
                "patch_size": 8,
                "img_size": 64,
            },
        ),
    }
)


def get_spec(name: str) -> BackboneSpec:
    """Look up a backbone by name, with a suggestion when it is misspelled."""
    try:
        return BACKBONES[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, BACKBONES, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown backbone {name!r}.{hint} Known: {', '.join(sorted(BACKBONES))}"
        ) from None
