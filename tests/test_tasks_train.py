"""Every task trains from its config with the tiny backbone (fast_dev_run), writes its figures,
and the cellseg checkpoint carries the watershed thresholds that test used."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from microfm.errors import ConfigError
from microfm.run.config import compose
from microfm.run.train import train

EXPECTED = {
    "cellseg": ["seg", "det", "op_csb", "ap50", "ap75", "ap90", "f1", "pq"],
    "classify": ["acc", "balanced_acc", "macro_f1"],
    "semseg": ["miou", "mdice", "fg_iou", "fg_dice", "iou_background", "dice_background"],
    "depth": ["rmse", "absrel", "delta1"],
}


def _check(metrics: dict, task: str) -> None:
    for key in EXPECTED[task]:
        value = metrics[f"test/{task}/{key}"]
        assert math.isfinite(value), key
    assert metrics[f"test/{task}/loss"] > 0


@pytest.mark.parametrize(
    "task,extra",
    [
        ("cellseg", []),
        ("classify", []),
        ("semseg", []),
        ("depth", []),
        ("semseg", ["task/head=linear", "task.loss.name=ce_tversky"]),
        ("semseg", ["task/head=dpt", "task.loss.name=ce"]),
        ("cellseg", ["task/head=dpt", "task.threshold_search=null"]),
        ("classify", ["task.head.hidden_dim=32", "task.class_weights=null"]),
        ("cellseg", ["finetune=lora", "backbone.grad_checkpointing=full"]),
    ],
    ids=lambda v: v if isinstance(v, str) else "+".join(v) or "default",
)
def test_task_fast_dev_run(tiny_overrides, task, extra):
    cfg = compose([*tiny_overrides, f"task={task}", "debug=fast", *extra])
    assert cfg.callbacks.checkpoint.monitor == cfg.task.monitor
    assert cfg.callbacks.early_stopping.mode == cfg.task.mode
    _check(train(cfg), task)


@pytest.mark.parametrize("mode", ["fixed", "uncertainty", "gradnorm"])
def test_multitask_fast_dev_run(tiny_overrides, mode):
    cfg = compose(
        [
            *tiny_overrides,
            "task=multitask",
            "debug=fast",
            f"task.weighting.mode={mode}",
            "task.tasks=[cellseg,classify,depth]",
        ]
    )
    metrics = train(cfg)
    for task in ("cellseg", "classify", "depth"):
        _check(metrics, task)
    assert "test/semseg/miou" not in metrics


def test_classify_writes_confusion_matrix(tiny_overrides, tmp_path):
    train(compose([*tiny_overrides, "task=classify", "debug=smoke", "data.n_test=8"]))
    figs = tmp_path / "results" / "cls" / "test" / "figs"
    assert (figs / "classify_confusion_matrix.png").stat().st_size > 0
    assert (figs / "test_classify.png").is_file()


def test_cellseg_checkpoint_carries_the_thresholds_test_used(tiny_overrides, tmp_path):
    """The best checkpoint holds a grid pair and its grid; rebuilding the model from the
    checkpoint alone and segmenting the test set with that pair reproduces the test scores."""
    from microfm.data import SyntheticDataModule
    from microfm.metrics import instance_scores
    from microfm.modules import SupervisedModule
    from microfm.run.build import build
    from microfm.run.tasks import build_tasks

    metrics = train(compose([*tiny_overrides, "task=cellseg", "debug=smoke"]))
    run = tmp_path / "results" / "seg" / "test"
    assert (run / "figs" / "cellseg_threshold_grid.png").stat().st_size > 0
    ckpt = torch.load(run / "ckpts" / "best.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    cells_max, cell_fill = state["tasks.cellseg.thresholds"].tolist()
    cfg = ckpt["microfm"]["config"]
    grid = cfg["task"]["threshold_search"]
    assert round(cells_max, 6) in grid["cells_max"] and round(cell_fill, 6) in grid["cell_fill"]
    scores = state["tasks.cellseg.threshold_grid"].numpy()
    i, j = (
        grid["cells_max"].index(round(cells_max, 6)),
        grid["cell_fill"].index(round(cell_fill, 6)),
    )
    assert scores[i, j] == np.nanmax(scores)

    from omegaconf import OmegaConf

    node = OmegaConf.create(cfg)
    tasks, _ = build_tasks(node.task)
    module = SupervisedModule(build(node.backbone, "backbone"), tasks)
    module.load_state_dict(state)
    module.eval()
    assert module.tasks["cellseg"].postprocess.cells_max == round(cells_max, 6)
    dm = SyntheticDataModule(**{k: v for k, v in cfg["data"].items() if k != "_target_"})
    dm.setup()
    preds, gts = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            labels = module.tasks["cellseg"].predict_instances(module(batch["image"])["cellseg"])
            preds += labels
            gts += list(batch["instances"].numpy())
    n = 2 * cfg["data"]["batch_size"]  # debug=smoke tests two batches
    expected = instance_scores(preds[:n], gts[:n])
    for key in ("op_csb", "seg", "det", "ap50"):
        assert metrics[f"test/cellseg/{key}"] == pytest.approx(expected[key], abs=1e-5)
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["test/cellseg/op_csb"] == metrics["test/cellseg/op_csb"]


def test_classify_without_class_count_fails_before_training(tiny_overrides):
    cfg = compose([*tiny_overrides, "task=classify", "task.num_classes=null"])
    with pytest.raises(ConfigError, match="task.num_classes"):
        train(cfg)
