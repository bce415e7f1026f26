"""``features.npz``: the per-image features of a dataset and what is known about each image.

Arrays (one row per image, in dataset order, split after split):

- ``cls`` (N, D) float32: final-norm CLS token;
- ``mean_patch`` (N, D) float32: mean of the final-norm patch tokens;
- ``layer<i>_mean_patch`` (N, D): mean patch token of block ``i`` (``extract.layers``);
- ``patch`` (N, h, w, D) float16: every patch token (``extract.patch_tokens=true``);
- ``labels`` (N,) int64 when the dataset has class labels, ``domains`` (N,) int64 when it has
  a domain column; ``class_names`` and ``domain_names`` name their values;
- ``paths`` (N,) str: the image file (``@plane``, ``#tile``) or ``<dataset>:<split>:<index>``;
- ``splits`` (N,) str: ``train``, ``val`` or ``test``; ``index`` (N,) int64: the image's index
  in its split's dataset;
- ``meta``: a JSON string (backbone, weights, checkpoint, data, extraction settings).

The file is an ordinary ``.npz`` that loads without pickle:
``np.load("features.npz")["cls"]``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microfm.errors import ConfigError, DataError

# per-row arrays of features.npz that are not features
_ROW_KEYS = ("paths", "splits", "labels", "domains", "index")


@dataclass
class FeatureSet:
    """Features of a set of images with their labels, domains, paths and splits.

    Args:
        arrays: feature arrays by name (``cls``, ``mean_patch``, ``layer<i>_mean_patch``,
            optionally ``patch``), each with one row per image.
        paths: image names (N,).
        splits: split of each image (N,).
        labels: class index per image, or None.
        domains: domain index per image, or None.
        class_names: names of the class indices.
        domain_names: names of the domain indices.
        meta: provenance (JSON-serialisable).
        index: index of each image in its split's dataset, or None.

    Example:
        >>> fs = FeatureSet({"cls": np.zeros((2, 4), np.float32)}, paths=["a", "b"])
        >>> fs.feature("cls").shape
        (2, 4)
    """

    arrays: dict[str, np.ndarray]
    paths: Sequence[str] = ()
    splits: Sequence[str] | None = None
    labels: np.ndarray | None = None
    domains: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    domain_names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(next(iter(self.arrays.values()))) if self.arrays else len(self.paths)
        self.paths = np.asarray(list(self.paths) or [f"{i}" for i in range(n)], dtype=str)
        self.splits = np.asarray(
            list(self.splits) if self.splits is not None else ["train"] * n, dtype=str
        )
        if self.labels is not None:
            self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.domains is not None:
            self.domains = np.asarray(self.domains, dtype=np.int64)
        if self.index is not None:
            self.index = np.asarray(self.index, dtype=np.int64)
        for name, a in [*self.arrays.items(), ("paths", self.paths), ("splits", self.splits)]:
            if len(a) != n:
                raise ValueError(f"features: {name} has {len(a)} rows, expected {n}")
        for name, a in (("labels", self.labels), ("domains", self.domains), ("index", self.index)):
            if a is not None and len(a) != n:
                raise ValueError(f"features: {name} has {len(a)} rows, expected {n}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """Names of the per-image feature vectors (``patch`` maps excluded)."""
        return [k for k in self.arrays if k != "patch"]

    def feature(self, name: str = "cls") -> np.ndarray:
        """The (N, D) float array ``name``; ``a+b`` concatenates two of them (DINOv2's linear
        evaluation uses ``cls+mean_patch``)."""
        parts = name.split("+")
        missing = [p for p in parts if p not in self.names]
        if missing:
            raise ConfigError(
                f"feature {missing[0]!r} is not in the features file (has {self.names}); "
                "intermediate layers need extract.layers=[...] at extraction"
            )
        arrays = [np.asarray(self.arrays[p], dtype=np.float32) for p in parts]
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)

    def subset(self, index: np.ndarray | Sequence[int]) -> FeatureSet:
        """The images at ``index`` (indices or a boolean mask)."""
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return FeatureSet(
            {k: v[idx] for k, v in self.arrays.items()},
            self.paths[idx],
            self.splits[idx],
            None if self.labels is None else self.labels[idx],
            None if self.domains is None else self.domains[idx],
            list(self.class_names),
            list(self.domain_names),
            dict(self.meta),
            None if self.index is None else self.index[idx],
        )

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, np.ndarray] = dict(self.arrays)
        payload["paths"] = self.paths
        payload["splits"] = self.splits
        if self.labels is not None:
            payload["labels"] = self.labels
            payload["class_names"] = np.asarray(self.class_names, dtype=str)
        if self.domains is not None:
            payload["domains"] = self.domains
            payload["domain_names"] = np.asarray(self.domain_names, dtype=str)
        if self.index is not None:
            payload["index"] = self.index
        payload["meta"] = np.asarray(json.dumps(self.meta, sort_keys=True, default=str))
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSet:
        """Read a ``features.npz`` written by :meth:`save` (or by ``microfm-features``)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"features file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a features file ({exc})") from None
        if "paths" not in data:
            raise DataError(f"{path}: not a features file (no 'paths' array)")
        meta = json.loads(str(data.pop("meta"))) if "meta" in data else {}
        names = {
            k: [str(v) for v in data.pop(k)] for k in ("class_names", "domain_names") if k in data
        }
        return cls(
            arrays={k: v for k, v in data.items() if k not in _ROW_KEYS},
            paths=data["paths"],
            splits=data.get("splits"),
            labels=data.get("labels"),
            domains=data.get("domains"),
            class_names=names.get("class_names", []),
            domain_names=names.get("domain_names", []),
            meta=meta,
            index=data.get("index"),
        )


def concat(sets: Sequence[FeatureSet], names: Sequence[str] | None = None) -> FeatureSet:
    """One feature set from several (e.g. two microscopes, extracted separately).

    With more than one set, each set becomes a domain named by ``names`` (default
    ``set0``, ``set1`` ...), replacing the sets' own domains. Labels are kept when every set
    has them with the same class names.
    """
    if len(sets) == 1:
        return sets[0]
    keys = [set(s.arrays) for s in sets]
    common = [
        k
        for k in sets[0].arrays
        if all(k in ks for ks in keys)
        and len({s.arrays[k].shape[1:] for s in sets}) == 1  # same feature size / patch grid
    ]
    if not common:
        raise DataError("the features files share no feature array of the same size")
    names = list(names or [f"set{i}" for i in range(len(sets))])
    same_classes = all(s.labels is not None and s.class_names == sets[0].class_names for s in sets)
    return FeatureSet(
        {k: np.concatenate([s.arrays[k] for s in sets]) for k in common},
        np.concatenate([s.paths for s in sets]),
        np.concatenate([s.splits for s in sets]),
        np.concatenate([s.labels for s in sets]) if same_classes else None,
        np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)]),
        list(sets[0].class_names) if same_classes else [],
        names,
        {"sources": [dict(s.meta) for s in sets]},
        np.concatenate([s.index for s in sets]) if all(s.index is not None for s in sets) else None,
    )


def describe(fs: FeatureSet) -> dict[str, object]:
    """A short summary (sizes, classes, domains) for logs."""
    out: dict[str, object] = {
        "images": len(fs),
        "features": {k: tuple(v.shape[1:]) for k, v in fs.arrays.items()},
    }
    if fs.labels is not None:
        out["classes"] = list(fs.class_names)
    if fs.domains is not None:
        out["domains"] = list(fs.domain_names)
    return out
