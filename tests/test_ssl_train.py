"""task=mae and task=dino from their configs (tiny backbones, synthetic data and the shared EM
stack), and the two-stage workflow: self-supervised pretraining -> ckpts/backbone.pth ->
backbone.weights= in a supervised task; continued pretraining from weights with LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from microfm.backbones import build_backbone
from microfm.run.config import compose
from microfm.run.train import train

DINO = [
    "task=dino",
    "task.head.out_dim=64",
    "task.head.hidden_dim=32",
    "task.head.bottleneck_dim=16",
    "task.views.global_size=32",
    "task.views.local_size=16",
    "task.views.n_local=2",
]
MAE = ["task=mae", "task.decoder.dim=32", "task.decoder.num_heads=4"]
PROBE = [
    "callbacks.knn.probe.n_train=16",
    "callbacks.knn.probe.n_val=8",
    "callbacks.knn.probe.image_size=32",
    "callbacks.knn.k=5",
]


def _run_dir(tmp_path, task_type="ssl", experiment="test"):
    return tmp_path / "results" / task_type / experiment


@pytest.mark.parametrize(
    "overrides",
    [
        [*MAE],
        [*MAE, "backbone=vit_test_dinov2", "task.views=null", "task.norm_pix_loss=false"],
        [*DINO],
        [*DINO, "backbone=vit_test_dinov2", "task.centering=sinkhorn", "task.koleo_weight=0"],
    ],
    ids=["mae", "mae_abs_pos", "dino", "dino_abs_pos_sinkhorn"],
)
def test_ssl_fast_dev_run(tiny_overrides, tmp_path, overrides):
    metrics = train(compose([*tiny_overrides, *overrides, *PROBE, "debug=fast"]))
    run = _run_dir(tmp_path)
    assert metrics["val/loss"] > 0 and 0 <= metrics["val/knn/acc"] <= 1
    assert not any(k.startswith("test/") for k in metrics)
    state = torch.load(run / "ckpts" / "backbone.pth", weights_only=True)
    assert metrics["backbone_export"] == str(run / "ckpts" / "backbone.pth")
    assert "patch_embed.proj.weight" in state and not any(k.startswith("backbone.") for k in state)
    if "task=mae" in overrides:
        assert (run / "figs" / "mae_reconstructions.png").stat().st_size > 0
    else:
        assert {"val/dino/dino_loss", "val/dino/ibot_loss"} <= set(metrics)


def test_pretrain_then_finetune_with_the_exported_backbone(tiny_overrides, tmp_path):
    """SSL for a few steps, then cellseg with backbone.weights=<run>/ckpts/backbone.pth."""
    train(compose([*tiny_overrides, *DINO, *PROBE, "debug=smoke", "experiment_id=pre"]))
    weights = _run_dir(tmp_path, experiment="pre") / "ckpts" / "backbone.pth"
    ckpt = torch.load(weights.parent / "last.ckpt", map_location="cpu", weights_only=False)
    teacher = {
        k[len("teacher.backbone.model.") :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("teacher.backbone.model.")
    }
    exported = torch.load(weights, weights_only=True)
    assert exported.keys() == teacher.keys()
    assert all(torch.equal(exported[k], teacher[k]) for k in teacher)
    metrics = train(
        compose([*tiny_overrides, "task=cellseg", "debug=fast", f"backbone.weights={weights}"])
    )
    assert metrics["backbone_pretrained"] is True
    assert metrics["finetune_applied"] == "lora"  # pretrained weights: the task's LoRA default
    loaded = build_backbone("vit_test", weights=str(weights), in_chans=1)
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in exported.items())
    # the Lightning checkpoint itself works as weights too: the teacher, not the student
    from_ckpt = build_backbone("vit_test", weights=str(weights.parent / "last.ckpt"), in_chans=1)
    assert from_ckpt.weights_format == "DINO teacher"
    assert all(torch.equal(from_ckpt.model.state_dict()[k], v) for k, v in teacher.items())


def test_continued_pretraining_from_weights_through_lora(tiny_overrides, tmp_path):
    torch.manual_seed(0)
    official = tmp_path / "official.pth"
    torch.save(build_backbone("vit_test", in_chans=1).model.state_dict(), official)
    cfg = compose(
        [
            *tiny_overrides,
            "experiment=dino_continue",
            "backbone=vit_test",
            f"backbone.weights={official}",
            "data=synthetic",
            "data.image_size=32",
            "data.batch_size=4",
            "finetune=lora",
            "task.backbone_freeze=2",
            *DINO[1:],
            *PROBE,
            "debug=smoke",
        ]
    )
    assert cfg.task.layer_decay == 0.9 and cfg.backbone.require_pretrained
    metrics = train(cfg)
    assert metrics["finetune_applied"] == "lora" and metrics["backbone_pretrained"] is True
    exported = torch.load(_run_dir(tmp_path) / "ckpts" / "backbone.pth", weights_only=True)
    assert not any("lora" in k for k in exported)
    start = torch.load(official, weights_only=True)
    changed = [k for k in start if not torch.equal(start[k], exported[k])]
    # the recipe's LoRA adapts the attention's qkv and proj (merged into them at export)
    adapted = sorted(k for k in start if k.endswith(("attn.qkv.weight", "attn.proj.weight")))
    assert sorted(changed) == adapted


@pytest.mark.shared
def test_mae_on_the_unlabelled_em_stack(shared, tmp_path):
    root = shared / "data" / "drosophila_vnc_em" / "stack2" / "raw"
    cfg = compose(
        [
            "backbone=vit_test",
            f"results_root={tmp_path / 'results'}",
            "experiment_id=test",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            *MAE,
            *PROBE,
            "data=unlabeled",
            f"data.root={root}",
            "data.crop_size=32",
            "data.batch_size=4",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "debug=fast",
        ]
    )
    metrics = train(cfg)
    assert metrics["val/loss"] > 0
    saved = json.loads((_run_dir(tmp_path) / "metrics.json").read_text())
    assert saved["backbone_export"].endswith("backbone.pth")


def _spread_weights(folder) -> str:
    """A vit_test checkpoint with large random weights. At timm's initialisation the class
    tokens of a tiny ViT nearly coincide (nearest-neighbour distances ~3e-6), so KoLeo's
    -log(distance) turns float rounding into gradients; these weights spread the features
    (distances ~1e-4) and the comparison tests the computation, not the rounding."""
    from microfm.backbones import build_backbone

    torch.manual_seed(0)
    model = build_backbone("vit_test", in_chans=1).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 or "token" in name:
                p.normal_(0, 0.3 if p.ndim == 2 else 0.5)
    path = folder / "spread.pth"
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.mark.slow
def test_two_process_dino_matches_one_process(tmp_path):
    """A 2-process DDP (gloo) DINO run through cluster=local, with iBOT masks, KoLeo, noise on
    every view and drop-path, computes the gradients of the single-process run on the same
    global batch (views, masks, noise and dropped paths depend on the sample, not on the
    process or the batch), its center (all-reduced) follows, and the run ends with the same
    losses. Before per-sample randomness, every rank drew the same masks, noise and drop-path
    choices from the same global seed."""
    from tests.conftest import TINY
    from tests.test_distributed import ddp_and_single_runs

    common = [
        *TINY,
        *DINO,
        f"backbone.weights={_spread_weights(tmp_path)}",
        *PROBE,
        "data.n_train=16",
        "data.batch_size=4",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "task.ibot_weight=1.0",
        "task.koleo_weight=0.1",
        "task.koleo_gather=true",  # DINOv2 searches neighbours per process; one process has one
        "task.mask_probability=0.5",
        "task.views.noise=0.05",
        "task.views.noise_p=1.0",
        "backbone.drop_path_rate=0.3",
        f"results_root={tmp_path}",
    ]
    single, ddp_grads, single_grads = ddp_and_single_runs(tmp_path, common)
    assert set(ddp_grads) == set(single_grads) and len(single_grads) > 50
    for name, grad in single_grads.items():
        # the backbone's gradients are tiny sums that nearly cancel (the class tokens of a
        # random ViT barely depend on the image): compare relative to each tensor's scale
        scale = float(grad.abs().max())
        torch.testing.assert_close(ddp_grads[name], grad, rtol=0, atol=1e-2 * scale + 1e-12)
    head = [n for n in single_grads if n.startswith("head.")]
    for name in head:
        torch.testing.assert_close(ddp_grads[name], single_grads[name], rtol=1e-3, atol=1e-5)
    ddp = json.loads((tmp_path / "ssl" / "ddp_j0" / "metrics.json").read_text())
    assert ddp["global_step"] == single["global_step"] == 4
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-3)
    a = torch.load(tmp_path / "ssl" / "ddp_j0" / "ckpts" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "ssl" / "single" / "ckpts" / "last.ckpt", weights_only=False)
    key = "dino_loss.centering.center"
    assert b["state_dict"][key].abs().max() > 1e-3
    torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=1e-2, atol=1e-4)
