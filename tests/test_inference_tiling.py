"""Sliding window: identity and pointwise models give back their input for any size and
overlap, tiles are patch multiples, blended outputs have no seams, TTA, global outputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from microfm.inference.tiling import (
    SlidingWindow,
    flip_tta,
    hann_window,
    reflect_pad,
    tile_starts,
)

windows = st.builds(
    lambda patch, tiles, frac, batch: SlidingWindow(
        patch * tiles, int(frac * patch * tiles), patch_size=patch, batch_size=batch
    ),
    patch=st.sampled_from([1, 4, 8, 14]),
    tiles=st.integers(1, 6),
    frac=st.floats(0.0, 0.9),
    batch=st.integers(1, 5),
)


class Recorder:
    """A model that records the tile shapes it sees and applies ``fn``."""

    def __init__(self, fn):
        self.fn, self.shapes = fn, []

    def __call__(self, tiles: torch.Tensor) -> dict[str, torch.Tensor]:
        self.shapes.append(tuple(tiles.shape))
        return {"out": self.fn(tiles)}


@settings(max_examples=40, deadline=None)
@given(sw=windows, h=st.integers(1, 80), w=st.integers(1, 80), c=st.integers(1, 3))
def test_identity_model_gives_back_the_input(sw, h, w, c):
    x = torch.from_numpy(np.random.default_rng(h * 100 + w).random((c, h, w), np.float32))
    model = Recorder(lambda t: t)
    out = sw(model, x)["out"]
    assert out.shape == x.shape  # the output keeps the input size
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)
    p = sw.patch_size
    for b, ch, th, tw in model.shapes:
        assert ch == c and 1 <= b <= sw.batch_size
        assert th % p == 0 and tw % p == 0 and th <= sw.tile_size and tw <= sw.tile_size


@settings(max_examples=20, deadline=None)
@given(sw=windows, h=st.integers(1, 60), w=st.integers(1, 60))
def test_pointwise_model_equals_the_op_on_the_whole_image(sw, h, w):
    def f(t):
        return torch.tanh(3 * t) + t**2

    x = torch.from_numpy(np.random.default_rng(h + 7 * w).normal(size=(2, h, w)).astype(np.float32))
    out = sw(Recorder(f), x)["out"]
    torch.testing.assert_close(out, f(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 500), tile=st.integers(1, 64), stride=st.integers(1, 64))
def test_tiles_cover_the_axis(length, tile, stride):
    if tile > length or stride > tile:
        with pytest.raises(ValueError):
            tile_starts(length, tile, stride)
        return
    starts = tile_starts(length, tile, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == length - tile
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


def _tile_constant(seed: int):
    """A model whose output is a random constant per tile (the worst case for seams)."""
    rng = np.random.default_rng(seed)

    def model(tiles):
        values = torch.from_numpy(rng.random(tiles.shape[0]).astype(np.float32))
        return {"out": values[:, None, None, None].expand(-1, 1, *tiles.shape[-2:]).clone()}

    return model


def _hard_stitched(sw: SlidingWindow, model, h: int, w: int) -> torch.Tensor:
    """Reference without blending: each tile overwrites its area (last tile wins)."""
    plan = sw.plan(h, w)
    canvas = torch.zeros(plan.padded)
    th, tw = plan.tile
    for y in plan.ys:
        for x in plan.xs:
            canvas[y : y + th, x : x + tw] = model(torch.zeros(1, 1, th, tw))["out"][0, 0]
    t, _, left, _ = plan.pad
    return canvas[t : t + h, left : left + w]


def test_blended_output_has_no_seams():
    sw = SlidingWindow(64, 32, patch_size=8, batch_size=3)
    h, w = 150, 170
    blended = sw(_tile_constant(0), torch.zeros(1, h, w))["out"][0]
    hard = _hard_stitched(sw, _tile_constant(0), h, w)
    jump = lambda a: max(a.diff(dim=0).abs().max(), a.diff(dim=1).abs().max())  # noqa: E731
    # tile values differ by up to 1: stitching shows that jump at tile borders, blending does
    # not: the Hann weights change by at most pi/64 per pixel
    assert float(jump(hard)) > 0.5
    assert float(jump(blended)) < 0.15


def test_hann_window_is_positive_and_peaks_in_the_middle():
    win = hann_window(16, 10)
    assert win.shape == (16, 10) and float(win.min()) > 0 and float(win.max()) <= 1
    assert float(win[0, 0]) < 0.01 and float(win[7, 4]) > 0.8
    torch.testing.assert_close(win, win.flip(0).flip(1))


def test_image_smaller_than_a_tile_uses_one_snapped_tile():
    sw = SlidingWindow(256, 64, patch_size=16)
    plan = sw.plan(5, 3)
    # 5 + 2 * 32 (margin) = 69 rows, 67 columns: one 80 x 80 tile (snapped up to 16s)
    assert plan.num_tiles == 1 and plan.tile == (80, 80)
    x = torch.rand(1, 5, 3)
    torch.testing.assert_close(sw(lambda t: {"id": t}, x)["id"], x, atol=1e-6, rtol=0)


def test_reflect_padding_at_the_borders():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    padded = reflect_pad(x, (2, 1, 1, 3))
    assert padded.shape == (1, 6, 8)
    np.testing.assert_array_equal(padded[0, 2:5, 1:5], x[0])
    np.testing.assert_array_equal(padded[0, 1, 1:5], x[0, 1])  # mirror, edge not repeated
    one = reflect_pad(np.ones((1, 1, 1), np.float32), (3, 3, 3, 3))  # a single pixel
    assert one.shape == (1, 7, 7) and float(one.min()) == 1


def test_flip_tta_of_an_identity_is_the_identity_and_averages_flips():
    x = torch.rand(2, 1, 16, 24)
    out = flip_tta(lambda t: {"id": t})(x)["id"]
    torch.testing.assert_close(out, x)
    # a model that is not flip-equivariant: the row index; TTA averages it with its mirror
    rows = lambda t: {"r": torch.arange(t.shape[-2]).float().view(1, 1, -1, 1).expand_as(t)}  # noqa: E731
    avg = flip_tta(rows)(x)["r"]
    torch.testing.assert_close(avg, torch.full_like(x, (x.shape[-2] - 1) / 2))


def test_global_outputs_are_averaged_over_tiles():
    sw = SlidingWindow(32, 8, patch_size=8, batch_size=2)
    x = torch.full((1, 70, 50), 3.0)
    out = sw(lambda t: {"g": t.mean(dim=(2, 3)), "d": t}, x)
    assert out["g"].shape == (1,) and float(out["g"][0]) == pytest.approx(3.0)
    assert out["d"].shape == (1, 70, 50)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindow(32, 32, patch_size=8)
    with pytest.raises(ValueError, match="patch size"):
        SlidingWindow(4, 0, patch_size=8)
    with pytest.raises(ValueError, match="neither"):
        SlidingWindow(16, 0)(lambda t: {"bad": t[:, :, :3]}, torch.zeros(1, 16, 16))
