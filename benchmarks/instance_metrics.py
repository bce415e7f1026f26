"""Speed of microfm's in-memory instance metrics vs the reference implementations.

On BBBC039 label images (520×696) with perturbed predictions, times per image:

* ours: ``microfm.metrics.instance_counts`` (CTC SEG/DET counts + matching at IoU 0.5, 0.75,
  0.9 — everything ``instance_scores`` returns);
* reference: ``py-ctcmetrics``' ``match`` (its confusion-matrix matching, fed the arrays in
  memory, without TIFF reading) + ``count_acyclic_graph_correction_operations`` for DET, plus
  ``stardist.matching.matching`` at the same three thresholds;
* the watershed threshold grid of ``task=cellseg`` (5 x 4 pairs, 18 valid) per image: one
  watershed per seed threshold (``watershed_fill_sweep``, the default) vs one per pair.

    flock /tmp/microfm-cpu.lock python benchmarks/instance_metrics.py /work/shared
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from microfm.metrics import grid_counts, instance_counts
from microfm.metrics.threshold_grid import watershed_segment
from microfm.transforms import distance_map
from tests.test_conformance_instance import everything

# match() insists on existing paths; their arrays are served from memory
_TMP = tempfile.mkdtemp()
PATHS = (os.path.join(_TMP, "ref.tif"), os.path.join(_TMP, "comp.tif"))
for _p in PATHS:
    Path(_p).touch()


def reference(pred: np.ndarray, gt: np.ndarray) -> None:
    from ctc_metrics.utils import representations as rep
    from stardist.matching import matching

    arrays = {PATHS[0]: gt.astype(np.uint16), PATHS[1]: pred.astype(np.uint16)}
    real = rep.tiff.imread
    rep.tiff.imread = lambda key: arrays[key].copy()  # no file IO in the timing
    try:
        labels_ref, labels_comp, mapped_ref, mapped_comp, _ = rep.match(*PATHS)
    finally:
        rep.tiff.imread = real
    rep.count_acyclic_graph_correction_operations(
        None, None, [labels_ref], [labels_comp], [mapped_ref], [mapped_comp]
    )
    matching(gt, pred, thresh=(0.5, 0.75, 0.9))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared", type=Path, help="the ../shared folder")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = sorted((args.shared / "data" / "bbbc039_nuclei" / "labels").glob("*.tif"))
    gts = [tifffile.imread(f) for f in files[: args.images]]
    rng = np.random.default_rng(0)
    preds = [everything(g, rng) for g in gts]
    ours = ref = 0.0
    for p, g in zip(preds, gts):
        ours += best_of(partial(instance_counts, p, g), args.repeats)
        ref += best_of(partial(reference, p, g), args.repeats)
    dists = [distance_map(g) for g in gts[:4]]
    cm, cf = [0.3, 0.4, 0.5, 0.6, 0.7], [0.05, 0.1, 0.2, 0.3]
    grid = best_of(lambda: grid_counts(dists, gts[:4], cm, cf), 1) / len(dists)
    per_pair = best_of(
        lambda: grid_counts(dists, gts[:4], cm, cf, segment=watershed_segment()), 1
    ) / len(dists)
    n = len(gts)
    objects = np.mean([len(np.unique(g)) - 1 for g in gts])
    print(f"{n} BBBC039 images {gts[0].shape}, {objects:.0f} nuclei on average")
    print(f"ours (all scores):             {1000 * ours / n:7.1f} ms per image")
    print(f"py-ctcmetrics + stardist:      {1000 * ref / n:7.1f} ms per image")
    print(f"speed-up:                      {ref / ours:7.1f}x")
    print(f"threshold grid, sweep:         {1000 * grid:7.1f} ms per image (watershed + scores)")
    print(f"threshold grid, per pair:      {1000 * per_pair:7.1f} ms per image")
    print(f"grid speed-up:                 {per_pair / grid:7.1f}x")


if __name__ == "__main__":
    main()
