"""Inference: rebuild a model from its checkpoint, sliding-window prediction of whole images of
any size, post-processing, writers, evaluation and export.

Example:
    >>> from microfm.inference import Predictor, load_model  # doctest: +SKIP
    >>> predictor = Predictor(load_model("results/seg/run/ckpts/best.ckpt"))  # doctest: +SKIP
    >>> labels = predictor.predict(image).results["cellseg"]["labels"]  # doctest: +SKIP
"""

from microfm.inference.checkpoint import InferenceModel, load_model
from microfm.inference.postprocess import Watershed
from microfm.inference.predictor import Prediction, Predictor
from microfm.inference.tiling import SlidingWindow, flip_tta, hann_window

__all__ = [
    "InferenceModel",
    "Prediction",
    "Predictor",
    "SlidingWindow",
    "Watershed",
    "flip_tta",
    "hann_window",
    "load_model",
]
