"""``data=classification``: one class per folder, or a CSV of ``path,label`` (multi-channel TIFF
crops welcome).

Layouts::

    root/G1/cell_0001.tif  root/G2/...                    (class per folder)
    root/train/G1/...  root/test/G1/...                  (with fixed splits)
    root/labels.csv: path,label[,split][,domain]          (paths relative to root)

Class names are the sorted folder names (or the sorted distinct CSV labels; integer labels keep
their values) unless ``class_names`` fixes them. ``${data.class_names}`` and
``${data.num_classes}`` resolve from the folder at config time, so a classification head can
take ``num_classes: ${data.num_classes}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from microfm.data.class_names import _split_dirs, discover_class_names
from microfm.data.file_datamodule import FileDataModule
from microfm.data.records import SPLITS, Record, list_images, read_table, split_records
from microfm.errors import ConfigError, DataError


class ClassificationDataModule(FileDataModule):
    """Image classification from class folders or a CSV.

    Items are ``image`` (C, image_size, image_size), ``label`` and, with a domain column,
    ``domain``. Splits by fractions are stratified by class (and domain).

    Args:
        root: the dataset folder.
        csv: CSV file (relative to ``root``) with ``path`` and ``label`` columns, optional
            ``split`` (train/val/test) and ``domain``; None for class folders.
        class_names: class names in index order (None: discovered).
        num_classes: expected number of classes (checked against the data when given).
        path_column, label_column, split_column, domain_column: CSV column names.
        image_size: images are resized to this square size (bilinear).
        **kwargs: see :class:`FileDataModule`.

    Example:
        >>> dm = ClassificationDataModule("/data/mlcp", in_chans=3, image_size=48)
        >>> dm.setup(); dm.num_classes  # doctest: +SKIP
        7
    """

    def __init__(
        self,
        root: str,
        csv: str | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str = "split",
        domain_column: str = "domain",
        image_size: int = 64,
        **kwargs,
    ) -> None:
        kwargs.setdefault("crop_size", None)
        super().__init__(root, image_size=image_size, **kwargs)
        self.csv = csv
        self.columns = (path_column, label_column, split_column, domain_column)
        self._class_names = [str(c) for c in class_names] if class_names else None
        self._num_classes = int(num_classes) if num_classes else None

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = discover_class_names(self.root, self.csv, self.columns[1])
        return self._class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _index(self, label: str, where: str) -> int:
        try:
            return self.class_names.index(str(label))
        except ValueError:
            raise DataError(
                f"{where}: label {label!r} is not one of data.class_names {self.class_names}"
            ) from None

    def _records_for(self, path: Path, name: str, label: int, domain=None) -> list[Record]:
        # one image per file: the validation pass rejects stacks, naming the file
        return [Record(path, name, label=label, domain=domain)]

    def _from_csv(self) -> tuple[list[Record], dict[str, list[Record]]]:
        path_col, label_col, split_col, domain_col = self.columns
        table = self.root / self.csv
        rows = read_table(table)
        if path_col not in rows[0] or label_col not in rows[0]:
            raise DataError(f"{table}: needs {path_col!r} and {label_col!r} columns")
        domains = sorted({r[domain_col] for r in rows if r.get(domain_col)})
        self.domain_names = domains
        pool, preset = [], {s: [] for s in SPLITS}
        for i, row in enumerate(rows, start=2):
            file = (self.root / row[path_col]).expanduser()
            where = f"{table} line {i}"
            if not file.exists():
                raise DataError(f"{where}: image not found: {file}")
            domain = domains.index(row[domain_col]) if row.get(domain_col) else None
            recs = self._records_for(
                file, row[path_col], self._index(row[label_col], where), domain
            )
            split = (row.get(split_col) or "").strip()
            if split and split not in SPLITS:
                raise DataError(f"{where}: split {split!r} is not one of {SPLITS}")
            (preset[split] if split else pool).extend(recs)
        return pool, preset

    def _from_folders(self, base: Path) -> list[Record]:
        records = []
        for label, name in enumerate(self.class_names):
            folder = base / name
            if not folder.is_dir():
                continue
            for path in list_images(folder, recursive=True):
                rel = path.relative_to(base).as_posix()
                records.extend(self._records_for(path, rel, label))
        return records

    def discover(self) -> dict[str, list[Record]]:
        if self._num_classes is not None and self._num_classes != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self._num_classes} but the data have {self.num_classes} "
                f"classes {self.class_names}"
            )
        if self.csv:
            pool, preset = self._from_csv()
            if any(preset.values()):
                preset["train"] = preset["train"] + pool
                split = {**self.split, **{s: None for s in ("val", "test") if preset[s]}}
                return split_records([], split, self.root, preset)
            return split_records(pool, self.split, self.root)
        if _split_dirs(self.root):
            preset = {s: self._from_folders(self.root / s) for s in SPLITS}
            split = {**self.split, **{s: None for s in ("val", "test") if preset[s]}}
            return split_records([], split, self.root, preset)
        records = self._from_folders(self.root)
        if not records:
            raise DataError(f"{self.root}: no images in the class folders")
        return split_records(records, self.split, self.root)
