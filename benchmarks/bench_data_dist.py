"""Per-cell distance-map targets: per-object (bounding box) vs one full-image transform per
label, on a 1024x1024 label image with ~500 touching nuclei.

    flock /tmp/microfm-cpu.lock python benchmarks/bench_data_dist.py
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from scipy import ndimage as ndi

from microfm.data.synthetic import SyntheticConfig, generate_sample, sample_rng
from microfm.transforms.targets import distance_map


def naive_distance_map(labels: np.ndarray) -> np.ndarray:
    """The direct definition: one Euclidean distance transform of the whole image per label."""
    out = np.zeros(labels.shape, np.float32)
    for i in np.unique(labels):
        if i == 0:
            continue
        mask = labels == i
        edt = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        out[mask] = edt[mask] / edt.max()
    return out


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    cfg = SyntheticConfig(image_size=args.size, radius=(11.0, 13.0), density=(0.19, 0.19))
    labels = generate_sample(sample_rng(0, "train", 0), cfg)["instances"].astype(np.int32)
    n = int(labels.max())
    ours = best_of(lambda: distance_map(labels), args.repeats)
    naive = best_of(lambda: naive_distance_map(labels), 1)
    diff = float(np.abs(distance_map(labels) - naive_distance_map(labels)).max())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"image {args.size}x{args.size}, {n} cells (touching clusters)")
    print(f"per-object (bounding boxes): {ours * 1e3:8.1f} ms  (best of {args.repeats})")
    print(f"naive (full image per label): {naive * 1e3:8.1f} ms")
    print(f"speed-up: {naive / ours:.0f}x   max |difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
