"""Joint augmentation of an image and its dense targets (albumentations underneath).

Geometric transforms move the image, instance labels, semantic masks and depth maps together
(labels and masks with nearest-neighbour interpolation, so ids stay ids); intensity transforms
touch the image only. Everything works on float32 data derived from 16-bit images and on any
number of channels. Randomness comes from a per-sample seed, so a sample's augmentation depends
only on (run seed, epoch, index): reproducible with any number of workers and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np

# Targets moved with the image; values are albumentations target types.
DENSE_TARGETS = {"instances": "mask", "semantic": "mask", "depth": "mask"}


class DenseAugment:
    """Augmentation recipe for dense microscopy tasks.

    The default values are the SAMCell / DINOCell recipe: horizontal flip p=0.5, rotation
    -180..180°, scale 0.8-1.2, brightness 0.95-1.05 and intensity inversion p=0.5.

    Args:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip.
        rot90: probability of a random multiple-of-90° rotation.
        rotate: rotation range in degrees, or None for no free rotation.
        scale: zoom range, or None.
        affine_p: probability of applying the rotation/scale transform.
        brightness: multiplicative brightness range applied per channel, or None.
        invert: probability of inverting intensities (x -> 1 - x on normalised data).

    Example:
        >>> aug = DenseAugment()
        >>> out = aug({"image": np.zeros((1, 64, 64), np.float32)}, seed=0)
        >>> out["image"].shape
        (1, 64, 64)
    """

    def __init__(
        self,
        hflip: float = 0.5,
        vflip: float = 0.0,
        rot90: float = 0.0,
        rotate: Sequence[float] | None = (-180.0, 180.0),
        scale: Sequence[float] | None = (0.8, 1.2),
        affine_p: float = 1.0,
        brightness: Sequence[float] | None = (0.95, 1.05),
        invert: float = 0.5,
    ) -> None:
        for name, p in (("hflip", hflip), ("vflip", vflip), ("rot90", rot90), ("invert", invert)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")
        self.brightness = tuple(brightness) if brightness is not None else None
        self.invert = float(invert)
        geometric: list[A.BasicTransform] = []
        if hflip:
            geometric.append(A.HorizontalFlip(p=hflip))
        if vflip:
            geometric.append(A.VerticalFlip(p=vflip))
        if rot90:
            geometric.append(A.RandomRotate90(p=rot90))
        if rotate is not None or scale is not None:
            geometric.append(
                A.Affine(
                    rotate=tuple(rotate) if rotate is not None else 0.0,
                    scale=tuple(scale) if scale is not None else 1.0,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0.0,
                    fill_mask=0,
                    p=affine_p,
                )
            )
        self.geometric = (
            A.Compose(geometric, additional_targets=dict(DENSE_TARGETS)) if geometric else None
        )

    def __call__(self, sample: Mapping[str, object], seed: int) -> dict[str, object]:
        """Augment ``sample`` (``image`` as (C, H, W) float32 plus optional dense targets)."""
        out = dict(sample)
        rng = np.random.default_rng(seed)
        if self.geometric is not None:
            self.geometric.set_random_seed(int(rng.integers(2**31)))
            image = np.ascontiguousarray(np.moveaxis(np.asarray(out["image"]), 0, -1))
            kwargs = {"image": image}
            present = [k for k in DENSE_TARGETS if k in out]
            dtypes = {key: np.asarray(out[key]).dtype for key in present}
            for key in present:
                # one dtype for every label-like map: OpenCV's paths differ by dtype and would
                # move uint8 and int32 masks by a pixel differently at some boundaries
                arr = np.asarray(out[key])
                kwargs[key] = np.ascontiguousarray(
                    arr if arr.dtype.kind == "f" else arr.astype(np.int32)
                )
            res = self.geometric(**kwargs)
            out["image"] = np.ascontiguousarray(np.moveaxis(res["image"], -1, 0))
            if out["image"].ndim == 2:  # single channel squeezed by OpenCV
                out["image"] = out["image"][None]
            for key in present:
                out[key] = res[key].astype(dtypes[key], copy=False)
        image = np.asarray(out["image"], dtype=np.float32)
        if self.brightness is not None:
            factors = rng.uniform(*self.brightness, size=(image.shape[0], 1, 1))
            image = image * factors.astype(np.float32)
        if self.invert and rng.random() < self.invert:
            image = 1.0 - image
        out["image"] = image.astype(np.float32, copy=False)
        return out

    def __repr__(self) -> str:
        return (
            f"DenseAugment(geometric={self.geometric}, brightness={self.brightness}, "
            f"invert={self.invert})"
        )
