"""Which images fit a model and which evaluate it: the dataset's own splits, or a seeded
stratified split."""

from __future__ import annotations

import numpy as np

from microfm.errors import ConfigError

MODES = ("auto", "dataset", "random")


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``: about ``fraction`` of each class held out (at least one
    image of every class with two or more), seeded.

    Example:
        >>> a, b = stratified_split(np.array([0, 0, 0, 1, 1, 1]), 0.34)
        >>> sorted(np.r_[a, b].tolist())
        [0, 1, 2, 3, 4, 5]
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n = round(fraction * len(idx))
        n = min(max(n, 1), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n])
        keep.append(idx[n:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def train_test_indices(
    splits: np.ndarray,
    labels: np.ndarray | None,
    mode: str = "auto",
    test_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the images that fit (``train`` and ``val``) and those that evaluate
    (``test``).

    ``dataset``: the dataset's splits (an error when it has no test split); ``random``: a
    seeded split stratified by class (``test_fraction`` held out); ``auto``: the dataset's
    splits when there are both training and test images, otherwise random.
    """
    if mode not in MODES:
        raise ConfigError(f"split must be one of {MODES}, got {mode!r}")
    splits = np.asarray(splits)
    fit = np.flatnonzero(splits != "test")
    test = np.flatnonzero(splits == "test")
    if mode == "dataset" or (mode == "auto" and len(fit) and len(test)):
        if not len(test) or not len(fit):
            raise ConfigError(
                "split=dataset but the features have no test (or no training) images; "
                "use split=random"
            )
        return fit, test
    lab = labels if labels is not None else np.zeros(len(splits), dtype=np.int64)
    return stratified_split(lab, test_fraction, seed)
