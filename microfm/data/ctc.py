"""``data=ctc``: the Cell Tracking Challenge layout.

::

    root/01/t000.tif ...            root/01_GT/SEG/man_seg000.tif ...
    root/02/t000.tif ...            root/02_GT/SEG/man_seg_005_012.tif  (3-D data: slice 12
                                                                         of frame 5)

Only frames with a segmentation ground truth are used (``gt: SEG`` gold truth, or ``ST``
silver truth). For 3-D sequences annotated slice by slice, each annotated slice is one sample.
The sequence (``01``, ``02``) is the domain; fractions for val/test are stratified by sequence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from microfm.data.file_datamodule import FileDataModule
from microfm.data.records import Record, split_records
from microfm.errors import DataError

_FRAME = re.compile(r"^man_seg(\d+)\.tiff?$")
_SLICE = re.compile(r"^man_seg_(\d+)_(\d+)\.tiff?$")
_SEQUENCE = re.compile(r"^\d+$")


class CTCDataModule(FileDataModule):
    """Cell Tracking Challenge training data (images + segmentation ground truth).

    Args:
        root: the dataset folder (e.g. ``Fluo-N2DH-SIM+``).
        sequences: sequence folders to use (default: all with ground truth).
        gt: ``SEG`` (gold truth) or ``ST`` (silver truth).
        **kwargs: see :class:`FileDataModule`.

    Example:
        >>> dm = CTCDataModule("/data/Fluo-N2DH-GOWT1", targets=["dist"])
        >>> dm.setup()  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        sequences: Sequence[str] | None = None,
        gt: str = "SEG",
        **kwargs,
    ) -> None:
        super().__init__(root, **kwargs)
        if gt not in ("SEG", "ST"):
            raise DataError(f"data.gt must be SEG or ST, got {gt!r}")
        self.sequences = [str(s) for s in sequences] if sequences else None
        self.gt = gt

    def _sequences(self) -> list[str]:
        if self.sequences is not None:
            for s in self.sequences:
                if not (self.root / s).is_dir():
                    raise DataError(f"data.sequences: no folder {self.root / s}")
            return self.sequences
        found = sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _SEQUENCE.match(p.name) and (self.root / f"{p.name}_GT").is_dir()
        )
        if not found:
            raise DataError(
                f"{self.root}: no Cell Tracking Challenge sequence with ground truth "
                "(expected folders like 01/ and 01_GT/SEG/)"
            )
        return found

    def _image(self, seq: str, frame: str, gt_file) -> object:
        for name in (f"t{frame}.tif", f"t{frame}.tiff"):
            if (self.root / seq / name).is_file():
                return self.root / seq / name
        raise DataError(f"{gt_file}: no matching image {self.root / seq / f't{frame}.tif'}")

    def discover(self) -> dict[str, list[Record]]:
        sequences = self._sequences()
        self.domain_names = sequences
        records = []
        for d, seq in enumerate(sequences):
            gt_dir = self.root / f"{seq}_GT" / self.gt
            if not gt_dir.is_dir():
                raise DataError(f"ground truth folder not found: {gt_dir}")
            for f in sorted(gt_dir.iterdir()):
                if m := _FRAME.match(f.name):
                    image = self._image(seq, m.group(1), f)
                    records.append(Record(image, f"{seq}/t{m.group(1)}", instances=f, domain=d))
                elif m := _SLICE.match(f.name):
                    image = self._image(seq, m.group(1), f)
                    z = int(m.group(2))
                    name = f"{seq}/t{m.group(1)}@{z}"
                    records.append(Record(image, name, plane=z, instances=f, domain=d))
            if not any(r.domain == d for r in records):
                raise DataError(f"{gt_dir}: no man_seg*.tif files")
        if self.axes is None and any(r.plane is not None for r in records):
            # 3-D sequences are single-channel stacks, often without axes metadata
            self.axes = self.store.axes = "ZYX"
        return split_records(records, self.split, self.root)
