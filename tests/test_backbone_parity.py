"""Official-weight parity: microfm backbones built from official-format checkpoints give the
official models' x_norm_clstoken / x_norm_patchtokens (max abs difference <= 1e-4).

1. ../shared/conformance: outputs of the official DINOv2/DINOv3 code (ViT-S) on deterministic
   weights, for microfm and for the plain reference in tests/reference_dino.py.
2. Every DINOv2 (with and without registers) and DINOv3 size, on random official-format
   checkpoints (fewer blocks; the block is the same), square and non-square inputs, against
   that reference.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from microfm.backbones import build_backbone
from tests.reference_dino import (
    DINOV2_ARCH,
    DINOV3_ARCH,
    dinov2_forward,
    dinov3_forward,
    official_dinov2_state_dict,
    official_dinov3_state_dict,
)

TOL = 1e-4
FIXTURES = ["dinov2_vits14", "dinov2_vits14_reg", "dinov3_vits16"]


@pytest.mark.shared
def test_every_conformance_fixture_is_checked():
    """A fixture added to ../shared/conformance is checked here, for microfm and the reference."""
    from tests.conftest import SHARED

    root = SHARED / "conformance"
    if not root.is_dir():
        pytest.skip(f"../shared/conformance not found at {root}")
    present = sorted(p.name for p in root.iterdir() if (p / "reference_outputs.npz").is_file())
    assert present == sorted(FIXTURES)


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    from tests.conftest import SHARED

    root = SHARED / "conformance"
    if not root.is_dir():
        pytest.skip(f"../shared/conformance not found at {root}")
    out = {}
    for name in FIXTURES:
        path = tmp_path_factory.mktemp("conformance") / f"{name}.pth"
        subprocess.run(
            [sys.executable, str(root / "make_checkpoint.py"), str(root / name), str(path)],
            check=True,
        )
        out[name] = (path, np.load(root / name / "reference_outputs.npz"))
    return out


def _sizes(outputs) -> list[str]:
    return [k[2:] for k in outputs.files if k.startswith("x_")]


def _max_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


@pytest.mark.shared
@pytest.mark.parametrize("name", FIXTURES)
def test_official_outputs_reproduced(conformance, name):
    path, ref = conformance[name]
    bb = build_backbone(name, weights=str(path), normalize=False).eval()
    assert bb.pretrained
    sizes = _sizes(ref)
    assert len(sizes) >= 2  # the pretraining size and another one
    for size in sizes:
        with torch.no_grad():
            out = bb.forward_features(torch.from_numpy(ref[f"x_{size}"]))
        patch = out["patch"].flatten(2).transpose(1, 2)
        assert _max_diff(out["cls"], ref[f"cls_{size}"]) <= TOL, size
        assert _max_diff(patch, ref[f"patch_{size}"]) <= TOL, size


@pytest.mark.shared
@pytest.mark.parametrize("name", FIXTURES)
def test_reference_implementation_reproduces_official_outputs(conformance, name):
    """The plain reference used below is itself checked against the official code."""
    path, ref = conformance[name]
    sd = torch.load(path, weights_only=True)
    forward = dinov2_forward if name.startswith("dinov2") else dinov3_forward
    heads = 6
    for size in _sizes(ref):
        with torch.no_grad():
            cls, patch = forward(sd, torch.from_numpy(ref[f"x_{size}"]), heads)
        assert _max_diff(cls, ref[f"cls_{size}"]) <= TOL, size
        assert _max_diff(patch, ref[f"patch_{size}"]) <= TOL, size


def _compare(bb, forward, sd, heads, patch, shapes):
    g = torch.Generator().manual_seed(1)
    for h, w in shapes:
        x = torch.rand(2, 3, h * patch, w * patch, generator=g)
        with torch.no_grad():
            out = bb.forward_features(x)
            cls, tokens = forward(sd, x, heads)
        assert _max_diff(out["cls"], cls) <= TOL, (h, w)
        assert _max_diff(out["patch"].flatten(2).transpose(1, 2), tokens) <= TOL, (h, w)


def _depth(dim: int) -> int:
    return 2 if dim <= 1024 else 1


DINOV2_CASES = [(n, reg) for n in DINOV2_ARCH for reg in (False, True)]


@pytest.mark.parametrize(
    "name,registers", DINOV2_CASES, ids=[f"{n}{'_reg' if r else ''}" for n, r in DINOV2_CASES]
)
def test_every_dinov2_size_matches_the_official_forward(tmp_path, name, registers):
    dim, heads, _, _ = DINOV2_ARCH[name]
    depth = _depth(dim)
    sd = official_dinov2_state_dict(name, depth, registers=registers, seed=depth)
    path = tmp_path / "official.pth"
    torch.save(sd, path)
    bb = build_backbone(
        f"{name}_reg" if registers else name,
        weights=str(path),
        normalize=False,
        depth=depth,
        intermediate_layers=[depth - 1],
    ).eval()
    # non-square and square sizes, none of them the 37x37 pretraining grid
    _compare(bb, dinov2_forward, sd, heads, 14, [(3, 5), (6, 4), (5, 5)])


@pytest.mark.parametrize("name", list(DINOV3_ARCH))
def test_every_dinov3_size_matches_the_official_forward(tmp_path, name):
    dim, heads, *_ = DINOV3_ARCH[name]
    depth = _depth(dim)
    sd = official_dinov3_state_dict(name, depth, seed=depth)
    path = tmp_path / "official.pth"
    torch.save(sd, path)
    bb = build_backbone(
        name, weights=str(path), normalize=False, depth=depth, intermediate_layers=[depth - 1]
    ).eval()
    _compare(bb, dinov3_forward, sd, heads, 16, [(3, 5), (4, 4)])
