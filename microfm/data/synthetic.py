"""Deterministic synthetic fluorescence microscopy: nuclei with instance, semantic, class and
height targets.

Every sample is a pure function of ``(seed, split, index)``, so splits are fixed by the seed and
any sample can be regenerated alone. The image formation follows a widefield fluorescence
microscope:

1. objects: nuclei of varied size and brightness, shapes from round to elongated to lobed,
   many touching (pixels shared by two nuclei go to the nearer one in normalised radius);
2. emission: a dome-shaped intensity profile with a textured interior (chromatin) and bright
   spots; a fraction of nuclei are small, bright and condensed ("mitotic");
3. optics: Gaussian PSF blur, uneven illumination (vignetting) and a smooth background;
4. camera: Poisson shot noise, gain, offset and Gaussian read noise, 16-bit output.

Per image it returns the ``uint16`` image (C=1, H, W), the instance label map, a semantic mask
(0 background, 1 interphase nucleus, 2 mitotic nucleus), a morphology class label
(0 round, 1 elongated, 2 lobed) and a height map (positive, in pixel units) for depth tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

CLASS_NAMES = ("round", "elongated", "lobed")
SEMANTIC_NAMES = ("background", "interphase", "mitotic")
SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the generator.

    Args:
        image_size: side length of the square images in pixels.
        radius: range of the mean nucleus radius (pixels), drawn per image.
        density: range of the fraction of the image area covered by nuclei, drawn per image.
        touching: probability that a nucleus is placed next to an existing one (clusters).
        mitotic_fraction: fraction of nuclei rendered small, bright and condensed.
        photons: range of the peak photon count of an average nucleus (sets the SNR).
    """

    image_size: int = 128
    radius: tuple[float, float] = (5.0, 9.0)
    density: tuple[float, float] = (0.15, 0.4)
    touching: float = 0.5
    mitotic_fraction: float = 0.1
    photons: tuple[float, float] = (150.0, 1500.0)


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one sample: independent streams per (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma``."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _place_centres(
    rng: np.random.Generator, radii: np.ndarray, size: int, touching: float
) -> tuple[np.ndarray, np.ndarray]:
    """Place nuclei sequentially: either uniformly or next to an existing nucleus, rejecting
    positions that overlap a neighbour by more than about a quarter of the radii."""
    centres: list[np.ndarray] = []
    kept: list[int] = []
    for i, r in enumerate(radii):
        for _ in range(30):
            if centres and rng.random() < touching:
                j = rng.integers(len(centres))
                angle = rng.uniform(0, 2 * np.pi)
                dist = (r + radii[kept[j]]) * rng.uniform(0.8, 1.0)
                c = centres[j] + dist * np.array([np.sin(angle), np.cos(angle)])
            else:
                c = rng.uniform(-0.5 * r, size + 0.5 * r, size=2)
            if centres:
                d = np.linalg.norm(np.asarray(centres) - c, axis=1)
                if np.any(d < 0.75 * (r + radii[kept])):
                    continue
            centres.append(c)
            kept.append(i)
            break
    return np.asarray(centres).reshape(-1, 2), np.asarray(kept, dtype=int)


def generate_sample(
    rng: np.random.Generator, cfg: SyntheticConfig = SyntheticConfig()
) -> dict[str, np.ndarray | int]:
    """Generate one synthetic fluorescence image and its targets.

    Returns:
        A dict with ``image`` (uint16, 1×H×W), ``instances`` (uint16, H×W, ids 1..N),
        ``semantic`` (uint8, H×W), ``label`` (int, morphology class) and ``depth``
        (float32, H×W, height map, > 0).
    """
    size = int(cfg.image_size)
    label = int(rng.integers(len(CLASS_NAMES)))
    mean_r = rng.uniform(*cfg.radius)
    density = rng.uniform(*cfg.density)
    n_cells = max(1, int(rng.poisson(density * size * size / (np.pi * mean_r**2))))

    mitotic = rng.random(n_cells) < cfg.mitotic_fraction
    radii = mean_r * np.exp(rng.normal(0.0, 0.2, n_cells)) * np.where(mitotic, 0.7, 1.0)
    centres, kept = _place_centres(rng, radii, size, cfg.touching)
    radii, mitotic = radii[kept], mitotic[kept]

    rho_best = np.full((size, size), np.inf)
    instances = np.zeros((size, size), dtype=np.int32)
    profile = np.zeros((size, size))
    height = np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    texture = _smooth_noise(rng, (size, size), 1.2)

    cell_id = 0
    mitotic_of_id = [False]
    for (cy, cx), r, is_mitotic in zip(centres, radii, mitotic):
        # Shape: ellipse whose elongation depends on the class, plus radial harmonics.
        if label == 0:
            elong, harm_amp = rng.uniform(1.0, 1.2), rng.uniform(0.0, 0.05)
        elif label == 1:
            elong, harm_amp = rng.uniform(1.8, 2.6), rng.uniform(0.0, 0.05)
        else:
            elong, harm_amp = rng.uniform(1.0, 1.4), rng.uniform(0.12, 0.22)
        if is_mitotic:
            elong, harm_amp = min(elong, 1.3), 0.03
        a, b = r * np.sqrt(elong), r / np.sqrt(elong)
        theta = rng.uniform(0, np.pi)
        ks = np.array([2, 3, 4, 5])
        amps = harm_amp * rng.uniform(0.3, 1.0, ks.size) / np.sqrt(ks - 1)
        phases = rng.uniform(0, 2 * np.pi, ks.size)

        reach = int(np.ceil(a * (1 + amps.sum()))) + 2
        y0, y1 = max(0, int(cy) - reach), min(size, int(cy) + reach + 1)
        x0, x1 = max(0, int(cx) - reach), min(size, int(cx) + reach + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        angle = np.arctan2(v / b, u / a)
        boundary = 1.0 + np.tensordot(amps, np.cos(np.multiply.outer(ks, angle).T + phases).T, 1)
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2) / boundary

        win = (rho < 1.0) & (rho < rho_best[y0:y1, x0:x1])
        if win.sum() < 6:
            continue
        cell_id += 1
        mitotic_of_id.append(bool(is_mitotic))
        rho_best[y0:y1, x0:x1][win] = rho[win]
        instances[y0:y1, x0:x1][win] = cell_id

        brightness = np.exp(rng.normal(0.0, 0.3)) * (2.2 if is_mitotic else 1.0)
        tex_amp = 0.45 if is_mitotic else rng.uniform(0.15, 0.3)
        dome = np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))
        emission = brightness * (0.55 + 0.45 * dome) * (1.0 + tex_amp * texture[y0:y1, x0:x1])
        profile[y0:y1, x0:x1][win] = np.clip(emission[win], 0.0, None)
        height[y0:y1, x0:x1][win] = (0.6 * min(a, b) * dome)[win]

    # Relabel to 1..N (a nucleus may have lost all its pixels to a neighbour).
    ids = np.unique(instances[instances > 0])
    lut = np.zeros(cell_id + 1, dtype=np.int32)
    lut[ids] = np.arange(1, ids.size + 1)
    instances = lut[instances]
    semantic = np.zeros((size, size), dtype=np.uint8)
    semantic[instances > 0] = 1
    mitotic_new = np.zeros(ids.size + 1, dtype=bool)
    mitotic_new[1:] = np.asarray(mitotic_of_id)[ids]
    semantic[mitotic_new[instances]] = 2

    # Bright spots (chromocentres) inside nuclei.
    n_spots = rng.poisson(0.6 * max(1, ids.size))
    if n_spots and ids.size:
        inside = np.flatnonzero(instances.ravel() > 0)
        spots = np.zeros(size * size)
        spots[rng.choice(inside, size=min(n_spots, inside.size), replace=False)] = rng.uniform(
            2.0, 5.0, min(n_spots, inside.size)
        )
        profile += ndi.gaussian_filter(spots.reshape(size, size), 0.8)

    # Optics: PSF blur, uneven background and illumination.
    signal = ndi.gaussian_filter(profile, rng.uniform(0.8, 1.5))
    background = rng.uniform(0.03, 0.1) * (1.0 + 0.5 * _smooth_noise(rng, (size, size), size / 4))
    background = np.clip(background, 0.005, None)
    gy, gx = rng.uniform(-0.3, 0.3, 2)
    vignette = 1.0 - 0.25 * (((yy / size - 0.5) ** 2 + (xx / size - 0.5) ** 2) * 2)
    illumination = vignette * (1.0 + gy * (yy / size - 0.5) + gx * (xx / size - 0.5))

    # Camera: shot noise, gain, offset, read noise.
    photons = rng.uniform(*cfg.photons)
    counts = rng.poisson(np.clip((signal + background) * illumination, 0, None) * photons)
    gain, offset, read_noise = rng.uniform(1.0, 3.0), 100.0, rng.uniform(1.5, 4.0)
    adu = offset + gain * counts + rng.normal(0.0, read_noise, counts.shape)
    image = np.clip(np.rint(adu), 0, 65535).astype(np.uint16)[None]

    substrate = 1.0 + 0.1 * (yy / size) + 0.05 * (xx / size)
    return {
        "image": image,
        "instances": instances.astype(np.uint16),
        "semantic": semantic,
        "label": label,
        "depth": (substrate + height).astype(np.float32),
    }


def make_split(
    seed: int, split: str, n: int, cfg: SyntheticConfig = SyntheticConfig()
) -> list[dict[str, np.ndarray | int]]:
    """Generate the ``n`` samples of one split, each from its own (seed, split, index) stream."""
    return [generate_sample(sample_rng(seed, split, i), cfg) for i in range(n)]
