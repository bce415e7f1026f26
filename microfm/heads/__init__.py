"""Task heads (plain torch modules). Dense heads share the signature
``Head(embed_dim, num_layers, in_chans, out_channels, ..., activation)`` and are called as
``head(layers, image)`` with the ViT layers (B, D, h, w) and the input image (B, C, H, W),
returning (B, out_channels, H, W). Self-supervised heads: :class:`DINOHead` (DINO/iBOT
projection) and :class:`MAEDecoder`."""

from microfm.heads.classifier import ClassificationHead
from microfm.heads.dpt import DPTHead
from microfm.heads.linear import LinearHead
from microfm.heads.mae_decoder import MAEDecoder
from microfm.heads.projection import DINOHead
from microfm.heads.unet import UNetDecoder

__all__ = ["ClassificationHead", "DINOHead", "DPTHead", "LinearHead", "MAEDecoder", "UNetDecoder"]
