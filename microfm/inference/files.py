"""Predicting folders of image files: inputs, outputs per image, progress, bad files."""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from microfm.data.io import is_image_path, is_lazy, read_image
from microfm.data.records import by_stem, list_images
from microfm.errors import DataError
from microfm.inference.predictor import Prediction, Predictor
from microfm.inference.writers import (
    PRIMARY_FLOAT,
    cell_table,
    overlay,
    result_path,
    write_csv,
    write_png,
    write_rows,
    write_tiff,
)

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What a :func:`predict_files` run did: names predicted, skipped because their outputs
    exist, and failed with their messages."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def find_inputs(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    recursive: bool = False,
    exclude: Path | None = None,
) -> dict[str, Path]:
    """``{name: path}`` of the images to predict: a file, a folder (its images and ``.zarr``
    stores; sub-folders with ``recursive``, kept in the names), a glob pattern, or a list of
    them. microfm's own results inside ``exclude`` (the output folder, which may be the input
    folder) are left out.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    found: dict[str, Path] = {}
    for s in specs:
        text = os.path.expanduser(str(s))
        path = Path(text)
        root: Path | None = None
        if path.is_dir() and path.suffix.lower() != ".zarr":
            paths = list_images(path, recursive)
            root = path if recursive else None
        elif path.exists():
            paths = [path]
        else:
            paths = sorted(
                Path(p) for p in glob.glob(text, recursive=recursive) if is_image_path(p)
            )
            if not paths:
                raise DataError(f"input: no image file matches {s}")
        if exclude is not None:
            paths = [p for p in paths if not is_result(p, exclude)]
        for name, p in by_stem(paths, root=root).items():
            if name in found and found[name] != p:
                raise DataError(f"input: two images are named {name!r}: {found[name]} and {p}")
            found[name] = p
    if not found:
        raise DataError(f"input: no image files in {spec}")
    return found


_RESULT = re.compile(r"_[A-Za-z0-9]+_(labels|dist|probabilities|depth|overlay|prediction)$")


def is_result(path: Path, output: Path) -> bool:
    """Whether ``path`` is a result microfm-predict wrote into ``output``."""
    from microfm.data.io import image_stem

    inside = Path(output).resolve() in Path(path).resolve().parents
    return inside and bool(_RESULT.search(image_stem(path)))


def existing_outputs(output: Path, name: str, tasks: Sequence[str]) -> list[Path]:
    """Outputs of image ``name`` already in ``output``."""
    folder = (output / name).parent
    stem = Path(name).name
    found = []
    for task in tasks:
        found += [p for p in folder.glob(f"{glob.escape(stem)}_{task}_*") if p.name[0] != "."]
    return found


def write_prediction(
    pred: Prediction,
    raw_image: np.ndarray,
    output: Path,
    name: str,
    predictor: Predictor,
    save_raw: bool = False,
    write_overlay: bool = True,
    cells: bool = True,
) -> tuple[list[Path], dict[str, dict[str, object]]]:
    """Write one image's results; returns the paths and, for global tasks (classification),
    one table row per task."""
    folder = (output / name).parent
    stem = Path(name).name
    written: list[Path] = []
    rows: dict[str, dict[str, object]] = {}
    for task_name, results in pred.results.items():
        task = predictor.model.tasks[task_name]
        instances = getattr(task, "label_key", "") == "instances"
        for key, value in results.items():
            value = np.asarray(value)
            if value.ndim < 2:
                continue
            if key == "labels" or key in PRIMARY_FLOAT or save_raw:
                path = result_path(folder, stem, task_name, key, ".tif")
                write_tiff(path, value)
                written.append(path)
        labels = results.get("labels")
        if labels is not None and np.ndim(labels) == 2:
            if write_overlay:
                path = result_path(folder, stem, task_name, "overlay", ".png")
                write_png(path, overlay(raw_image, labels, "instances" if instances else "classes"))
                written.append(path)
            if instances and cells:
                path = result_path(folder, stem, task_name, "cells", ".csv")
                write_csv(path, cell_table(labels, raw_image))
                written.append(path)
        if all(np.ndim(v) < 2 for v in results.values()):
            rows[task_name] = _global_row(name, task, results)
    return written, rows


def _global_row(name: str, task, results: Mapping[str, np.ndarray]) -> dict[str, object]:
    names = list(getattr(task, "class_names", []) or [])
    label = int(np.asarray(results.get("label", -1)))
    row: dict[str, object] = {"image": name, "label": label}
    if 0 <= label < len(names):
        row["class"] = names[label]
    for k, p in enumerate(np.asarray(results.get("probabilities", [])).ravel()):
        row[f"prob_{names[k] if k < len(names) else k}"] = float(p)
    return row


def merge_rows(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """Add rows (keyed by ``image``) to the CSV at ``path``, replacing rows of the same
    images and keeping the others."""
    old: list[dict[str, object]] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    new = {str(r["image"]): r for r in rows}
    merged = [r for r in old if str(r.get("image")) not in new] + list(new.values())
    write_rows(path, sorted(merged, key=lambda r: str(r["image"])))


def predict_files(
    predictor: Predictor,
    inputs: Mapping[str, Path],
    output: str | os.PathLike,
    overwrite: bool = False,
    save_raw: bool = False,
    write_overlay: bool = True,
    cells: bool = True,
    axes: str | None = None,
    zarr_block: int = 2048,
    zarr_halo: int = 128,
    progress: bool = True,
) -> Outcome:
    """Predict every input image and write its results under ``output``.

    An image whose outputs already exist is skipped unless ``overwrite``; an unreadable image
    is reported (logged, listed in the outcome) and skipped while the others go on. Zarr
    inputs are predicted block by block (:func:`microfm.inference.blocks.predict_zarr`).
    """
    from tqdm.auto import tqdm

    from microfm.inference.blocks import predict_zarr

    output = Path(output).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    tasks = predictor.model.task_names
    outcome = Outcome()
    rows: dict[str, list[dict[str, object]]] = {}
    bar = tqdm(list(inputs.items()), desc="predict", unit="image", disable=not progress)
    for name, path in bar:
        bar.set_postfix_str(name[-40:])
        if not overwrite and existing_outputs(output, name, tasks):
            log.info(
                "%s: outputs exist in %s, skipped (overwrite=true replaces them)", name, output
            )
            outcome.skipped.append(name)
            continue
        try:
            if is_lazy(path):
                (output / name).parent.mkdir(parents=True, exist_ok=True)
                predict_zarr(
                    predictor,
                    path,
                    (output / name).parent,
                    Path(name).name,
                    axes=axes,
                    block_size=zarr_block,
                    halo=zarr_halo,
                    save_raw=save_raw,
                    write_overlay=write_overlay,
                    cells=cells,
                )
            else:
                image = read_image(path, axes=axes)
                pred = predictor.predict(image, source=str(path))
                raw = predictor.select_channels(image, str(path))
                _, image_rows = write_prediction(
                    pred, raw, output, name, predictor, save_raw, write_overlay, cells
                )
                for task, row in image_rows.items():
                    rows.setdefault(task, []).append(row)
        except DataError as exc:
            log.error("skipped: %s", exc)
            outcome.failed.append((name, str(exc)))
            continue
        outcome.done.append(name)
    for task, task_rows in rows.items():
        merge_rows(output / f"{task}_predictions.csv", task_rows)
    return outcome
