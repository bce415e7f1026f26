"""Joint augmentation of an image and its dense targets (albumentations underneath).

Geometric transforms move the image, instance labels, semantic masks, depth and distance maps
together (labels and masks with nearest-neighbour interpolation, so ids stay ids; depth and
distance maps bilinearly); intensity transforms (brightness, contrast, gamma, blur, noise,
inversion) touch the image only. Everything works on float32 data derived from 16-bit images
and on any number of channels. Randomness comes from a per-sample seed, so a sample's
augmentation depends only on (run seed, epoch, index): reproducible with any number of workers
and after a resume.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import albumentations as A
import cv2
import numpy as np

# Targets moved with the image; values are albumentations target types ("mask": nearest
# neighbour, "image": bilinear; only geometric transforms run inside albumentations).
DENSE_TARGETS = {"instances": "mask", "semantic": "mask", "depth": "image", "dist": "image"}


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
        contrast: contrast factor range per channel (around the channel mean), or None.
        gamma: gamma range (``sign(x)|x|^g``), or None.
        blur: Gaussian blur sigma range (pixels), or None; applied with probability
            ``blur_p``.
        noise: largest standard deviation of additive Gaussian noise (normalised units), or
            None; applied with probability ``noise_p``.

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
        contrast: Sequence[float] | None = None,
        gamma: Sequence[float] | None = None,
        blur: Sequence[float] | None = None,
        blur_p: float = 0.0,
        noise: float | None = None,
        noise_p: float = 0.0,
    ) -> None:
        probabilities = (
            ("hflip", hflip),
            ("vflip", vflip),
            ("rot90", rot90),
            ("invert", invert),
            ("affine_p", affine_p),
            ("blur_p", blur_p),
            ("noise_p", noise_p),
        )
        for name, p in probabilities:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"augment.{name} is a probability in [0, 1], got {p}")
        for name, rng in (("brightness", brightness), ("contrast", contrast), ("gamma", gamma)):
            if rng is not None and (len(rng) != 2 or rng[0] > rng[1] or rng[0] <= 0):
                raise ValueError(f"augment.{name} is a range [low, high] of positive factors")
        self.brightness = tuple(brightness) if brightness is not None else None
        self.invert = float(invert)
        self.contrast = tuple(contrast) if contrast is not None else None
        self.gamma = tuple(gamma) if gamma is not None else None
        self.blur = tuple(blur) if blur is not None else None
        self.blur_p = float(blur_p)
        self.noise = float(noise) if noise else None
        self.noise_p = float(noise_p)
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

    @property
    def identity(self) -> bool:
        """True when the recipe changes nothing (``augment=none``)."""
        return (
            self.geometric is None
            and self.brightness is None
            and not self.invert
            and self.contrast is None
            and self.gamma is None
            and not (self.blur and self.blur_p)
            and not (self.noise and self.noise_p)
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
        C = image.shape[0]
        if self.contrast is not None:
            c = rng.uniform(*self.contrast, size=(C, 1, 1)).astype(np.float32)
            mean = image.mean(axis=(1, 2), keepdims=True)
            image = (image - mean) * c + mean
        if self.gamma is not None:
            g = rng.uniform(*self.gamma, size=(C, 1, 1)).astype(np.float32)
            image = np.sign(image) * np.abs(image) ** g
        if self.blur is not None and self.blur_p and rng.random() < self.blur_p:
            sigma = float(rng.uniform(*self.blur))
            image = np.stack([cv2.GaussianBlur(ch, (0, 0), sigma) for ch in image])
        if self.noise and self.noise_p and rng.random() < self.noise_p:
            std = float(rng.uniform(0.0, self.noise))
            image = image + rng.normal(0.0, std, image.shape).astype(np.float32)
        out["image"] = np.ascontiguousarray(image, dtype=np.float32)
        return out

    def __repr__(self) -> str:
        return (
            f"DenseAugment(geometric={self.geometric}, brightness={self.brightness}, "
            f"invert={self.invert}, contrast={self.contrast}, gamma={self.gamma}, "
            f"blur={self.blur}@{self.blur_p}, noise={self.noise}@{self.noise_p})"
        )
