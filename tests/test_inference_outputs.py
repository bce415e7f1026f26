"""A multitask model rebuilt from a checkpoint dict writes every kind of result: instance and
class labels, depth maps, overlays, per-cell tables and a table of image classes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
import torch

from microfm.errors import ConfigError
from microfm.inference import Predictor, load_model
from microfm.inference.checkpoint import InferenceModel, build_inference_model
from microfm.inference.files import find_inputs, predict_files
from microfm.run.build import resolved_config
from microfm.run.config import compose
from microfm.transforms.intensity import Normalizer
from tests.conftest import TINY


@pytest.fixture(scope="module")
def multitask_ckpt() -> dict:
    cfg = resolved_config(
        compose([*TINY, "task=multitask", "task.tasks=[cellseg,classify,semseg,depth]"])
    )
    meta = {"finetune_applied": "full"}
    backbone, tasks = build_inference_model(cfg, meta)
    state = InferenceModel(backbone, tasks, Normalizer()).state_dict()
    return {"state_dict": state, "microfm": {"config": cfg, "meta": meta}}


def test_multitask_checkpoint_writes_every_kind_of_result(multitask_ckpt, tmp_path):
    model = load_model(multitask_ckpt)
    assert model.task_names == ["cellseg", "classify", "semseg", "depth"]
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", rng.integers(0, 60000, (40, 56), np.uint16))
    predictor = Predictor(model, tile_size=32, device="cpu")
    out = tmp_path / "out"
    outcome = predict_files(predictor, find_inputs(tmp_path / "a.tif"), out, progress=False)
    assert outcome.done == ["a"]
    names = {p.name for p in out.iterdir()}
    for expected in (
        "a_cellseg_labels.tif",
        "a_cellseg_overlay.png",
        "a_cellseg_cells.csv",
        "a_semseg_labels.tif",
        "a_semseg_overlay.png",
        "a_depth_depth.tif",
        "classify_predictions.csv",
    ):
        assert expected in names, expected
    assert "a_semseg_cells.csv" not in names  # classes are not cells
    assert "a_semseg_probabilities.tif" not in names  # float maps only with save_raw
    semantic = tifffile.imread(out / "a_semseg_labels.tif")
    assert semantic.shape == (40, 56) and semantic.max() < 3
    depth = tifffile.imread(out / "a_depth_depth.tif")
    assert depth.dtype == np.float32 and depth.shape == (40, 56) and depth.min() > 0
    # a second run adds its image to the class table, keeping the first one's row
    predict_files(predictor, find_inputs(tmp_path / "b.tif"), out, progress=False, save_raw=True)
    with open(out / "classify_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["a", "b"]
    names = model.tasks["classify"].class_names
    probs = [float(rows[0][f"prob_{n}"]) for n in names]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert rows[0]["class"] == names[int(rows[0]["label"])]
    prob_maps = tifffile.imread(out / "b_semseg_probabilities.tif")
    assert prob_maps.shape == (3, 40, 56)
    np.testing.assert_allclose(prob_maps.sum(0), 1.0, atol=1e-5)


def test_classification_only_models_see_the_whole_image_once(multitask_ckpt):
    import copy

    ckpt = copy.deepcopy(multitask_ckpt)
    ckpt["microfm"]["config"]["task"]["tasks"] = ["classify"]
    ckpt["state_dict"] = {
        k: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(("backbone.", "tasks.classify."))
    }
    model = load_model(ckpt)
    predictor = Predictor(model, tile_size=16, device="cpu")
    assert predictor.global_only and model.image_size == 32
    calls = []
    forward = predictor.forward
    predictor.forward = lambda x: calls.append(tuple(x.shape)) or forward(x)
    pred = predictor.predict(np.random.default_rng(1).random((70, 90)).astype(np.float32))
    assert calls == [(1, 1, 32, 32)]  # resized to the training image size, one pass
    assert pred.results["classify"]["probabilities"].shape == (3,)


def test_inference_model_is_built_without_gradient_checkpointing():
    """A run trained with checkpointing predicts and exports with plain blocks."""
    from microfm.backbones.checkpointing import grad_checkpointing_enabled

    cfg = resolved_config(compose([*TINY, "backbone.grad_checkpointing=true"]))
    assert cfg["backbone"]["grad_checkpointing"] is True
    backbone, _ = build_inference_model(cfg, {"finetune_applied": "full"})
    assert not grad_checkpointing_enabled(backbone.model)


def test_heads_in_groups_give_the_outputs_of_the_whole_batch(multitask_ckpt):
    """``head_batch`` runs every head on groups of tiles (the backbone on the whole batch):
    same outputs, and the heads really see the groups."""
    model = load_model(multitask_ckpt)
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    seen: list[int] = []
    hook = model.tasks["cellseg"].register_forward_pre_hook(
        lambda module, args: seen.append(args[1].shape[0])
    )
    with torch.no_grad():
        whole = model(x)
        grouped = model(x, head_batch=2)
    hook.remove()
    assert seen == [5, 2, 2, 1]
    assert whole.keys() == grouped.keys()
    for name in whole:
        torch.testing.assert_close(grouped[name], whole[name], rtol=1e-5, atol=1e-5)


def test_predictor_head_batch_setting(multitask_ckpt):
    model = load_model(multitask_ckpt)
    assert Predictor(model, tile_size=32, device="cpu").head_batch == 2  # auto on CPU
    assert Predictor(model, tile_size=32, head_batch=None, device="cpu").head_batch is None
    with pytest.raises(ConfigError, match="head_batch"):
        Predictor(model, tile_size=32, head_batch=0, device="cpu")
