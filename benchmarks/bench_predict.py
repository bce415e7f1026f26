"""Overhead of the full prediction path and gain of batched tiles, measured in one run.

On a 2048x2048 16-bit image with a ViT-S/16 cellseg model (DINOv3 architecture, random
weights, UNet head):

* full ``Predictor`` path (whole-image normalisation, tiling, batches of tiles, Hann blending,
  watershed on the blended image, writing labels TIFF + overlay PNG + per-cell CSV) vs the
  bare model forward over exactly the same tiles in the same batches (target <= 1.3x);
* batched tiles (batch 8) vs the naive one-tile-at-a-time loop (DINOCell/SAMCell style),
  full path and bare forward;
* the default head grouping (``head_batch=auto``: heads on 2 tiles at a time on CPU, the
  backbone on the whole batch) vs the heads on the whole batch, bare forward.

With ``--parts`` it times instead the backbone and the head separately, per tile, at batch
sizes 1, 2 and 8 (what ``head_batch=auto`` is chosen from).

    flock /tmp/microfm-cpu.lock python benchmarks/bench_predict.py [--size 2048] [--tile 256]
    flock /tmp/microfm-cpu.lock python benchmarks/bench_predict.py --parts
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from inference_common import cellseg_model, machine, nuclei_image

from microfm.inference import Predictor
from microfm.inference.files import write_prediction
from microfm.inference.tiling import reflect_pad


def full_path(predictor: Predictor, image: np.ndarray, out: Path) -> float:
    t = time.perf_counter()
    pred = predictor.predict(image)
    write_prediction(pred, image[None], out, "img", predictor)
    return time.perf_counter() - t


def bare_forward(predictor: Predictor, image: np.ndarray) -> float:
    """The model alone over the tiles the predictor cuts (cut beforehand, not timed)."""
    x = predictor.prepare(image)
    plan = predictor.window.plan(*x.shape[-2:])
    padded = torch.from_numpy(np.ascontiguousarray(reflect_pad(x, plan.pad)))
    th, tw = plan.tile
    tiles = [padded[:, y : y + th, x0 : x0 + tw] for y in plan.ys for x0 in plan.xs]
    bs = predictor.window.batch_size
    batches = [torch.stack(tiles[i : i + bs]) for i in range(0, len(tiles), bs)]
    t = time.perf_counter()
    for batch in batches:
        predictor.forward(batch)
    return time.perf_counter() - t


def parts(model, tile: int, repeats: int = 5, sizes=(1, 2, 8)) -> None:
    """Backbone and head time per tile at each batch size (8 random tiles, medians)."""
    x = torch.rand(max(sizes), model.in_chans, tile, tile)
    times: dict = {(part, bs): [] for part in ("backbone", "head") for bs in sizes}
    with torch.inference_mode():
        for bs in sizes:  # warm-up
            model.heads(model.features(x[:bs]), x[:bs])
        for _ in range(repeats):
            for bs in sizes:
                starts = range(0, len(x), bs)
                t = time.perf_counter()
                features = [model.features(x[i : i + bs]) for i in starts]
                times["backbone", bs].append((time.perf_counter() - t) / len(x))
                t = time.perf_counter()
                for i, f in zip(starts, features):
                    model.heads(f, x[i : i + bs])
                times["head", bs].append((time.perf_counter() - t) / len(x))
    for bs in sizes:
        print(
            f"batch {bs}: backbone {1000 * statistics.median(times['backbone', bs]):.0f} ms, "
            f"head {1000 * statistics.median(times['head', bs]):.0f} ms per tile"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--backbone", default="dinov3_vits16")
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; best kept")
    p.add_argument("--parts", action="store_true", help="time backbone and head separately")
    args = p.parse_args()
    model = cellseg_model(args.backbone, args.tile)
    if args.parts:
        print(f"machine: {machine()}, {args.backbone} cellseg, tile {args.tile}")
        parts(model, args.tile)
        return
    image = nuclei_image(args.size)
    batched = Predictor(model, args.tile, args.overlap, args.batch_size, device=args.device)
    naive = Predictor(model, args.tile, args.overlap, 1, device=args.device)
    whole = Predictor(
        model, args.tile, args.overlap, args.batch_size, head_batch=None, device=args.device
    )
    plan = batched.window.plan(*image.shape)
    print(f"machine: {machine()}, device {batched.device}")
    print(
        f"image {image.shape} {image.dtype}, {args.backbone} cellseg, tile {batched.tile_size}, "
        f"overlap {args.overlap}, {plan.num_tiles} tiles, head_batch {batched.head_batch}"
    )
    for predictor in (batched, naive, whole):  # warm-up (allocator, oneDNN kernels per batch shape)
        bare_forward(predictor, image[:512, :512])
    times: dict[str, list[float]] = {
        "bare": [],
        "full": [],
        "naive_bare": [],
        "naive_full": [],
        "whole_head_bare": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        # interleaved rounds, so that load from other processes hits every variant alike
        for _ in range(args.repeats):
            times["bare"].append(bare_forward(batched, image))
            times["full"].append(full_path(batched, image, Path(tmp)))
            times["naive_bare"].append(bare_forward(naive, image))
            times["naive_full"].append(full_path(naive, image, Path(tmp)))
            times["whole_head_bare"].append(bare_forward(whole, image))
    print("all rounds (s):", {k: [round(v, 1) for v in vs] for k, vs in times.items()})
    t_bare, t_full = min(times["bare"]), min(times["full"])
    t_naive_bare, t_naive_full = min(times["naive_bare"]), min(times["naive_full"])
    print(f"best of {args.repeats}:")
    print(f"bare forward, batch {args.batch_size}:   {t_bare:8.1f} s")
    print(f"full Predictor path, batch {args.batch_size}: {t_full:8.1f} s")
    print(f"  full / bare = {t_full / t_bare:.3f} (target <= 1.3)")
    print(f"bare forward, one tile at a time:   {t_naive_bare:8.1f} s")
    print(f"full path, one tile at a time:      {t_naive_full:8.1f} s")
    print(
        f"  naive / batched: bare {t_naive_bare / t_bare:.2f}x, full {t_naive_full / t_full:.2f}x"
    )
    t_whole = min(times["whole_head_bare"])
    print(f"bare forward, batch {args.batch_size}, heads on the whole batch: {t_whole:8.1f} s")
    print(f"  whole-batch heads / head_batch {batched.head_batch}: {t_whole / t_bare:.2f}x")


if __name__ == "__main__":
    main()
