"""Shared by the prediction benchmarks: a cellseg model with random weights built like a
checkpoint rebuilds it, and a 16-bit synthetic nuclei image of any size."""

from __future__ import annotations

import os
import platform

import numpy as np
import torch


def cellseg_model(backbone: str = "dinov3_vits16", crop: int = 256):
    """An InferenceModel (random weights) for ``task=cellseg backbone=<backbone>``."""
    from microfm.inference.checkpoint import InferenceModel, build_inference_model
    from microfm.run.build import resolved_config
    from microfm.run.config import compose
    from microfm.transforms.intensity import Normalizer

    cfg = resolved_config(compose(["task=cellseg", f"backbone={backbone}", "finetune=full"]))
    torch.manual_seed(0)
    bb, tasks = build_inference_model(cfg, {"finetune_applied": "full"})
    return InferenceModel(bb, tasks, Normalizer(), crop_size=crop, config=cfg).eval()


def nuclei_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size) uint16: synthetic nuclei fields of 512 px tiled over the image."""
    from microfm.data.synthetic import SyntheticConfig, make_split

    block = 512 if size >= 512 else size
    fields = make_split(seed, "test", 4, SyntheticConfig(image_size=block))
    reps = -(-size // block)
    rows = [
        np.concatenate([fields[(i + j) % 4]["image"][0] for j in range(reps)], axis=1)
        for i in range(reps)
    ]
    return np.concatenate(rows, axis=0)[:size, :size].astype(np.uint16)


def machine() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}"
    )
