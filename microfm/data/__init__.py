"""Datasets and DataModules: readers, validation and cache, layouts, downloads.

The names below are imported on first use, so that composing a config (whose resolvers read
dataset folders) or a features-cache hit does not import Lightning and torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CTCDataModule": "ctc",
    "ClassificationDataModule": "classification",
    "DenseDataset": "dense",
    "DomainBalancedDataset": "files",
    "FileDataModule": "file_datamodule",
    "FileDataset": "files",
    "FolderDataModule": "folder",
    "LiveCellDataModule": "livecell",
    "MicroscopyDataModule": "datamodule",
    "SyntheticDataModule": "synthetic_datamodule",
    "UnlabeledDataModule": "unlabeled",
    "read_image": "io",
    "read_label": "io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
