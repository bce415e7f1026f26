"""The SSL LightningModules' mechanics: EMA teacher and centers once per optimiser step (also
under gradient accumulation), teacher in eval mode, head warm-up with a frozen backbone,
prototype-layer freeze, layer-wise learning-rate decay, channel views, backbone export (LoRA
merged) loadable by build_backbone, and the kNN monitor against scikit-learn."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from microfm.analysis.knn import knn_predict
from microfm.backbones import build_backbone
from microfm.callbacks.export import save_state_dict
from microfm.errors import ConfigError
from microfm.finetune import apply_lora
from microfm.heads import DINOHead, MAEDecoder
from microfm.modules import DINOModule, MAEModule, OptimConfig
from microfm.modules.ema import cosine_momentum
from microfm.transforms import MultiCrop


def _data(n=8, chans=1, size=32):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(chans, size, size, generator=g), "index": torch.tensor(i)}
        for i in range(n)
    ]


def _dino(in_chans=1, views_kw=None, **kw):
    torch.manual_seed(0)
    bb = build_backbone(kw.pop("backbone", "vit_test"), in_chans=kw.pop("bb_chans", in_chans))
    views = MultiCrop(global_size=16, local_size=8, n_local=1, **(views_kw or {}))
    head = DINOHead(64, out_dim=32, hidden_dim=32, bottleneck_dim=16)
    return DINOModule(bb, head, views, optim=OptimConfig(lr=1e-3), in_chans=in_chans, **kw)


def _mae(**kw):
    torch.manual_seed(0)
    bb = build_backbone("vit_test", in_chans=1)
    dec = MAEDecoder(64, 8, 1, dim=32, depth=1, num_heads=4)
    return MAEModule(bb, dec, optim=OptimConfig(lr=1e-3, warmup=0), **kw)


def _fit(module, steps, accumulate=1, callbacks=(), batch_size=2):
    trainer = L.Trainer(
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    trainer.fit(module, DataLoader(_data(), batch_size=batch_size))
    return trainer


class _Record(L.Callback):
    def __init__(self, fn):
        self.fn, self.seen = fn, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append(self.fn(pl_module))


def test_teacher_follows_once_per_optimizer_step_under_accumulation(monkeypatch):
    module = _dino()
    steps, centers = [], []
    original = module.after_optimizer_step

    def spy(step):
        steps.append(step)
        centers.append(module.dino_loss.centering.pending())  # rows recorded this step
        original(step)

    monkeypatch.setattr(module, "after_optimizer_step", spy)
    teacher0 = copy.deepcopy(module.teacher.state_dict())
    modes = _Record(lambda m: (m.teacher.training, m.backbone.training))
    trainer = _fit(module, steps=2, accumulate=2, callbacks=[modes])
    assert trainer.global_step == 2 and steps == [0, 1] and module.ema_updates == 2
    # each update saw the teacher outputs of both micro-batches: 2 batches x 2 views x 2 images
    assert centers == [8, 8]
    assert all(m == (False, True) for m in modes.seen)  # teacher in eval, student training
    moved = [k for k, v in module.teacher.state_dict().items() if not torch.equal(v, teacher0[k])]
    assert any(k.startswith("backbone.") for k in moved) and any(
        k.startswith("head.") for k in moved
    )
    assert module.dino_loss.centering.center.abs().sum() > 0


def test_ema_update_and_cosine_momentum():
    module = _dino(momentum=0.9, final_momentum=1.0)
    module._trainer = None
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    teacher = {k: v.clone() for k, v in module.teacher["backbone"].named_parameters()}
    student = dict(module.backbone.named_parameters())
    m = cosine_momentum(0, 1000, 0.9)
    module.after_optimizer_step(0)
    for name, p in module.teacher["backbone"].named_parameters():
        torch.testing.assert_close(p, m * teacher[name] + (1 - m) * student[name])
    assert m == 0.9 and cosine_momentum(500, 1000, 0.9) == pytest.approx(0.95)
    assert cosine_momentum(1000, 1000, 0.9) == 1.0


def test_head_warm_up_keeps_the_backbone_frozen_then_trains_it():
    module = _mae(backbone_freeze=2)
    snaps = _Record(lambda m: [p.detach().clone() for p in m.backbone.parameters()])
    heads = _Record(lambda m: [p.detach().clone() for p in m.decoder.parameters()])
    lrs = _Record(lambda m: [g["lr"] for g in m.trainer.optimizers[0].param_groups])
    _fit(module, steps=4, callbacks=[snaps, heads, lrs])
    same = [all(torch.equal(a, b) for a, b in zip(snaps.seen[0], s)) for s in snaps.seen]
    assert same == [True, True, True, False]  # before steps 1, 2, 3, 4
    assert not all(torch.equal(a, b) for a, b in zip(heads.seen[0], heads.seen[1]))
    names = [g["name"] for g in module.trainer.optimizers[0].param_groups]
    backbone_lr = [lr for n, lr in zip(names, lrs.seen[1]) if n.startswith("backbone")]
    assert backbone_lr and all(lr == 0 for lr in backbone_lr)
    assert all(lr > 0 for n, lr in zip(names, lrs.seen[3]) if n.startswith("backbone"))


def test_prototype_layer_freeze():
    module = _dino(freeze_last_layer=2)
    w0 = module.head.last_layer.parametrizations.weight.original1.detach().clone()
    seen = _Record(lambda m: m.head.last_layer.parametrizations.weight.original1.detach().clone())
    _fit(module, steps=3, callbacks=[seen])
    assert torch.equal(seen.seen[2], w0)
    assert not torch.equal(module.head.last_layer.parametrizations.weight.original1, w0)


def test_layer_wise_learning_rate_decay():
    module = _mae(layer_decay=0.5)
    opt = module.configure_optimizers()["optimizer"]
    lr = {g["name"]: g["lr"] for g in opt.param_groups}
    base = 1e-3  # random weights: lr_backbone auto = lr
    assert lr["backbone_layer4"] == pytest.approx(base * 0.5)  # blocks.3 of 4
    assert lr["backbone_layer1"] == pytest.approx(base * 0.5**4)  # blocks.0
    assert lr["backbone_layer0_no_decay"] == pytest.approx(base * 0.5**5)  # tokens, patch embed
    assert lr["backbone_layer5_no_decay"] == pytest.approx(base)  # final norm
    assert lr["head"] == pytest.approx(base)
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == sum(1 for p in module.parameters() if p.requires_grad)
    with pytest.raises(ConfigError, match="layer_decay"):
        _mae(layer_decay=1.5).configure_optimizers()


def test_channel_as_view_and_channel_average():
    module = _dino(in_chans=3, bb_chans=1, views_kw={"channel_mode": "as_view"})
    views = module.views(torch.rand(2, 3, 32, 32), seeds=[0, 1])
    assert all(v.shape[1] == 1 for v in views)
    assert torch.isfinite(module.compute(views, record=False)["loss"])
    feats = module.embed(torch.rand(2, 3, 32, 32))
    assert feats.shape == (2, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(2))
    avg = _dino(in_chans=3, bb_chans=1, views_kw={"channel_mode": "average"})
    x = torch.rand(2, 3, 32, 32)
    expected = avg.teacher["backbone"].forward_features(x.mean(1, keepdim=True))["cls"]
    torch.testing.assert_close(avg.embed(x), torch.nn.functional.normalize(expected, dim=-1))
    with pytest.raises(ConfigError, match="backbone.in_chans=1"):
        _dino(in_chans=3, bb_chans=3, views_kw={"channel_mode": "as_view"})


@pytest.mark.parametrize("name", ["vit_test", "vit_test_dinov2"])
def test_export_with_lora_merged_loads_in_build_backbone(tmp_path, name):
    module = _dino(backbone=name)
    apply_lora(module.teacher["backbone"].model, r=2, target_modules=["attn.qkv"])
    for n, p in module.teacher["backbone"].named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.2)
    state = module.export_backbone()
    assert not any("lora" in k for k in state)
    save_state_dict(state, tmp_path / "backbone.pth")
    loaded = build_backbone(name, weights=str(tmp_path / "backbone.pth"), in_chans=1).eval()
    assert loaded.pretrained
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        expected = module.teacher["backbone"].eval().forward_features(x)["cls"]
        got = loaded.forward_features(x)["cls"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - module.backbone.eval().forward_features(x)["cls"]).abs().max() > 1e-4


def test_knn_predict_equals_scikit_learn():
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(60, 8)).astype(np.float32)
    labels = rng.integers(0, 4, 60)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    T = 0.1
    clf = KNeighborsClassifier(
        n_neighbors=7, metric="cosine", weights=lambda d: np.exp((1 - d) / T), algorithm="brute"
    ).fit(bank, labels)
    ours = knn_predict(bank, labels, queries, 7, T)
    np.testing.assert_array_equal(ours, clf.predict(queries))


def test_teacher_temperature_warm_up():
    module = _dino(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup=0.3)
    module._trainer = None  # outside a Trainer: 1000 total steps
    temps = [module.teacher_temp(s) for s in (0, 150, 300, 900)]
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_knn_probe_must_match_the_data_channels():
    from microfm.callbacks import KNNMonitor
    from microfm.data import SyntheticDataModule

    probe = SyntheticDataModule(n_train=8, n_val=4, n_test=1, image_size=32)
    module = _dino(in_chans=3, bb_chans=1, views_kw={"channel_mode": "average"})
    with pytest.raises(ConfigError, match="callbacks.knn.probe delivers 1-channel"):
        KNNMonitor(probe).on_fit_start(None, module)
    KNNMonitor(probe).on_fit_start(None, _dino())  # 1-channel data: fine
