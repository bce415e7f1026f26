"""microfm: pretrain, adapt and evaluate ViT foundation models on microscopy images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("microfm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
