"""Inference: post-processing (and, later, checkpoint loading and sliding windows)."""

from microfm.inference.postprocess import Watershed

__all__ = ["Watershed"]
