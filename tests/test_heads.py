"""Heads: full-resolution output at any patch-multiple size, gradient flow, argument checks."""

from __future__ import annotations

import pytest
import torch

from microfm.heads import ClassificationHead, DPTHead, LinearHead, UNetDecoder

PATCH, D = 8, 32
SIZES = [(32, 32), (48, 64), (40, 24), (8, 16)]  # grids 4x4, 6x8, 5x3, 1x2


def dense_heads(num_layers: int = 4, out: int = 3):
    return {
        "linear": LinearHead(D, num_layers, in_chans=2, out_channels=out),
        "unet": UNetDecoder(
            D,
            num_layers,
            in_chans=2,
            out_channels=out,
            channels=[32, 16, 16, 8][:num_layers],
            activation="none",
        ),
        "dpt": DPTHead(D, num_layers, in_chans=2, out_channels=out, features=16),
    }


def _inputs(h: int, w: int, n: int = 4, batch: int = 2, grad: bool = False):
    layers = [torch.randn(batch, D, h // PATCH, w // PATCH, requires_grad=grad) for _ in range(n)]
    return layers, torch.rand(batch, 2, h, w)


@pytest.mark.parametrize("name", ["linear", "unet", "dpt"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dense_head_returns_full_resolution(name, size):
    head = dense_heads()[name].eval()
    layers, image = _inputs(*size)
    with torch.no_grad():
        out = head(layers, image)
    assert out.shape == (2, 3, *size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["linear", "unet", "dpt"])
def test_dense_head_gradient_reaches_every_parameter_and_every_layer(name):
    head = dense_heads()[name].train()
    layers, image = _inputs(48, 40, grad=True)
    out = head(layers, image)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    for i, x in enumerate(layers):
        assert x.grad is not None and x.grad.abs().sum() > 0, f"layer {i} gets no gradient"


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_dense_heads_take_other_layer_counts(num_layers):
    for name, head in dense_heads(num_layers, out=1).items():
        layers, image = _inputs(32, 48, n=num_layers)
        assert head(layers, image).shape == (2, 1, 32, 48), name
        with pytest.raises(ValueError, match="feature maps"):
            head(layers + layers, image)


@pytest.mark.parametrize(
    "activation,check",
    [
        ("sigmoid", lambda y: ((y >= 0) & (y <= 1)).all()),
        ("softplus", lambda y: (y >= 0).all()),
        ("relu", lambda y: (y >= 0).all()),
    ],
)
def test_output_activations(activation, check):
    layers, image = _inputs(32, 32)
    for head in (
        LinearHead(D, 4, out_channels=1, activation=activation),
        DPTHead(D, 4, out_channels=1, features=16, activation=activation),
        UNetDecoder(D, 4, 2, out_channels=1, channels=[16, 16, 8, 8], activation=activation),
    ):
        assert check(head(layers, image))
    with pytest.raises(ValueError, match="activation"):
        DPTHead(D, 4, activation="tanh")


def test_dpt_checks_channel_count():
    with pytest.raises(ValueError, match="one width per layer"):
        DPTHead(D, 4, channels=[8, 8])


@pytest.mark.parametrize("hidden", [None, 24])
@pytest.mark.parametrize("patch_mean", [True, False])
def test_classification_head_shapes_and_gradients(hidden, patch_mean):
    head = ClassificationHead(D, 5, hidden_dim=hidden, use_patch_mean=patch_mean)
    cls = torch.randn(3, D, requires_grad=True)
    patch = torch.randn(3, D, 4, 5, requires_grad=True)
    logits = head(cls, patch)
    assert logits.shape == (3, 5)
    logits.sum().backward()
    assert cls.grad.abs().sum() > 0
    assert (patch.grad is not None and patch.grad.abs().sum() > 0) == patch_mean
    assert all(p.grad is not None for p in head.parameters())


def test_classification_head_uses_the_mean_patch_token():
    head = ClassificationHead(D, 2, use_patch_mean=True)
    cls, patch = torch.randn(1, D), torch.randn(1, D, 3, 3)
    shuffled = patch.flatten(2)[..., torch.randperm(9)].reshape(1, D, 3, 3)
    assert torch.allclose(head(cls, patch), head(cls, shuffled), atol=1e-6)
    with pytest.raises(ValueError, match="patch tokens"):
        head(cls)
    with pytest.raises(ValueError, match="at least 2"):
        ClassificationHead(D, 1)
