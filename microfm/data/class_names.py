"""Class names of a classification dataset from its folders or CSV (see
:mod:`microfm.data.classification`). Kept free of torch and Lightning: the config resolver
``${microfm.class_names:}`` runs it whenever a config is composed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from microfm.data.records import SPLITS, list_images, read_table
from microfm.errors import DataError


def _split_dirs(root: Path) -> bool:
    subdirs = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    return "train" in subdirs and subdirs <= set(SPLITS)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(
        p.name
        for p in folder.iterdir()
        if p.is_dir() and not p.name.startswith(".") and list_images(p, recursive=True)
    )


def _sorted_labels(values: Sequence[str]) -> list[str]:
    unique = sorted(set(values))
    try:
        return [str(v) for v in sorted(int(v) for v in unique)]
    except ValueError:
        return unique


def discover_class_names(
    root: str | Path, csv: str | None = None, label_column: str = "label"
) -> list[str]:
    """Class names of a classification dataset (see the module docstring)."""
    root = Path(str(root)).expanduser()
    if csv:
        rows = read_table(root / csv)
        if label_column not in rows[0]:
            raise DataError(f"{root / csv}: no {label_column!r} column (found {list(rows[0])})")
        return _sorted_labels([r[label_column] for r in rows])
    if not root.is_dir():
        raise DataError(f"data.root: not found: {root}")
    if _split_dirs(root):
        return sorted({c for s in SPLITS if (root / s).is_dir() for c in _class_dirs(root / s)})
    names = _class_dirs(root)
    if not names:
        raise DataError(f"{root}: no class folders with images found")
    return names
