"""Tasks on their own: missing targets, finalize, class weights, stored watershed thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from microfm.errors import DataError
from microfm.heads import ClassificationHead, DPTHead, LinearHead, UNetDecoder
from microfm.metrics import instance_scores
from microfm.tasks import CellSegTask, ClassifyTask, DepthTask, SemSegTask
from microfm.tasks.classify import balanced_weights
from microfm.transforms import distance_map

D = 32


def feats(B=3, h=4, w=4, n=4):
    return {
        "cls": torch.randn(B, D),
        "patch": torch.randn(B, D, h, w),
        "layers": [torch.randn(B, D, h, w) for _ in range(n)],
    }


def classify_task(**kw):
    return ClassifyTask(ClassificationHead(D, 3), num_classes=3, **kw)


def semseg_task():
    return SemSegTask(LinearHead(D, 4, out_channels=3), layers=[0, 1, 2, 3], num_classes=3)


def depth_task():
    return DepthTask(DPTHead(D, 4, features=8), layers=[0, 1, 2, 3])


def test_missing_labels_contribute_nothing_to_the_loss():
    task = classify_task()
    logits = torch.randn(4, 3, requires_grad=True)
    label = torch.tensor([0, -1, 2, -1])
    loss = task.compute_loss(logits, {"label": label})
    ref = task.loss(logits[[0, 2]], {"label": label[[0, 2]]})
    assert torch.isclose(loss, ref)
    loss.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0 and logits.grad[[0, 2]].abs().sum() > 0
    none = task.compute_loss(logits, {"label": torch.full((4,), -1)})
    assert float(none.detach()) == 0.0 and none.requires_grad
    assert float(task.compute_loss(logits, {"image": torch.zeros(4)}).detach()) == 0.0


@pytest.mark.parametrize("kind", ["semseg", "depth", "cellseg"])
def test_dense_samples_without_targets_are_left_out(kind):
    B, H = 3, 32
    pred = torch.randn(B, 3 if kind == "semseg" else 1, H, H, requires_grad=True)
    if kind == "semseg":
        task = semseg_task()
        batch = {"semantic": torch.randint(0, 3, (B, H, H))}
        batch["semantic"][1] = -1
    elif kind == "depth":
        task = depth_task()
        batch = {"depth": torch.rand(B, 1, H, H) + 0.5}
        batch["depth"][1] = 0.0
    else:
        task = CellSegTask(UNetDecoder(D, 4), layers=[0, 1, 2, 3])
        inst = torch.zeros(B, H, H, dtype=torch.int32)
        inst[:, 4:12, 4:12] = 1
        inst[1] = -1
        batch = {"instances": inst, "dist": torch.rand(B, 1, H, H)}
        pred = torch.sigmoid(pred)
    assert task.valid_samples(batch).tolist() == [True, False, True]
    loss = task.compute_loss(pred, batch)
    keep = torch.tensor([0, 2])
    assert torch.isclose(loss, task.loss(pred[keep], {k: v[keep] for k, v in batch.items()}))
    grad = torch.autograd.grad(loss, pred)[0]
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0
    metric = task.metrics("test")
    out = task.update_metrics(metric, pred.detach(), batch)
    assert out[1] is None and out[0] is not None


def test_semseg_rejects_classes_beyond_num_classes():
    task = semseg_task()
    with pytest.raises(DataError, match="task.num_classes=3"):
        task.loss(torch.randn(1, 3, 4, 4), {"semantic": torch.full((1, 4, 4), 5)})


def test_finalize_of_every_task():
    out = semseg_task().finalize(np.random.rand(3, 16, 16).astype(np.float32))
    assert out["labels"].dtype == np.int32 and out["labels"].shape == (16, 16)
    assert np.allclose(out["probabilities"].sum(0), 1, atol=1e-5)
    depth = depth_task().finalize(np.log(np.full((1, 8, 8), 2.5, np.float32)))["depth"]
    assert depth.shape == (8, 8) and np.allclose(depth, 2.5)
    cls = classify_task().finalize(np.array([0.1, 3.0, -1.0]))
    assert int(cls["label"]) == 1 and cls["probabilities"].shape == (3,)
    gt = np.zeros((24, 24), np.int32)
    gt[2:10, 2:10], gt[12:20, 12:22] = 1, 2
    cell = CellSegTask(UNetDecoder(D, 4), layers=[0, 1, 2, 3]).finalize(distance_map(gt)[None])
    assert instance_scores(cell["labels"], gt)["ap90"] == 1.0


def test_depth_task_predicts_log_depth_and_scores_depth():
    task = depth_task()
    t = torch.rand(2, 1, 32, 32) + 1
    metric = task.metrics()
    task.update_metrics(metric, t.log(), {"depth": t})
    assert float(metric.compute()["absrel"]) < 1e-6
    assert task(feats(2), torch.rand(2, 1, 32, 32)).shape == (2, 1, 32, 32)


def test_classify_prepare_takes_names_and_balanced_weights():
    from microfm.data import SyntheticDataModule

    dm = SyntheticDataModule(n_train=12, n_val=2, n_test=2, image_size=32, batch_size=4)
    dm.setup()
    task = classify_task(class_weights="balanced")
    task.prepare(dm)
    labels = np.array([s["label"] for s in dm.datasets["train"].samples])
    present = np.unique(labels)
    expected = compute_class_weight("balanced", classes=present, y=labels)
    assert np.allclose(task.criterion.class_weights.numpy()[present], expected)
    assert task.class_names == ["round", "elongated", "lobed"]
    # names travel in the state dict (extra state)
    fresh = classify_task()
    fresh.load_state_dict(task.state_dict())
    assert fresh.class_names == task.class_names
    assert torch.equal(fresh.criterion.class_weights, task.criterion.class_weights)
    assert balanced_weights(np.array([0, 0, 0, 1]), 3).tolist() == [2 / 3, 2.0, 0.0]


def test_cellseg_thresholds_are_buffers_that_test_and_predict_use():
    search = {"cells_max": [0.4, 0.6], "cell_fill": [0.1, 0.3]}
    task = CellSegTask(UNetDecoder(D, 4), layers=[0, 1, 2, 3], threshold_search=search)
    assert task.postprocess.cells_max == 0.47 and task.postprocess.cell_fill == 0.09
    gt = np.zeros((2, 32, 32), np.int32)
    gt[:, 4:14, 4:14], gt[:, 14:26, 6:18] = 1, 2  # touching cells
    dist = torch.from_numpy(np.stack([distance_map(g) for g in gt]))[:, None] * 0.8
    val = task.metrics("val")
    assert task.update_metrics(val, dist, {"instances": torch.from_numpy(gt)}) is None
    values = dict(val.compute())
    task.epoch_end("val", val, values)
    assert "grid" not in values  # not logged
    chosen = (float(values["cells_max"]), float(values["cell_fill"]))
    assert chosen in [(cm, cf) for cm in search["cells_max"] for cf in search["cell_fill"]]
    state = task.state_dict()
    assert "thresholds" in state and "threshold_grid" in state
    fresh = CellSegTask(UNetDecoder(D, 4), layers=[0, 1, 2, 3], threshold_search=search)
    fresh.load_state_dict(state)
    assert (fresh.postprocess.cells_max, fresh.postprocess.cell_fill) == pytest.approx(chosen)
    test_metric = fresh.metrics("test")
    labels = fresh.update_metrics(test_metric, dist, {"instances": torch.from_numpy(gt)})
    ws = fresh.postprocess
    assert all(np.array_equal(lab, ws(d)) for lab, d in zip(labels, dist.numpy()[:, 0]))
    assert float(test_metric.compute()["op_csb"]) == pytest.approx(float(values["op_csb"]))


def test_cellseg_threshold_heatmap(tmp_path):
    search = {"cells_max": [0.4, 0.6], "cell_fill": [0.1, 0.3]}
    task = CellSegTask(UNetDecoder(D, 4), layers=[0, 1, 2, 3], threshold_search=search)
    task.threshold_grid.copy_(torch.tensor([[0.5, 0.6], [0.7, 0.4]]))
    gt = np.zeros((16, 16), np.int32)
    gt[4:10, 4:10] = 1
    task.plot_examples(
        [{"image": np.random.rand(1, 16, 16), "target": gt, "pred": gt}],
        tmp_path / "test_cellseg.png",
    )
    assert (tmp_path / "cellseg_threshold_grid.png").stat().st_size > 0
    with pytest.raises(ValueError, match="cells_max and cell_fill"):
        CellSegTask(UNetDecoder(D, 4), layers=[0], threshold_search={"seed": [0.5]})
