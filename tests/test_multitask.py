"""Multitask training: loss weightings, one shared backbone pass, missing targets, configs."""

from __future__ import annotations

import pytest
import torch

from microfm.backbones import build_backbone
from microfm.errors import ConfigError
from microfm.heads import ClassificationHead, DPTHead, UNetDecoder
from microfm.losses import GradNormWeighting, LossWeighting, UncertaintyWeighting, build_weighting
from microfm.modules import SupervisedModule
from microfm.run.config import compose
from microfm.run.tasks import build_tasks
from microfm.tasks import CellSegTask, ClassifyTask, DepthTask

NAMES = ["cellseg", "classify", "depth"]


# ----------------------------------------------------------------------------- weightings
def test_fixed_weighting_and_absent_tasks():
    w = LossWeighting(NAMES, {"depth": 0.5})
    losses = {
        "cellseg": torch.tensor(1.0),
        "classify": torch.tensor(2.0),
        "depth": torch.tensor(4.0),
    }
    assert float(w(losses)) == 5.0
    assert float(w(losses, present={"classify": False})) == 3.0
    with pytest.raises(ValueError, match="unknown tasks"):
        LossWeighting(NAMES, {"segm": 1.0})


def test_uncertainty_weighting_learns_inverse_losses():
    w = UncertaintyWeighting(["a", "b"])
    losses = {"a": torch.tensor(0.2), "b": torch.tensor(5.0)}
    opt = torch.optim.Adam(w.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        w(losses).backward()
        opt.step()
    # optimum of ½ e^{-s} L + ½ s: e^{s} = L, i.e. weight ½ e^{-s} = 1 / (2 L)
    assert torch.allclose(w.log_vars.exp(), torch.tensor([0.2, 5.0]), rtol=0.02)
    assert w.weights()["a"] == pytest.approx(1 / 0.4, rel=0.02)


def _two_task_losses(f):
    c1, c2 = torch.linspace(-1, 1, f.numel()).view_as(f), torch.ones_like(f)
    return {"a": (f * c1).sum() ** 2 / 10, "b": (f * c2).pow(2).sum()}


def test_gradnorm_gradient_equals_the_double_backward_definition():
    torch.manual_seed(0)
    f = torch.randn(3, 4, requires_grad=True)
    gn = GradNormWeighting(["a", "b"], alpha=1.5)
    with torch.no_grad():
        gn.w.copy_(torch.tensor([0.7, 1.3]))
        gn.initial.copy_(torch.tensor([2.0, 9.0]))
    losses = _two_task_losses(f)
    total = gn(losses, [f])
    assert torch.isclose(total, 0.7 * losses["a"] + 1.3 * losses["b"])
    gn.after_backward()
    ours = gn.w.grad.clone()
    # the paper's definition, differentiated through the gradient norms
    w = torch.tensor([0.7, 1.3], requires_grad=True)
    L = torch.stack([losses["a"], losses["b"]])
    G = torch.stack(
        [
            torch.autograd.grad(w[i] * L[i], f, retain_graph=True, create_graph=True)[0].norm()
            for i in range(2)
        ]
    )
    ratio = L.detach() / torch.tensor([2.0, 9.0])
    target = (G.mean() * (ratio / ratio.mean()) ** 1.5).detach()
    ref = torch.autograd.grad((G - target).abs().sum(), w)[0]
    assert torch.allclose(ours, ref, atol=1e-5)
    # renormalised to sum to the number of tasks after the step
    with torch.no_grad():
        gn.w.copy_(torch.tensor([0.5, 2.5]))
    gn.after_step()
    assert float(gn.w.detach().sum()) == pytest.approx(2.0)


def test_gradnorm_equalises_gradient_norms_over_steps():
    torch.manual_seed(1)
    gn = GradNormWeighting(["a", "b"], alpha=0.0)
    opt = torch.optim.Adam(gn.parameters(), lr=0.02)
    f = torch.randn(3, 4, requires_grad=True)
    for _ in range(200):
        opt.zero_grad()
        gn(_two_task_losses(f), [f])
        gn.after_backward()
        opt.step()
        gn.after_step()
    g = [torch.autograd.grad(v, f)[0].norm() for v in _two_task_losses(f).values()]
    G = gn.w.detach() * torch.stack(g)
    assert float((G[0] - G[1]).abs() / G.mean()) < 0.1


def test_build_weighting_errors():
    assert isinstance(build_weighting(NAMES, "gradnorm"), GradNormWeighting)
    with pytest.raises(ConfigError, match="task.weighting.mode"):
        build_weighting(NAMES, "dwa")
    with pytest.raises(ConfigError, match="unknown tasks"):
        build_weighting(NAMES, "fixed", {"cellsegg": 2.0})
    with pytest.raises(ConfigError, match="gradnorm learns"):
        build_weighting(NAMES, "gradnorm", {"depth": 2.0})


# ----------------------------------------------------------------------------- the module
def _module(weighting=None, frozen=False):
    bb = build_backbone("vit_test", in_chans=1)
    if frozen:
        bb.requires_grad_(False)
    layers = [0, 1, 2, 3]
    tasks = [
        CellSegTask(UNetDecoder(64, 4, channels=[16, 16, 8, 8]), layers=layers),
        ClassifyTask(ClassificationHead(64, 3), num_classes=3),
        DepthTask(DPTHead(64, 2, features=8), layers=[2, 3]),
    ]
    return SupervisedModule(bb, tasks, weighting=weighting)


def _batch(B=2, H=32):
    from microfm.transforms import distance_map

    inst = torch.zeros(B, H, H, dtype=torch.int32)
    inst[:, 4:14, 4:14], inst[:, 16:28, 10:20] = 1, 2
    dist = torch.stack([torch.from_numpy(distance_map(i.numpy())) for i in inst])[:, None]
    return {
        "image": torch.rand(B, 1, H, H),
        "instances": inst,
        "dist": dist,
        "label": torch.tensor([0, 2][:B]),
        "depth": torch.rand(B, 1, H, H) + 1,
    }


def test_one_backbone_pass_feeds_every_task(monkeypatch):
    module = _module()
    calls = []
    original = module.backbone.forward_dense
    monkeypatch.setattr(
        module.backbone,
        "forward_dense",
        lambda x, indices=None: calls.append(indices) or original(x, indices),
    )
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    out = module(torch.rand(2, 1, 32, 32))
    assert calls == [[0, 1, 2, 3]]
    assert out["cellseg"].shape == (2, 1, 32, 32) and out["classify"].shape == (2, 3)
    assert out["depth"].shape == (2, 1, 32, 32)
    module.training_step(_batch(), 0)
    assert len(calls) == 2


def test_task_without_targets_gets_no_gradient(monkeypatch):
    module = _module()
    logged = {}
    monkeypatch.setattr(module, "log", lambda k, v, **kw: logged.__setitem__(k, v))
    batch = _batch()
    batch["label"] = torch.full((2,), -1)  # no sample labelled for classification
    del batch["depth"]  # no depth in this batch at all
    module.training_step(batch, 0).backward()
    head_grads = {
        name: sum(float(p.grad.abs().sum()) for p in t.parameters() if p.grad is not None)
        for name, t in module.tasks.items()
    }
    assert head_grads["classify"] == 0.0 and head_grads["depth"] == 0.0
    assert head_grads["cellseg"] > 0
    assert "train/cellseg/loss" in logged and "train/classify/loss" not in logged
    assert "train/depth/weight" in logged


@pytest.mark.parametrize("frozen", [False, True])
def test_gradnorm_inside_the_module(monkeypatch, frozen):
    module = _module(build_weighting(NAMES, "gradnorm"), frozen=frozen)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.train()
    loss = module.training_step(_batch(), 0)
    loss.backward()
    module.on_after_backward()
    assert module.weighting.w.grad is not None and module.weighting.w.grad.abs().sum() > 0


def test_gradient_clipping_leaves_loss_weights_alone(monkeypatch):
    module = _module(build_weighting(NAMES, "uncertainty"))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.training_step(_batch(), 0).backward()
    seen = {}
    monkeypatch.setattr(
        module,
        "clip_gradients",
        lambda opt, val, algo: seen.update(w=module.weighting.log_vars.grad),
    )
    grad = module.weighting.log_vars.grad.clone()
    module.configure_gradient_clipping(None, 1.0, "norm")
    assert seen["w"] is None and torch.equal(module.weighting.log_vars.grad, grad)


def test_optimizer_groups_heads_backbone_and_learned_weights():
    from microfm.modules import OptimConfig

    module = _module(build_weighting(NAMES, "uncertainty", lr=0.05))
    module.optim = OptimConfig(lr=1e-4, lr_backbone=1e-5)
    out = module.configure_optimizers()
    groups = {g["name"]: g for g in out["optimizer"].param_groups}
    assert groups["loss_weighting"]["params"] == [module.weighting.log_vars]
    assert groups["loss_weighting"]["weight_decay"] == 0.0
    base = dict(
        zip(
            [g["name"] for g in out["optimizer"].param_groups],
            out["lr_scheduler"]["scheduler"].base_lrs,
        )
    )
    assert base["head"] == 1e-4 and base["backbone"] == 1e-5 and base["loss_weighting"] == 0.05
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head"]["weight_decay"] > 0
    head_params = {id(p) for t in module.tasks.values() for p in t.parameters()}
    assert all(id(p) in head_params for p in groups["head"]["params"])


# ----------------------------------------------------------------------------- configs
def test_multitask_config_builds_the_chosen_tasks():
    cfg = compose(
        [
            "task=multitask",
            "backbone=vit_test",
            "task.tasks=[depth,classify]",
            "task.weighting.mode=uncertainty",
        ]
    )
    tasks, weighting = build_tasks(cfg.task)
    assert [t.name for t in tasks] == ["depth", "classify"]
    assert isinstance(weighting, UncertaintyWeighting)
    assert cfg.task.monitor == "val/depth/absrel" and cfg.task.mode == "min"
    assert list(cfg.data.targets) == []
    assert list(compose(["task=multitask"]).data.targets) == ["dist"]


@pytest.mark.parametrize(
    "override,match",
    [
        ("task.tasks=[cellseg,clasify]", "Did you mean classify"),
        ("task.tasks=[]", "task.tasks is empty"),
        ("task.tasks=[depth,depth]", "twice"),
        ("task.specs.classify.num_classes=null", "task.specs.classify.num_classes"),
    ],
)
def test_multitask_config_errors(override, match):
    cfg = compose(
        ["task=multitask", "backbone=vit_test", "task.tasks=[cellseg,classify]", override]
    )
    with pytest.raises(ConfigError, match=match):
        build_tasks(cfg.task)
