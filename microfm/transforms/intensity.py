"""Per-channel intensity normalisation of raw (8/16/32-bit or float) microscopy images.

Everything is computed in floating point on the original bit depth: there is no 8-bit step
anywhere. A normalisation is an affine map per channel, ``(x - offset) / scale``, whose
statistics come either from each image (``scope="image"``) or from the training set
(``scope="dataset"``, computed once by :meth:`Normalizer.fit` and cached by the DataModule).
Optional CLAHE (contrast-limited adaptive histogram equalisation) follows the affine map, for
training and inference alike; its tile histograms have 256 bins (see :func:`clahe`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

MODES = ("percentile", "minmax", "meanstd", "none")
SCOPES = ("image", "dataset")
# pixels per channel and image kept to estimate dataset-level percentiles
_SUBSAMPLE = 65_536


def _as_float(image: np.ndarray) -> np.ndarray:
    """float32 (float64 stays float64), non-finite values replaced by NaN for the statistics."""
    x = image.astype(np.float64 if image.dtype == np.float64 else np.float32, copy=False)
    if x.dtype.kind == "f" and image.dtype.kind == "f" and not np.isfinite(x).all():
        x = np.where(np.isfinite(x), x, np.nan)
    return x


def _channels(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
    return _as_float(image).reshape(image.shape[0], -1)


def _nan_safe(values: np.ndarray, fill: float) -> np.ndarray:
    return np.where(np.isfinite(values), values, fill)


def image_stats(
    image: np.ndarray, mode: str = "percentile", low: float = 1.0, high: float = 99.8
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(offset, scale)`` of one (C, H, W) image (float64 arrays of length C).

    ``percentile``: the ``low``/``high`` percentiles map to 0/1; ``minmax``: min/max map to
    0/1; ``meanstd``: zero mean, unit standard deviation; ``none``: identity.
    """
    if mode not in MODES:
        raise ValueError(f"normalisation mode must be one of {MODES}, got {mode!r}")
    x = _channels(image)
    C = x.shape[0]
    if mode == "none" or x.shape[1] == 0:
        return np.zeros(C), np.ones(C)
    with np.errstate(all="ignore"), _Quiet():
        if mode == "percentile":
            if not 0 <= low < high <= 100:
                raise ValueError(
                    f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}"
                )
            pct = np.nanpercentile if np.isnan(x).any() else np.percentile
            lo, hi = pct(x, [low, high], axis=1).astype(np.float64)
            offset, scale = lo, hi - lo
        elif mode == "minmax":
            offset = np.nanmin(x, axis=1).astype(np.float64)
            scale = np.nanmax(x, axis=1).astype(np.float64) - offset
        else:
            offset = np.nanmean(x, axis=1, dtype=np.float64)
            scale = np.sqrt(np.nanmean((x - offset[:, None]) ** 2, axis=1, dtype=np.float64))
    return _nan_safe(offset, 0.0), _nan_safe(scale, 0.0)


class _Quiet:
    """Silence numpy's all-NaN slice warnings (an all-NaN channel normalises to 0)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def apply_stats(
    image: np.ndarray,
    offset: Sequence[float] | np.ndarray,
    scale: Sequence[float] | np.ndarray,
    clip: bool = False,
    eps: float = 1e-6,
) -> np.ndarray:
    """``(image - offset) / max(scale, eps)`` per channel as float32, non-finite values -> 0."""
    x = image.astype(np.float64 if image.dtype == np.float64 else np.float32, copy=False)
    off = np.asarray(offset, dtype=np.float64).reshape(-1, 1, 1)
    sc = np.maximum(np.asarray(scale, dtype=np.float64), eps).reshape(-1, 1, 1)
    if off.shape[0] != x.shape[0]:
        raise ValueError(f"{off.shape[0]} channel statistics for an image with {x.shape[0]}")
    with np.errstate(all="ignore"):
        out = (x - off.astype(x.dtype)) * (1.0 / sc).astype(x.dtype)
    out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)  # non-finite inputs -> 0
    if clip:
        out = np.clip(out, 0.0, 1.0)
    elif out.dtype == np.float64:  # keep huge float64 values finite in float32
        f32 = float(np.finfo(np.float32).max)
        out = np.clip(out, -f32, f32)
    return out.astype(np.float32, copy=False)


def percentile_normalize(
    image: np.ndarray, low: float = 1.0, high: float = 99.8, eps: float = 1e-6
) -> np.ndarray:
    """Map each channel's ``low``/``high`` percentiles to 0/1 (values outside are not clipped).

    Args:
        image: (C, H, W) array of any numeric dtype.
        low: lower percentile (0-100).
        high: upper percentile (0-100), greater than ``low``.

    Returns:
        float32 array of the same shape.
    """
    offset, scale = image_stats(image, "percentile", low, high)
    return apply_stats(image, offset, scale, eps=eps)


def minmax_normalize(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Map each channel's minimum/maximum to 0/1 (float32)."""
    return apply_stats(image, *image_stats(image, "minmax"), eps=eps)


def meanstd_normalize(image: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean and unit standard deviation per channel (float32)."""
    return apply_stats(image, *image_stats(image, "meanstd"), eps=eps)


def clahe(image: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """CLAHE per channel on an image normalised to about [0, 1] (values are clipped to [0, 1]).

    ``clip_limit`` keeps OpenCV's meaning for 8-bit images: each tile's 256-bin histogram is
    clipped at ``clip_limit`` times its mean bin height (1: no equalisation, larger: stronger),
    whatever the bit depth of the raw image. It runs on the float image with scikit-image
    (``equalize_adapthist(clip_limit=clip_limit / 256, nbins=256)``, tiles of
    ``H // tiles`` x ``W // tiles`` pixels; histograms span each channel's min..max, the output
    its full [0, 1]). OpenCV on 16-bit data would scale the limit by tile area / 65,536, so
    typical limits all clip at one count per level and give the same output. Constant channels
    are returned unchanged.
    """
    from skimage.exposure import equalize_adapthist

    x = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    kernel = tuple(max(1, s // int(tiles)) for s in x.shape[-2:])
    out = np.empty_like(x)
    for i, ch in enumerate(x):
        if ch.size == 0 or ch.min() == ch.max():
            out[i] = ch
        else:
            out[i] = equalize_adapthist(ch, kernel, clip_limit=float(clip_limit) / 256, nbins=256)
    return out


class Normalizer:
    """Intensity normalisation settings (``data.normalize``) and their application.

    Args:
        mode: ``percentile`` (default), ``minmax``, ``meanstd`` or ``none``.
        low, high: percentiles for ``percentile`` mode (default 1 and 99.8).
        scope: ``image`` (statistics of each image) or ``dataset`` (of the training set,
            see :meth:`fit`).
        clip: clip the result to [0, 1].
        clahe: apply CLAHE after the affine map.
        clahe_clip_limit, clahe_tiles: CLAHE clip limit (OpenCV's 8-bit meaning, any bit depth:
            see :func:`clahe`) and tiles per side.
        eps: smallest scale (constant channels map to 0).

    Example:
        >>> norm = Normalizer("percentile", 1, 99.8)
        >>> x = norm(np.random.randint(0, 4096, (2, 64, 64), dtype=np.uint16))
        >>> x.dtype, x.shape
        (dtype('float32'), (2, 64, 64))
    """

    def __init__(
        self,
        mode: str = "percentile",
        low: float = 1.0,
        high: float = 99.8,
        scope: str = "image",
        clip: bool = False,
        clahe: bool = False,
        clahe_clip_limit: float = 2.0,
        clahe_tiles: int = 8,
        eps: float = 1e-6,
    ) -> None:
        from microfm.errors import ConfigError

        if mode not in MODES:
            raise ConfigError(f"data.normalize.mode must be one of {MODES}, got {mode!r}")
        if scope not in SCOPES:
            raise ConfigError(f"data.normalize.scope must be one of {SCOPES}, got {scope!r}")
        if mode == "percentile" and not 0 <= low < high <= 100:
            raise ConfigError(
                f"data.normalize.low/high must satisfy 0 <= low < high <= 100, got {low}, {high}"
            )
        if clahe and (clahe_clip_limit <= 0 or clahe_tiles < 1):
            raise ConfigError("data.normalize.clahe_clip_limit must be > 0 and clahe_tiles >= 1")
        self.mode, self.low, self.high, self.scope = mode, float(low), float(high), scope
        self.clip, self.clahe = bool(clip), bool(clahe)
        self.clahe_clip_limit, self.clahe_tiles = float(clahe_clip_limit), int(clahe_tiles)
        self.eps = float(eps)
        self.dataset_stats: tuple[np.ndarray, np.ndarray] | None = None

    def settings(self) -> dict:
        """The settings as a plain dict (part of cache keys and checkpoints)."""
        return {
            "mode": self.mode,
            "low": self.low,
            "high": self.high,
            "scope": self.scope,
            "clip": self.clip,
            "clahe": self.clahe,
            "clahe_clip_limit": self.clahe_clip_limit,
            "clahe_tiles": self.clahe_tiles,
        }

    def state(self) -> dict:
        """Settings plus fitted dataset statistics, to rebuild the same normalisation for
        inference (see :meth:`from_state`)."""
        state: dict = {"settings": self.settings(), "dataset_stats": None}
        if self.dataset_stats is not None:
            state["dataset_stats"] = [np.asarray(v).tolist() for v in self.dataset_stats]
        return state

    @classmethod
    def from_state(cls, state: dict) -> Normalizer:
        """The normalisation described by :meth:`state` (e.g. read from a checkpoint)."""
        norm = cls(**state["settings"])
        if state.get("dataset_stats") is not None:
            offset, scale = state["dataset_stats"]
            norm.dataset_stats = (np.asarray(offset, float), np.asarray(scale, float))
        return norm

    def stats(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(offset, scale)`` used for ``image``: the dataset's when fitted with dataset
        scope, otherwise the image's own."""
        if self.scope == "dataset":
            if self.dataset_stats is None:
                raise RuntimeError("Normalizer(scope='dataset') used before fit()")
            return self.dataset_stats
        return image_stats(image, self.mode, self.low, self.high)

    def apply(self, image: np.ndarray, offset, scale) -> np.ndarray:
        """The affine map with given statistics, then clip and CLAHE as configured."""
        out = apply_stats(image, offset, scale, clip=self.clip, eps=self.eps)
        if self.clahe:
            out = clahe(out, self.clahe_clip_limit, self.clahe_tiles)
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(C, H, W) of any dtype -> normalised float32 (C, H, W)."""
        return self.apply(image, *self.stats(image))

    def fit(self, images: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Dataset-level statistics over ``images`` (each (C, H, W)), stored and returned.

        min/max and mean/std are exact; percentiles are computed on an even subsample of up to
        65,536 pixels per image and channel.
        """
        count, total, total_sq, lo, hi, samples = 0, None, None, None, None, []
        for image in images:
            x = _channels(image).astype(np.float64)
            finite = np.isfinite(x)
            with np.errstate(over="ignore", invalid="ignore"), _Quiet():
                xz = np.where(finite, x, 0.0)
                total = xz.sum(axis=1) + (0 if total is None else total)
                total_sq = (xz**2).sum(axis=1) + (0 if total_sq is None else total_sq)
                mn, mx = np.nanmin(x, axis=1), np.nanmax(x, axis=1)
            count = finite.sum(axis=1) + count
            lo = mn if lo is None else np.fmin(lo, mn)
            hi = mx if hi is None else np.fmax(hi, mx)
            step = max(1, x.shape[1] // _SUBSAMPLE)
            samples.append(x[:, ::step])
        if total is None:
            raise ValueError("Normalizer.fit() needs at least one image")
        if self.mode == "none":
            stats = (np.zeros_like(total), np.ones_like(total))
        elif self.mode == "minmax":
            with np.errstate(over="ignore", invalid="ignore"):
                stats = (_nan_safe(lo, 0.0), _nan_safe(hi - lo, 0.0))
        elif self.mode == "meanstd":
            with np.errstate(over="ignore", invalid="ignore"):
                mean = total / np.maximum(count, 1)
                var = np.maximum(total_sq / np.maximum(count, 1) - mean**2, 0.0)
            stats = (_nan_safe(mean, 0.0), _nan_safe(np.sqrt(var), 0.0))
        else:
            pooled = np.concatenate(samples, axis=1)
            with _Quiet(), np.errstate(over="ignore", invalid="ignore"):
                p = np.nanpercentile(pooled, [self.low, self.high], axis=1)
                stats = (_nan_safe(p[0], 0.0), _nan_safe(p[1] - p[0], 0.0))
        self.dataset_stats = (np.asarray(stats[0], float), np.asarray(stats[1], float))
        return self.dataset_stats

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"Normalizer({args})"
