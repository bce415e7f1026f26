"""Feature extraction vs the bare backbone forward, and a cached run vs the first run.

Writes ``--images`` 16-bit TIFFs (``--size`` pixels, one channel) into a temporary folder and
reads them through ``data=unlabeled`` (whole images), as ``microfm-features`` does. In one run:

1. ``microfm-features`` from an empty feature cache (model built, files validated and decoded,
   features extracted and saved), then the same command again (a cache hit): time ratio;
2. images/s of ``extract_features`` (DataLoader workers, host-to-device copies, device-to-host
   copies in a background thread, features kept) vs images/s of the bare
   ``backbone.forward_features`` on images already in device memory, same batch size and
   precision; both alternated ``--repeats`` times, medians compared. End to end (including
   the start of the loader workers and the first batch) and in the steady state: the marginal
   rate between a run over all images and one over the first half, which cancels fixed start
   costs.

    flock /tmp/microfm-cpu.lock python benchmarks/bench_features.py            # CPU defaults
    python benchmarks/bench_features.py --images 4096 --size 448 --batch 64    # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch


def write_images(folder: Path, n: int, size: int, seed: int = 0) -> None:
    """Smooth 16-bit blobs with Poisson noise (what microscopy files look like to a reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    for i in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.005, 0.05))
        img = rng.poisson(200 + 3000 * blob).astype(np.uint16)
        tifffile.imwrite(folder / f"img_{i:05d}.tif", img)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(backbone, images: torch.Tensor, batch: int, amp, device) -> float:
    """Seconds for ``forward_features`` over images already on the device."""
    sync(device)
    t = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for i in range(0, len(images), batch):
            out = backbone.forward_features(images[i : i + batch])
    del out
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", default="auto", help="loader workers ('auto' or a number)")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args()

    from microfm.analysis.features import autocast_dtype, extract_features, resolve_device
    from microfm.data.datamodule import resolve_num_workers
    from microfm.run.config import compose
    from microfm.run.features import build_datamodule, build_source, compute_features

    work = Path(tempfile.mkdtemp(prefix="microfm-bench-features-"))
    write_images(work / "data", args.images, args.size)
    workers = args.workers if args.workers == "auto" else int(args.workers)
    cfg = compose(
        [
            f"backbone={args.backbone}",
            "data=unlabeled",
            f"data.root={work / 'data'}",
            "data.split.val=0.0",
            f"data.cache_dir={work / 'preprocessed'}",
            f"extract.cache_dir={work / 'features'}",
            f"extract.batch_size={args.batch}",
            f"extract.num_workers={workers}",
            f"extract.device={args.device}",
            "extract.progress=false",
        ],
        config_name="features",
    )
    torch.manual_seed(0)
    # 1. first run (empty caches) vs a repeated run (cache hit)
    t = time.perf_counter()
    first, info = compute_features(cfg)
    first_s = time.perf_counter() - t
    assert not info["cached"]
    t = time.perf_counter()
    again, info = compute_features(cfg)
    cached_s = time.perf_counter() - t
    assert info["cached"] and np.array_equal(first.arrays["cls"], again.arrays["cls"])

    # 2. extraction throughput vs the bare forward pass
    device = resolve_device(args.device)
    amp = autocast_dtype("auto", device)
    backbone, _ = build_source(cfg)
    backbone = backbone.to(device).eval()
    ds = build_datamodule(cfg).datasets["train"]
    images = torch.stack([ds[i]["image"] for i in range(len(ds))]).to(device)
    n_workers = resolve_num_workers(workers)
    bare_forward(backbone, images[: 2 * args.batch], args.batch, amp, device)  # warm-up
    half = len(ds) // 2
    subset = torch.utils.data.Subset(ds, range(half))
    bare, bare_half, extract, extract_half = [], [], [], []

    def timed_extract(dataset) -> float:
        sync(device)
        t = time.perf_counter()
        fs = extract_features(
            backbone, {"train": dataset}, args.batch, n_workers, device, progress=False
        )
        sync(device)
        assert len(fs) == len(dataset)
        return time.perf_counter() - t

    for _ in range(args.repeats):
        bare.append(bare_forward(backbone, images, args.batch, amp, device))
        bare_half.append(bare_forward(backbone, images[:half], args.batch, amp, device))
        extract.append(timed_extract(ds))
        extract_half.append(timed_extract(subset))
    med = statistics.median
    bare_ips = len(ds) / med(bare)
    extract_ips = len(ds) / med(extract)
    marginal = len(ds) - half
    bare_steady = marginal / max(med(bare) - med(bare_half), 1e-9)
    extract_steady = marginal / max(med(extract) - med(extract_half), 1e-9)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "gpu": gpu,
        "backbone": args.backbone,
        "images": len(ds),
        "size": args.size,
        "batch": args.batch,
        "workers": n_workers,
        "precision": str(amp) if amp is not None else "fp32",
        "bare_images_per_s": round(bare_ips, 1),
        "extract_images_per_s": round(extract_ips, 1),
        "throughput_ratio": round(extract_ips / bare_ips, 3),
        "bare_steady_images_per_s": round(bare_steady, 1),
        "extract_steady_images_per_s": round(extract_steady, 1),
        "steady_throughput_ratio": round(extract_steady / bare_steady, 3),
        "first_run_s": round(first_s, 3),
        "cached_run_s": round(cached_s, 3),
        "cache_speedup": round(first_s / cached_s, 1),
    }
    for k, v in results.items():
        print(f"{k:22s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
