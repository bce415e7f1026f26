"""Task heads (plain torch modules)."""

from microfm.heads.unet import UNetDecoder

__all__ = ["UNetDecoder"]
