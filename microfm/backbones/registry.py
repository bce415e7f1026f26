"""Backbone names -> timm architectures and their pretrained metadata.

A small explicit dict; timm holds the architectures, microfm adds the names users type, the
default intermediate layers for dense heads, the pretraining normalisation, where the official
weights live and under which licence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAT_MEAN = (0.430, 0.411, 0.296)  # DINOv3 SAT-493M (satellite) pretraining statistics
SAT_STD = (0.213, 0.156, 0.143)

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
MAE_URL = "https://dl.fbaipublicfiles.com/mae/pretrain"
DINOV3_ACCESS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of a named backbone.

    Attributes:
        timm_name: the timm architecture it is built from.
        family: weight-format family (``dinov2``, ``dinov3``, ``mae``, ``clip``, ``test``).
        patch_size, embed_dim, depth: architecture numbers (declared, checked by tests).
        intermediate_layers: default block indices feeding dense heads.
        mean, std: per-channel normalisation of the pretraining data.
        licence: licence of the official weights.
        timm_kwargs: extra arguments for ``timm.create_model``.
        gated: the weights need a licence acceptance and are never downloaded automatically.
        in_chans: channel count of the pretrained patch embedding (3, or 1 for STED-FM).
        url: official download address (``backbone.weights=official`` uses it).
        files: file-name patterns of the official weights, looked up in ``$MICROFM_WEIGHTS``
            and in torch hub's checkpoint cache.
        hf_hub_id: the timm weights on the Hugging Face hub, looked up in the local HF cache.
        source: where a user gets the weights (shown when they are missing).
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
    in_chans: int = 3
    url: str | None = None
    files: tuple[str, ...] = ()
    hf_hub_id: str | None = None
    source: str = ""


def _dinov2(size: str, arch: str, dim: int, depth: int, layers, reg: bool) -> BackboneSpec:
    name = f"dinov2_vit{size}14{'_reg4' if reg else ''}"
    timm_name = f"vit_{arch}_patch14_{'reg4_' if reg else ''}dinov2"
    return BackboneSpec(
        timm_name,
        "dinov2",
        14,
        dim,
        depth,
        layers,
        licence="Apache-2.0",
        url=f"{DINOV2_URL}/dinov2_vit{size}14/{name}_pretrain.pth",
        files=(f"{name}_pretrain*.pth",),
        hf_hub_id=f"timm/{timm_name}.lvd142m",
        source=f"{DINOV2_URL}/dinov2_vit{size}14/{name}_pretrain.pth",
    )


def _dinov3(
    name: str, timm_name: str, dim: int, depth: int, layers, data: str = "lvd1689m", **kw
) -> BackboneSpec:
    arch = name.removeprefix("dinov3_").removesuffix("_sat")
    return BackboneSpec(
        timm_name,
        "dinov3",
        16,
        dim,
        depth,
        layers,
        licence="DINOv3 License",
        gated=True,
        files=(f"dinov3_{arch}_pretrain_{data}*.pth",),
        hf_hub_id=f"timm/{timm_name}.{data}",
        source=f"gated: request access at {DINOV3_ACCESS}, download "
        f"dinov3_{arch}_pretrain_{data}-<hash>.pth",
        **kw,
    )


_L12, _L24, _L32, _L40 = (2, 5, 8, 11), (4, 11, 17, 23), (7, 15, 23, 31), (9, 19, 29, 39)
_TINY = {"embed_dim": 64, "depth": 4, "num_heads": 2, "patch_size": 8}

BACKBONES: MappingProxyType[str, BackboneSpec] = MappingProxyType(
    {
        "dinov2_vits14": _dinov2("s", "small", 384, 12, _L12, reg=False),
        "dinov2_vitb14": _dinov2("b", "base", 768, 12, _L12, reg=False),
        "dinov2_vitl14": _dinov2("l", "large", 1024, 24, _L24, reg=False),
        "dinov2_vitg14": _dinov2("g", "giant", 1536, 40, _L40, reg=False),
        # with 4 register tokens ("Vision Transformers Need Registers")
        "dinov2_vits14_reg": _dinov2("s", "small", 384, 12, _L12, reg=True),
        "dinov2_vitb14_reg": _dinov2("b", "base", 768, 12, _L12, reg=True),
        "dinov2_vitl14_reg": _dinov2("l", "large", 1024, 24, _L24, reg=True),
        "dinov2_vitg14_reg": _dinov2("g", "giant", 1536, 40, _L40, reg=True),
        # DINOv3: the official q/v biases (k bias masked to zero) live in timm's `_qkvb`
        # variants; the 7B model has none.
        "dinov3_vits16": _dinov3("dinov3_vits16", "vit_small_patch16_dinov3_qkvb", 384, 12, _L12),
        "dinov3_vits16plus": _dinov3(
            "dinov3_vits16plus", "vit_small_plus_patch16_dinov3_qkvb", 384, 12, _L12
        ),
        "dinov3_vitb16": _dinov3("dinov3_vitb16", "vit_base_patch16_dinov3_qkvb", 768, 12, _L12),
        "dinov3_vitl16": _dinov3("dinov3_vitl16", "vit_large_patch16_dinov3_qkvb", 1024, 24, _L24),
        "dinov3_vith16plus": _dinov3(
            "dinov3_vith16plus", "vit_huge_plus_patch16_dinov3_qkvb", 1280, 32, _L32
        ),
        "dinov3_vit7b16": _dinov3("dinov3_vit7b16", "vit_7b_patch16_dinov3", 4096, 40, _L40),
        "dinov3_vitl16_sat": _dinov3(
            "dinov3_vitl16_sat",
            "vit_large_patch16_dinov3_qkvb",
            1024,
            24,
            _L24,
            data="sat493m",
            mean=SAT_MEAN,
            std=SAT_STD,
        ),
        # Official MAE encoders (ImageNet-1k, CC BY-NC 4.0).
        "mae_vitb16": BackboneSpec(
            "vit_base_patch16_224",
            "mae",
            16,
            768,
            12,
            _L12,
            licence="CC-BY-NC-4.0",
            url=f"{MAE_URL}/mae_pretrain_vit_base.pth",
            files=("mae_pretrain_vit_base*.pth",),
            hf_hub_id="timm/vit_base_patch16_224.mae",
            source=f"{MAE_URL}/mae_pretrain_vit_base.pth",
        ),
        "mae_vitl16": BackboneSpec(
            "vit_large_patch16_224",
            "mae",
            16,
            1024,
            24,
            _L24,
            licence="CC-BY-NC-4.0",
            url=f"{MAE_URL}/mae_pretrain_vit_large.pth",
            files=("mae_pretrain_vit_large*.pth",),
            hf_hub_id="timm/vit_large_patch16_224.mae",
            source=f"{MAE_URL}/mae_pretrain_vit_large.pth",
        ),
        # STED-FM: a one-channel ViT-S/16 MAE-pretrained on ~1M STED images, whose images are
        # scaled to [0, 1] and fed as they are (no mean/std).
        "stedfm_vits16": BackboneSpec(
            "vit_small_patch16_224",
            "mae",
            16,
            384,
            12,
            _L12,
            mean=(0.0,),
            std=(1.0,),
            licence="STED-FM release terms (FLClab)",
            in_chans=1,
            files=("mae-small-sted*.ckpt", "stedfm_vits16*.pth", "stedfm_vits16*.ckpt"),
            source="the STED-FM release (github.com/FLClab/STED-FM, `mae-small-sted`)",
        ),
        # OpenAI CLIP ViT-L/14 image tower (via timm / OpenCLIP), for backbone comparisons.
        "clip_vitl14": BackboneSpec(
            "vit_large_patch14_clip_224",
            "clip",
            14,
            1024,
            24,
            _L24,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            licence="MIT",
            files=("open_clip_pytorch_model*.bin", "clip_vitl14*.safetensors"),
            hf_hub_id="timm/vit_large_patch14_clip_224.openai",
            source="the Hugging Face hub: timm/vit_large_patch14_clip_224.openai",
        ),
        # A DINOv3-architecture ViT (RoPE, 4 register tokens, layer scale, q/v biases) small
        # enough for CPU unit tests: embed 64, depth 4, patch 8.
        "vit_test": BackboneSpec(
            "vit_small_patch16_dinov3_qkvb",
            "test",
            8,
            64,
            4,
            (0, 1, 2, 3),
            licence="none (random weights)",
            timm_kwargs=_TINY,
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
            timm_kwargs={**_TINY, "img_size": 64},
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
