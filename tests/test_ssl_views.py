"""Multi-crop views: shapes, per-sample seeding, exact identity crops, channel strategies,
flips/rotations, blur; view sizes fitted to the patch size."""

from __future__ import annotations

import pytest
import torch

from microfm.errors import ConfigError
from microfm.transforms import MultiCrop
from microfm.transforms.multicrop import _gaussian_blur

PLAIN = dict(  # no augmentation: crops only
    hflip=0.0,
    vflip=0.0,
    rot90=0.0,
    brightness=None,
    contrast=None,
    blur=None,
    noise=None,
)


def test_shapes_and_seeding_per_sample():
    mc = MultiCrop(global_size=32, local_size=16, n_local=3, noise=0.1, noise_p=0.0)
    x = torch.rand(4, 2, 48, 40)
    views = mc(x, seeds=[5, 6, 7, 8])
    assert [tuple(v.shape) for v in views] == [(4, 2, 32, 32)] * 2 + [(4, 2, 16, 16)] * 3
    again = mc(x, seeds=[5, 6, 7, 8])
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    # a sample's views depend on its own seed, not on the rest of the batch
    alone = mc(x[2:3], seeds=[7])
    for a, b in zip(views, alone):
        torch.testing.assert_close(a[2:3], b, rtol=1e-5, atol=1e-6)
    other = mc(x, seeds=[5, 6, 70, 8])
    assert not torch.allclose(other[0][2], views[0][2])


def test_full_field_crop_is_the_image():
    mc = MultiCrop(
        global_size=None, n_global=1, n_local=0, global_scale=(1, 1), ratio=(1, 1), **PLAIN
    )
    mc.fit_patch(8)
    x = torch.rand(2, 3, 32, 32)
    (view,) = mc(x, seeds=[0, 1])
    torch.testing.assert_close(view, x)


def test_channel_strategies():
    x = torch.rand(2, 3, 32, 32)
    kw = dict(global_size=32, n_global=2, n_local=1, local_size=16, global_scale=(1, 1))
    avg = MultiCrop(channel_mode="average", ratio=(1, 1), **kw, **PLAIN)
    assert avg.out_channels(3) == 1
    torch.testing.assert_close(avg(x, [0, 1])[0], x.mean(1, keepdim=True))
    per = MultiCrop(channel_mode="as_view", view_channels=1, ratio=(1, 1), **kw, **PLAIN)
    views = per(x, [0, 1])
    assert per.out_channels(3) == 1 and views[0].shape == (2, 1, 32, 32)
    for b in range(2):
        matches = [c for c in range(3) if torch.allclose(views[0][b, 0], x[b, c])]
        assert len(matches) == 1  # each global view shows exactly one of the field's channels
    chans = {
        tuple(c for c in range(3) if torch.allclose(v[b, 0], x[b, c]))
        for v in views[:2]
        for b in range(2)
    }
    assert len(chans) > 1  # views of a field show different channels
    with pytest.raises(ConfigError, match="view_channels=4"):
        MultiCrop(channel_mode="as_view", view_channels=4).out_channels(3)
    with pytest.raises(ConfigError, match="channel_mode"):
        MultiCrop(channel_mode="rgb")


def test_flips_and_rotations_keep_the_pixels():
    x = torch.rand(6, 1, 16, 16)
    mc = MultiCrop(
        global_size=16,
        n_global=1,
        n_local=0,
        global_scale=(1, 1),
        ratio=(1, 1),
        **{**PLAIN, "hflip": 0.5, "vflip": 0.5, "rot90": 0.5},
    )
    (view,) = mc(x, seeds=list(range(6)))
    for b in range(6):
        candidates = [torch.rot90(x[b], k, (-2, -1)) for k in range(4)]
        candidates += [c.flip(-1) for c in candidates]
        assert any(torch.allclose(view[b], c, atol=1e-6) for c in candidates)
    assert not torch.allclose(view, x)


def test_blur_is_a_normalised_gaussian_per_sample():
    x = torch.zeros(2, 1, 15, 15)
    x[:, :, 7, 7] = 1.0
    y = _gaussian_blur(x, [1.5, 0.0])
    torch.testing.assert_close(y[1], x[1])
    torch.testing.assert_close(y[0].sum(), torch.tensor(1.0))
    g = torch.exp(-0.5 * (torch.arange(-5.0, 6.0) / 1.5) ** 2)  # radius ceil(3 sigma)
    g = g / g.sum()
    torch.testing.assert_close(y[0, 0, 7, 2:13], g * g[5], rtol=1e-4, atol=1e-6)


def test_sizes_fit_the_patch():
    mc = MultiCrop(global_size=224, local_size=96)
    mc.fit_patch(14)
    assert (mc.global_size, mc.local_size) == (224, 98)
    with pytest.raises(ConfigError, match="global_scale"):
        MultiCrop(global_scale=(0.9, 0.1))


def test_noise_of_a_sample_depends_on_its_seed_alone():
    """Noise on every view: a sample's views are the same alone or in any batch (before, one
    generator seeded by the sum of the batch's seeds drew the noise of the whole batch)."""
    mc = MultiCrop(
        global_size=32,
        local_size=16,
        n_local=2,
        noise=0.2,
        noise_p=1.0,
        **{k: v for k, v in PLAIN.items() if k != "noise"},
    )
    x = torch.rand(4, 1, 40, 40)
    views = mc(x, seeds=[5, 6, 7, 8])
    alone = mc(x[2:3], seeds=[7])
    swapped = mc(x[[2, 0]], seeds=[7, 5])
    for a, b, c in zip(views, alone, swapped):
        torch.testing.assert_close(a[2:3], b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[[2, 0]], c, rtol=1e-5, atol=1e-6)
    faint = {**PLAIN, "noise": 1e-9}  # the same crops, (almost) without the noise
    plain = MultiCrop(global_size=32, local_size=16, n_local=2, noise_p=1.0, **faint)
    noise = [v - p for v, p in zip(views, plain(x, seeds=[5, 6, 7, 8]))]
    assert all(0.005 < float(n.std()) < 0.25 for n in noise)  # noise is there
    assert not torch.allclose(noise[0][0], noise[0][1], atol=1e-3)  # and differs per sample
    assert not torch.allclose(noise[0][0], noise[1][0], atol=1e-3)  # and per view
