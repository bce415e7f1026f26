"""The DINOv2-paper visualisation: PCA of patch features, fitted jointly over a set of images,
mapped to RGB, with the background removed by an Otsu threshold on the first component.

The fitted :class:`RGBBasis` (mean, component signs, threshold, colour ranges) is saved, so a
colour means the same direction in feature space across images and across runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from microfm.analysis.base import Analysis, Images
from microfm.analysis.featureset import FeatureSet
from microfm.analysis.pca import pca
from microfm.errors import ConfigError, DataError

FOREGROUND = ("auto", "above", "below", "none")


@dataclass
class RGBBasis:
    """A fitted PCA-RGB mapping of patch features of size D.

    Attributes:
        mean1, component1: first PCA component over all patches (foreground split).
        threshold: Otsu threshold of the first-component scores.
        foreground_above: foreground patches score above (True) or below the threshold.
        mean, components: the three RGB components (3, D), fitted on foreground patches.
        low, high: per-component 1st/99th percentiles of the foreground scores (colour range).
        use_mask: whether the background is masked at all.
    """

    mean1: np.ndarray
    component1: np.ndarray
    threshold: float
    foreground_above: bool
    mean: np.ndarray
    components: np.ndarray
    low: np.ndarray
    high: np.ndarray
    use_mask: bool = True

    def save(self, path: str | os.PathLike) -> None:
        import io

        from microfm.utils.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, **{k: np.asarray(v) for k, v in self.__dict__.items()})
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RGBBasis:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"analysis.basis: file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        return cls(
            d["mean1"],
            d["component1"],
            float(d["threshold"]),
            bool(d["foreground_above"]),
            d["mean"],
            d["components"],
            d["low"],
            d["high"],
            bool(d["use_mask"]),
        )

    def foreground(self, patches: np.ndarray) -> np.ndarray:
        """Foreground mask of patch features (..., D)."""
        if not self.use_mask:
            return np.ones(patches.shape[:-1], dtype=bool)
        s = (np.asarray(patches, np.float64) - self.mean1) @ self.component1
        return s > self.threshold if self.foreground_above else s <= self.threshold

    def rgb(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RGB map (..., 3) in [0, 1] (background black) and the foreground mask (...)."""
        mask = self.foreground(patches)
        s = (np.asarray(patches, np.float64) - self.mean) @ self.components.T
        rgb = np.clip((s - self.low) / np.maximum(self.high - self.low, 1e-12), 0, 1)
        return rgb * mask[..., None], mask


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximal between-class variance)."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.min() == values.max():
        return float(values[0])
    return float(threshold_otsu(values, nbins=bins))


def fit_rgb_basis(patches: np.ndarray, foreground: str = "auto") -> RGBBasis:
    """Fit the mapping jointly on the patch features (N, h, w, D) of a set of images.

    ``foreground``: which side of the Otsu threshold of the first component is foreground —
    ``above``, ``below``, ``auto`` (the smaller side: objects on a larger background) or
    ``none`` (no mask).
    """
    if foreground not in FOREGROUND:
        raise ConfigError(f"analysis.foreground must be one of {FOREGROUND}, got {foreground!r}")
    x = np.asarray(patches, dtype=np.float64).reshape(-1, patches.shape[-1])
    if len(x) < 4:
        raise ConfigError("PCA-RGB needs at least 4 patches")
    first = pca(x, 1)
    s1 = first["embedding"][:, 0]
    threshold = otsu_threshold(s1)
    above = s1 > threshold
    if foreground == "auto":
        fg_above = above.mean() <= 0.5
    else:
        fg_above = foreground != "below"
    mask = np.ones(len(x), bool) if foreground == "none" else (above if fg_above else ~above)
    if mask.sum() < 4:
        mask = np.ones(len(x), bool)
    fg = x[mask]
    k = min(3, *fg.shape)
    rgb = pca(fg, k)
    comps = np.zeros((3, x.shape[1]))
    comps[:k] = rgb["components"]
    scores = (fg - rgb["mean"]) @ comps.T
    return RGBBasis(
        first["mean"],
        first["components"][0],
        threshold,
        bool(fg_above),
        rgb["mean"],
        comps,
        np.percentile(scores, 1, axis=0),
        np.percentile(scores, 99, axis=0),
        foreground != "none",
    )


class PCARGBAnalysis(Analysis):
    """``analysis=pca_rgb``: PCA-RGB maps of ``n_images`` images (``figs/pca_rgb.png``) and the
    basis (``pca_rgb_basis.npz`` in the run folder; pass it back as ``analysis.basis`` to
    colour other images or runs identically).

    Needs patch tokens: ``microfm-analyze`` extracts them itself (``extract.patch_tokens``).

    Args:
        n_images: images the basis is fitted on and shown (seeded choice).
        foreground: ``auto``, ``above``, ``below`` or ``none`` (see :func:`fit_rgb_basis`).
        basis: a saved basis to apply instead of fitting one.
        **kwargs: see :class:`~microfm.analysis.base.Analysis` (``feature`` is ``patch``).

    Example:
        >>> PCARGBAnalysis(n_images=8).run(fs, Path("figs"))  # doctest: +SKIP
    """

    name = "pca_rgb"
    needs_patch_tokens = True

    def __init__(
        self,
        n_images: int = 12,
        foreground: str = "auto",
        basis: str | None = None,
        feature: str = "patch",
        **kwargs,
    ) -> None:
        super().__init__(feature=feature, **kwargs)
        if foreground not in FOREGROUND:
            raise ConfigError(
                f"analysis.foreground must be one of {FOREGROUND}, got {foreground!r}"
            )
        self.n_images, self.foreground, self.basis = int(n_images), foreground, basis

    def choose(self, fs: FeatureSet) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.permutation(len(fs))[: self.n_images])

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        from microfm.analysis.plots import plot_pca_rgb

        if "patch" not in fs.arrays:
            raise ConfigError(
                "analysis=pca_rgb needs patch tokens: extract with extract.patch_tokens=true "
                "(microfm-analyze does so itself when given backbone= and data=)"
            )
        chosen = self.choose(fs)
        patches = np.asarray(fs.arrays["patch"][chosen], dtype=np.float32)
        if self.basis:
            basis = RGBBasis.load(self.basis)
            if basis.mean.shape[0] != patches.shape[-1]:
                raise ConfigError(
                    f"analysis.basis has {basis.mean.shape[0]} features, the patches "
                    f"{patches.shape[-1]}"
                )
        else:
            basis = fit_rgb_basis(patches, self.foreground)
        basis.save(figs.parent / "pca_rgb_basis.npz")
        rgb, mask = basis.rgb(patches)
        pics = [images(int(i)) for i in chosen] if images is not None else None
        plot_pca_rgb(rgb, pics, [str(fs.paths[i]) for i in chosen], figs / "pca_rgb.png")
        return {
            self.key("foreground_fraction"): float(mask.mean()),
            self.key("n_images"): len(chosen),
        }
