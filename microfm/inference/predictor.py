"""Whole-image prediction with a trained model: prepare, tile, blend, post-process."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from microfm.errors import ConfigError, DataError
from microfm.inference.checkpoint import InferenceModel
from microfm.inference.tiling import SlidingWindow, flip_tta

DEFAULT_TILE = 512
# tiles per head call on CPU (docs/benchmarks.md: ViT-S/16 cellseg at 256 px, batch 8)
CPU_HEAD_BATCH = 2


@dataclass
class Prediction:
    """What :meth:`Predictor.predict` returns for one image.

    Attributes:
        raw: per task, the blended raw output: (K, H, W) for dense tasks, (K,) for global ones.
        results: per task, the named results of ``task.finalize`` (``labels``, ``dist``,
            ``probabilities``, ``depth``, ``label``...).
        image: the normalised model input (C, H, W) float32.
    """

    raw: dict[str, np.ndarray]
    results: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    image: np.ndarray | None = None


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None: the first GPU when there is one, else the CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is available (use device=cpu)")
    return dev


class Predictor:
    """Sliding-window prediction of whole images of any size.

    ``predict(image)`` takes an image as read from a file ((H, W) or (C, H, W), any dtype),
    selects the training channels, normalises it from whole-image statistics (or the training
    set's, when the model was trained with dataset-level normalisation), runs the model over
    overlapping tiles in batches, blends the raw outputs with a Hann window and post-processes
    the blended whole image with each task's ``finalize`` (cellseg: watershed with the
    thresholds stored in the checkpoint).

    Models whose tasks are all global (classification) see the whole image in one pass,
    resized to the training ``image_size`` when the training data had one.

    Args:
        model: an :class:`InferenceModel` (see :func:`microfm.inference.load_model`).
        tile_size: tile side (snapped down to the patch multiple); default the training crop
            size, else 512.
        overlap: overlap of neighbouring tiles as a fraction of the tile (0 to 0.9).
        batch_size: tiles per forward pass.
        head_batch: tiles per head call within a batch: ``auto`` (2 on CPU, where dense heads at
            full resolution run faster on a few tiles whose activations stay in cache, while the
            backbone gains from the whole batch; the whole batch on GPU), an int, or None (the
            whole batch).
        tta: average over the four flips of each tile (test-time augmentation).
        device: ``auto`` (GPU when available), ``cpu``, ``cuda``...
        channels: channel indices to read from each image; ``"checkpoint"`` (default) uses the
            training data's selection, None keeps the image's channels as they are.
        amp: bf16 autocast on GPU (``auto``: on when the GPU supports it); blending is float32.

    Example:
        >>> predictor = Predictor(load_model("best.ckpt"), tile_size=256)  # doctest: +SKIP
        >>> pred = predictor.predict(tifffile.imread("cells.tif"))  # doctest: +SKIP
        >>> pred.results["cellseg"]["labels"].max()  # number of cells  # doctest: +SKIP
    """

    def __init__(
        self,
        model: InferenceModel,
        tile_size: int | None = None,
        overlap: float = 0.25,
        batch_size: int = 8,
        head_batch: int | str | None = "auto",
        tta: bool = False,
        device: str | torch.device | None = "auto",
        channels: Sequence[int] | str | None = "checkpoint",
        amp: bool | str = "auto",
    ) -> None:
        if not 0.0 <= float(overlap) <= 0.9:
            raise ConfigError(f"overlap must be a fraction of the tile in [0, 0.9], got {overlap}")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        if head_batch == "auto":
            head_batch = CPU_HEAD_BATCH if self.device.type == "cpu" else None
        if head_batch is not None and (isinstance(head_batch, str) or int(head_batch) < 1):
            raise ConfigError(f"head_batch must be auto, null or >= 1, got {head_batch!r}")
        self.head_batch = int(head_batch) if head_batch is not None else None
        p = model.patch_size
        tile = int(tile_size) if tile_size else (model.crop_size or DEFAULT_TILE)
        if tile < p:
            raise ConfigError(f"tile_size={tile} is smaller than the patch size {p}")
        tile = tile // p * p
        self.window = SlidingWindow(
            tile, overlap=round(float(overlap) * tile), patch_size=p, batch_size=batch_size
        )
        self.tta = bool(tta)
        self.channels = model.channels if channels == "checkpoint" else channels
        self.amp = self.device.type == "cuda" and (
            torch.cuda.is_bf16_supported() if amp == "auto" else bool(amp)
        )
        self.global_only = all(
            getattr(t, "layers", None) is None and t.target == "label" for t in model.tasks.values()
        )

    @property
    def tile_size(self) -> int:
        return self.window.tile_size

    # ------------------------------------------------------------------ input
    def select_channels(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """(H, W) or (C, H, W) -> (C, H, W) with the model's channels."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[None]
        if image.ndim != 3:
            raise DataError(f"{source}: expected an (H, W) or (C, H, W) image, got {image.shape}")
        if self.channels is not None:
            bad = [c for c in self.channels if not -image.shape[0] <= c < image.shape[0]]
            if bad:
                raise DataError(
                    f"{source}: the model reads channel(s) {list(self.channels)} but the image "
                    f"has {image.shape[0]}"
                )
            image = image[list(self.channels)]
        if image.shape[0] != self.model.in_chans:
            raise DataError(
                f"{source}: the image has {image.shape[0]} channel(s), the model takes "
                f"{self.model.in_chans} (set channels=[...] to pick them)"
            )
        return image

    def prepare(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """Channel selection and normalisation from whole-image (or dataset) statistics."""
        return self.model.normalizer(self.select_channels(image, source))

    # ------------------------------------------------------------------ model
    def forward(self, tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model on a batch of tiles (no gradients, autocast on GPU), float32 outputs."""
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self.model(tiles, head_batch=self.head_batch)
            return {k: v.float() for k, v in out.items()}

    def tile_model(self):
        return flip_tta(self.forward) if self.tta else self.forward

    def raw(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Blended raw outputs of a normalised (C, H, W) float image."""
        image = np.asarray(image, dtype=np.float32)
        if self.global_only:
            return self._whole(image)
        out = self.window(self.tile_model(), image, device=self.device)
        return {k: v.cpu().numpy() for k, v in out.items()}

    def _whole(self, image: np.ndarray) -> dict[str, np.ndarray]:
        from microfm.transforms.crop import pad_to, resize_sample

        size = self.model.image_size
        if size:
            image = resize_sample({"image": image}, size, size)["image"]
        p = self.model.patch_size
        H, W = image.shape[-2:]
        image = pad_to(image, -(-H // p) * p, -(-W // p) * p)
        x = torch.from_numpy(np.ascontiguousarray(image))[None].to(self.device)
        out = self.tile_model()(x)
        return {k: v[0].cpu().numpy() for k, v in out.items()}

    def finalize(self, raw: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
        """Each task's post-processing on its blended whole-image output."""
        return {name: task.finalize(raw[name]) for name, task in self.model.tasks.items()}

    def predict(
        self, image: np.ndarray, normalized: bool = False, source: str = "image"
    ) -> Prediction:
        """Predict one image.

        Args:
            image: (H, W) or (C, H, W) as read from a file (any dtype), or, with
                ``normalized=True``, an already normalised model input (C, H, W).
            normalized: skip channel selection and normalisation.
            source: how to name the image in error messages.

        Returns:
            A :class:`Prediction` with raw outputs and each task's results.
        """
        x = np.asarray(image, dtype=np.float32) if normalized else self.prepare(image, source)
        if x.ndim == 2:
            x = x[None]
        raw = self.raw(x)
        return Prediction(raw=raw, results=self.finalize(raw), image=x)
