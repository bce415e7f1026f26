"""The watershed threshold grid: counts per pair equal scoring each pair on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from microfm.inference import Watershed
from microfm.metrics import ThresholdGridMetrics, grid_counts, grid_scores, instance_scores
from microfm.metrics.instance import count_keys
from microfm.transforms import distance_map

CM, CF = [0.3, 0.5, 0.8], [0.05, 0.2, 0.6]


def _case(seed: int):
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 40), np.int32)
    for k in range(1, 7):
        y, x = rng.integers(2, 30, 2)
        gt[y : y + rng.integers(5, 10), x : x + rng.integers(5, 10)] = k
    dist = distance_map(gt) * rng.uniform(0.7, 1.1) + rng.normal(0, 0.08, gt.shape)
    return dist.astype(np.float32), gt


def test_grid_counts_equal_per_pair_scores():
    dists, gts = zip(*[_case(s) for s in range(3)])
    counts = grid_counts(dists, gts, CM, CF)
    grid, (bi, bj), best = grid_scores(counts, CM, CF)
    for i, cm in enumerate(CM):
        for j, cf in enumerate(CF):
            if cf > cm:
                assert np.isnan(grid[i, j])
                continue
            labels = [Watershed(cm, cf)(d) for d in dists]
            assert grid[i, j] == pytest.approx(instance_scores(labels, list(gts))["op_csb"])
    assert grid[bi, bj] == np.nanmax(grid)
    labels = [Watershed(CM[bi], CF[bj])(d) for d in dists]
    assert best == pytest.approx(instance_scores(labels, list(gts)))


def test_grid_metric_accumulates_batches_and_selects_by_score():
    dists, gts = zip(*[_case(s) for s in range(4)])
    m = ThresholdGridMetrics(CM, CF, score="ap75")
    m.update(np.stack(dists[:2]), torch.from_numpy(np.stack(gts[:2])))
    m.update(np.stack(dists[2:]), torch.from_numpy(np.stack(gts[2:])))
    out = m.compute()
    assert out["grid"].shape == (3, 3)
    expected = grid_counts(dists, gts, CM, CF)
    assert np.allclose(m.counts.numpy(), expected)
    assert m.counts.shape[-1] == len(count_keys())
    grid = out["grid"].numpy()
    assert float(out["ap75"]) == pytest.approx(np.nanmax(grid), abs=1e-6)
    i = CM.index(round(float(out["cells_max"]), 6))
    j = CF.index(round(float(out["cell_fill"]), 6))
    assert grid[i, j] == np.nanmax(grid)


def test_grid_without_valid_pair_is_rejected():
    with pytest.raises(ValueError, match="no pair"):
        ThresholdGridMetrics([0.1], [0.5])


@pytest.mark.parametrize("seed", range(6))
def test_one_watershed_per_seed_threshold_equals_the_direct_watershed(seed):
    from scipy import ndimage as ndi

    from microfm.metrics.threshold_grid import watershed_fill_sweep

    rng = np.random.default_rng(seed)
    if seed % 2:
        dist, _ = _case(seed)
    else:  # smooth random field, quantised so that plateaus and ties are frequent
        dist = ndi.gaussian_filter(rng.random((48, 40)), 2.5)
        dist = (dist - dist.min()) / (dist.max() - dist.min())
    dist = np.round(dist * 20) / 20 if seed % 3 == 0 else dist
    fills = [0.05, 0.1, 0.2, 0.3, 0.45]
    for cells_max in (0.45, 0.6, 0.8):
        for min_area in (0, 6):
            ok = [cf for cf in fills if cf <= cells_max]
            swept = watershed_fill_sweep(dist, cells_max, ok, min_area)
            for cf, labels in zip(ok, swept):
                direct = Watershed(cells_max, cf, min_area)(dist)
                assert np.array_equal(labels, direct), (cells_max, cf, min_area)


def test_custom_segment_function_is_used_per_pair():
    dists, gts = zip(*[_case(s) for s in range(2)])
    calls = []

    def segment(dist, cm, cf):
        calls.append((cm, cf))
        return Watershed(cm, cf)(dist)

    counts = grid_counts(dists, gts, CM, CF, segment=segment)
    assert len(calls) == 2 * 7  # 7 valid pairs (cell_fill <= cells_max) per image
    assert np.allclose(counts, grid_counts(dists, gts, CM, CF))
