"""Per-sample randomness (microfm.utils.seeding): drop-path choices follow each sample's seed,
whatever the batch, also when activation checkpointing recomputes the blocks; the supervised
and SSL training steps declare those seeds."""

from __future__ import annotations

import pytest
import torch

from microfm.backbones import build_backbone
from microfm.backbones.drop_path import SampleDropPath
from microfm.utils.seeding import derive_seed, hash_uniform, sample_seeds


def _tiny(drop: float, checkpointing="off"):
    """vit_test with large random weights, so that dropping a residual branch shows."""
    torch.manual_seed(0)
    bb = build_backbone(
        "vit_test", in_chans=1, drop_path_rate=drop, grad_checkpointing=checkpointing
    )
    with torch.no_grad():
        for name, p in bb.model.named_parameters():
            if p.ndim == 2:
                p.normal_(0, 0.2)
            elif "gamma" in name.rsplit(".", 1)[-1]:  # layer scale (gamma_1/2, ls1.gamma)
                p.fill_(1.0)
    return bb.train()


def test_backbones_use_per_sample_drop_path():
    bb = _tiny(0.5)
    layers = [m for m in bb.modules() if isinstance(m, SampleDropPath)]
    assert layers and max(m.drop_prob for m in layers) == pytest.approx(0.5)
    from timm.layers import DropPath

    assert not any(isinstance(m, DropPath) for m in bb.modules())


def test_drop_path_of_a_sample_is_the_same_in_any_batch():
    """Before: timm's DropPath drew from the global generator, so the dropped paths of a sample
    depended on its position in the batch and were the same on every (alike seeded) rank."""
    bb = _tiny(0.5)
    x = torch.rand(4, 1, 32, 32)
    seeds = [derive_seed(7, i) for i in range(4)]
    with sample_seeds(seeds):
        full = bb.forward_features(x)["patch"]
    with sample_seeds([seeds[3], seeds[1]]):
        part = bb.forward_features(x[[3, 1]])["patch"]
    torch.testing.assert_close(part, full[[3, 1]], rtol=1e-4, atol=1e-5)
    with sample_seeds([derive_seed(8, i) for i in range(4)]):
        other = bb.forward_features(x)["patch"]
    assert float((other - full).abs().max()) > 0.1  # the seeds do choose
    with torch.no_grad():  # eval: no drop-path at all
        ref = bb.eval().forward_features(x)["patch"]
        with sample_seeds(seeds):
            torch.testing.assert_close(bb.forward_features(x)["patch"], ref)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_checkpointed_blocks_recompute_the_same_drop_path(mode):
    """The backward pass recomputes checkpointed blocks outside ``sample_seeds``: they must
    drop the same paths as the forward pass, or the gradients are those of another network."""
    x = torch.rand(3, 1, 32, 32)
    seeds = [1, 2, 3]
    grads = {}
    for m in ("off", mode):
        bb = _tiny(0.5, m)
        with sample_seeds(seeds):
            loss = bb.forward_features(x)["patch"].square().mean()
        loss.backward()
        grads[m] = {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}
    assert set(grads["off"]) == set(grads[mode])
    for name, g in grads["off"].items():
        torch.testing.assert_close(grads[mode][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_hash_uniform_is_uniform_and_counter_dependent():
    seeds = torch.arange(20000, dtype=torch.int64)
    u = hash_uniform(seeds, 0)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    v = hash_uniform(seeds, 1)
    assert abs(float(torch.corrcoef(torch.stack([u, v]))[0, 1])) < 0.03


def test_supervised_training_step_seeds_each_sample(monkeypatch):
    """The supervised step declares one seed per sample from (data seed, epoch, index)."""
    from microfm.heads.classifier import ClassificationHead
    from microfm.modules.supervised import SupervisedModule
    from microfm.tasks.classify import ClassifyTask
    from microfm.utils import seeding

    module = SupervisedModule(_tiny(0.5), [ClassifyTask(ClassificationHead(64, 3), num_classes=3)])
    seen = []
    real = seeding.draw_uniform

    def spy(device, rows):
        seen.append(seeding._CURRENT.get().seeds.tolist())
        return real(device, rows)

    monkeypatch.setattr("microfm.backbones.drop_path.draw_uniform", spy)
    batch = {"image": torch.rand(2, 1, 32, 32), "label": torch.tensor([0, 2])}
    batch["index"] = torch.tensor([4, 9])
    module.train()
    module.training_step(batch, 0)
    assert seen and all(s == [derive_seed(0, 0, 4, 500), derive_seed(0, 0, 9, 500)] for s in seen)
