"""The feature cache: ``features.npz`` files keyed by everything that changes the features.

A key hashes (canonical JSON, SHA-256) the backbone settings, the weights file and checkpoint
(path, size, modification time), the adapter, the data settings, a fingerprint of the data
files (path, size, modification time of every file under the data roots) and the extraction
settings. Computing a key reads no image, so a repeated analysis loads its features without
building the dataset or the model.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

from microfm.analysis.featureset import FeatureSet

FORMAT_VERSION = 1
_GLOB_CHARS = "*?["


def file_stamp(path: str | os.PathLike | None) -> list | None:
    """``[absolute path, size, mtime_ns]`` of a file; ``[text]`` for what is not a local file
    (a URL, a named release); None for None."""
    if path is None:
        return None
    p = Path(str(path)).expanduser()
    if str(path).startswith(("http://", "https://")) or not p.is_file():
        return [str(path)]
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def _files(source: str) -> list[Path]:
    if any(c in source for c in _GLOB_CHARS):
        return sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True))
    p = Path(source).expanduser()
    if p.is_dir():
        return sorted(q for q in p.rglob("*") if q.is_file())
    return [p] if p.exists() else []


def data_fingerprint(roots: str | os.PathLike | list | tuple | None) -> str | None:
    """SHA-256 over (path, size, mtime) of every file under ``roots`` (folders recursively,
    glob patterns expanded); None when there is no root (generated data)."""
    if roots is None:
        return None
    sources = [str(roots)] if isinstance(roots, (str, os.PathLike)) else [str(r) for r in roots]
    h = hashlib.sha256()
    for source in sources:
        h.update(f"\0{source}\0".encode())
        for f in _files(source):
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(parts: Mapping[str, object]) -> str:
    """SHA-256 of the canonical JSON of ``parts`` plus the cache format version."""
    text = json.dumps({"version": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class FeatureCache:
    """Feature sets stored as ``<folder>/<key>.npz``, written atomically.

    Args:
        folder: the cache folder (None: a cache that stores nothing).

    Example:
        >>> cache = FeatureCache("~/.cache/microfm/features")
        >>> cache.get("0" * 64) is None
        True
    """

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = Path(folder).expanduser() if folder else None

    def path(self, key: str) -> Path | None:
        return self.folder / f"{key}.npz" if self.folder is not None else None

    def get(self, key: str) -> FeatureSet | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return FeatureSet.load(path)
        except Exception:  # a damaged entry is recomputed
            return None

    def put(self, key: str, fs: FeatureSet) -> Path | None:
        path = self.path(key)
        if path is not None:
            fs.save(path)
        return path
