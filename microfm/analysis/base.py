"""What every analysis of ``microfm-analyze`` shares: the feature it reads, its seed, its
metric keys and the checks of what the features must hold."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from microfm.analysis.featureset import FeatureSet
from microfm.errors import ConfigError

Images = Callable[[int], np.ndarray | None]


class Analysis:
    """Base class of the analyses (``conf/analysis/<name>.yaml`` builds one).

    Subclasses set ``name`` and implement :meth:`run`, which returns the metrics (keys
    ``<name>/<feature>/<metric>``) and writes figures into ``figs``; ``images`` (when given)
    returns image ``i`` of the feature set as a (C, H, W) array (or None), for figures that
    show images. The numbers come from the plain functions of the same module, applied to the
    arrays of ``features.npz``, so they can be recomputed from that file alone.

    Args:
        feature: which feature vector (``cls``, ``mean_patch``, ``cls+mean_patch``,
            ``layer<i>_mean_patch``).
        seed: seeds every random choice (splits, bootstrap, UMAP).
        name: the analysis name as the config states it (checked against the class).
    """

    name = "analysis"
    # extraction must keep every patch token (``extract.patch_tokens``)
    needs_patch_tokens = False

    def __init__(self, feature: str = "cls", seed: int = 0, name: str | None = None) -> None:
        if name is not None and name != self.name:
            raise ConfigError(f"analysis.name={name!r} but the analysis is {self.name!r}")
        self.feature = str(feature)
        self.seed = int(seed)

    def key(self, metric: str) -> str:
        return f"{self.name}/{self.feature}/{metric}"

    def run(self, fs: FeatureSet, figs: Path, images: Images | None = None) -> dict[str, float]:
        raise NotImplementedError

    # -- checks -----------------------------------------------------------------------------
    def need_labels(self, fs: FeatureSet) -> np.ndarray:
        if fs.labels is None:
            raise ConfigError(
                f"analysis={self.name} needs class labels but the features have none "
                "(use a dataset with classes, e.g. data=classification)"
            )
        return fs.labels

    def need_domains(self, fs: FeatureSet, at_least: int = 2) -> np.ndarray:
        if fs.domains is None or len(np.unique(fs.domains)) < at_least:
            raise ConfigError(
                f"analysis={self.name} needs images of {at_least} domains: give two features "
                "files (features=[a.npz,b.npz]) or a dataset with a domain column"
            )
        return fs.domains

    def domain_index(self, fs: FeatureSet, name: str | int | None, default: int) -> int:
        """The index of domain ``name`` (a name or an index; None: ``default``)."""
        if name is None:
            return default
        if isinstance(name, int) or str(name).isdigit():
            return int(name)
        if str(name) not in fs.domain_names:
            raise ConfigError(
                f"analysis.{self.name}: domain {name!r} is not one of {fs.domain_names}"
            )
        return fs.domain_names.index(str(name))
