"""Evaluation of a checkpoint on a dataset split through the full prediction path.

Every image of the split goes through :class:`~microfm.inference.Predictor` (whole-image
normalisation, sliding window, blending, post-processing on the blended image), not the
training crops; each task scores the blended output with its own metrics
(``task.metrics("test")``, the same code that scores the test split during training), per image
and over the whole split. For cell segmentation the watershed thresholds can first be searched
again on a validation split, on predictions of the same path.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from microfm.errors import ConfigError, DataError
from microfm.inference.predictor import Predictor

log = logging.getLogger(__name__)


def eval_datamodule(config: Mapping[str, Any], data: Any = None):
    """The DataModule of an evaluation: ``data`` (a config node, e.g. ``data=folder`` composed by
    ``microfm-eval``) or, when None, the training data of the checkpoint's ``config``.

    Interpolations of ``data`` (``${backbone.patch_size}``, ``${seed}``...) resolve against
    the training config.
    """
    from omegaconf import OmegaConf

    from microfm.run.build import build
    from microfm.run.config import register_resolvers

    register_resolvers()
    root = OmegaConf.create(dict(config))
    if data is not None:
        OmegaConf.set_struct(root, False)
        root.data = OmegaConf.create(OmegaConf.to_container(data, resolve=False))
    if OmegaConf.is_missing(root.data, "root"):
        raise ConfigError("data.root is not set: give the dataset location, data.root=/path")
    node = OmegaConf.create(OmegaConf.to_container(root, resolve=True)["data"])
    return build(node, "data", augment=None, targets=[])


def _name(dataset, index: int, split: str) -> str:
    from microfm.data.io import image_stem

    records = getattr(dataset, "records", None)
    if records is not None:
        rec = records[index]
        name = image_stem(rec.member or rec.image)
        return f"{name}_p{rec.plane}" if getattr(rec, "plane", None) is not None else name
    return f"{split}_{index:04d}"


def _batch(arrays: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Targets of one image as a batch of one, in the dtypes of the training batches."""
    out: dict[str, torch.Tensor] = {}
    if "instances" in arrays:
        out["instances"] = torch.from_numpy(np.asarray(arrays["instances"], np.int32))[None]
    if "semantic" in arrays:
        out["semantic"] = torch.from_numpy(np.asarray(arrays["semantic"], np.int64))[None]
    if "depth" in arrays:
        depth = np.asarray(arrays["depth"], np.float32)
        out["depth"] = torch.from_numpy(depth.reshape(1, 1, *depth.shape[-2:]).copy())
    if arrays.get("label") is not None:
        out["label"] = torch.tensor([int(arrays["label"])], dtype=torch.int64)
    return out


def samples(predictor: Predictor, dataset, split: str) -> Iterator[tuple[str, dict, dict]]:
    """(name, blended raw outputs, targets) for every image of a dataset split.

    File-backed datasets give raw images (normalised here with the checkpoint's
    normalisation); in-memory ones (synthetic) are normalised already.
    """
    for i in range(len(dataset)):
        arrays, norm = dataset.arrays(i)
        image = np.asarray(arrays["image"])
        source = _name(dataset, i, split)
        x = image.astype(np.float32) if norm is None else predictor.prepare(image, source)
        yield source, predictor.raw(x), _batch(arrays)


def search_thresholds(
    predictor: Predictor,
    dataset,
    grids: Mapping[str, Mapping[str, Sequence[float]]],
    split: str = "val",
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Choose the watershed thresholds of each instance task on ``dataset`` (through the full
    prediction path) and set them in the model; returns the pair and score per task."""
    from tqdm.auto import tqdm

    from microfm.metrics.threshold_grid import ThresholdGridMetrics

    tasks = predictor.model.tasks
    metrics = {
        name: ThresholdGridMetrics(
            grid["cells_max"],
            grid["cell_fill"],
            score=tasks[name].score_key,
            min_area=tasks[name].min_area,
            thresholds=tasks[name].iou_thresholds,
        )
        for name, grid in grids.items()
    }
    it = samples(predictor, dataset, split)
    for _, raw, batch in tqdm(it, total=len(dataset), desc=f"search {split}", disable=not progress):
        if "instances" not in batch:
            continue
        for name, metric in metrics.items():
            metric.update(raw[name][:1], batch["instances"])
    chosen = {}
    for name, metric in metrics.items():
        if metric.update_count == 0:
            raise DataError(f"the {split} split has no instance labels for the threshold search")
        values = metric.compute()
        task = tasks[name]
        task.thresholds.copy_(torch.stack([values["cells_max"], values["cell_fill"]]).double())
        chosen[name] = {
            "cells_max": task.postprocess.cells_max,
            "cell_fill": task.postprocess.cell_fill,
            task.score_key: float(values[task.score_key]),
        }
        log.info("%s thresholds from %s: %s", name, split, chosen[name])
    return chosen


def _scalars(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        value = torch.as_tensor(value)
        if value.numel() == 1:
            out[key] = float(value)
    return out


def evaluate(
    predictor: Predictor, dataset, split: str = "test", stage: str = "eval", progress: bool = False
) -> tuple[dict[str, float], list[dict[str, object]]]:
    """Score every task on a dataset split through the full prediction path.

    Returns:
        ``{"<stage>/<task>/<metric>": value}`` over the whole split, and one row per image
        (``image`` and ``<task>/<metric>`` of that image alone).
    """
    from tqdm.auto import tqdm

    tasks = predictor.model.tasks
    totals = {name: task.metrics("test") for name, task in tasks.items()}
    rows: list[dict[str, object]] = []
    counts = dict.fromkeys(tasks, 0)
    it = samples(predictor, dataset, split)
    for name, raw, batch in tqdm(
        it, total=len(dataset), desc=f"eval {split}", disable=not progress
    ):
        row: dict[str, object] = {"image": name}
        for task_name, task in tasks.items():
            one = task.metrics("test")
            pred = torch.from_numpy(np.ascontiguousarray(raw[task_name]))[None]
            task.update_metrics(one, pred, batch)
            if one.update_count == 0:  # this image has no target for the task
                continue
            values = dict(one.compute())
            task.epoch_end("test", one, values)
            row.update({f"{task_name}/{k}": v for k, v in _scalars(values).items()})
            totals[task_name].merge_state(one)
            counts[task_name] += 1
        rows.append(row)
    metrics: dict[str, float] = {}
    for task_name, task in tasks.items():
        if counts[task_name] == 0:
            log.warning("no image of the %s split has a target for task %s", split, task_name)
            continue
        with warnings.catch_warnings():  # states merged in, not updated: nothing to warn about
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            values = dict(totals[task_name].compute())
        task.epoch_end("test", totals[task_name], values)
        metrics.update({f"{stage}/{task_name}/{k}": v for k, v in _scalars(values).items()})
        metrics[f"{stage}/{task_name}/num_images"] = float(counts[task_name])
    return metrics, rows
