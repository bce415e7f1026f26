"""Peak memory of a zarr-backed prediction of an image larger than one would load whole.

Writes an 8192x8192 16-bit synthetic nuclei image as a chunked zarr array, then predicts it in a
child process with a ViT-S/16 cellseg model (random weights) through ``predict_files`` (block by
block: normalisation statistics from a subsample, sliding window over the global tile grid,
watershed with a halo, labels zarr + per-cell CSV + overlay). The child's peak resident memory
(``ru_maxrss``) is the number reported; the target is < 2 GB. For scale, the image alone is
128 MiB as uint16 and 256 MiB as float32, its float32 distance map another 256 MiB.

    flock /tmp/microfm-cpu.lock python benchmarks/bench_predict_zarr.py [--size 8192]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {bench!r})
from inference_common import cellseg_model
from microfm.inference import Predictor
from microfm.inference.files import find_inputs, predict_files
args = json.loads({args!r})
model = cellseg_model(args["backbone"], args["tile"])
predictor = Predictor(model, args["tile"], args["overlap"], args["batch_size"], device="cpu")
t = time.perf_counter()
outcome = predict_files(predictor, find_inputs(args["input"]), args["output"],
                        zarr_block=args["block"], zarr_halo=args["halo"], progress=False)
seconds = time.perf_counter() - t
assert outcome.done, outcome
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(json.dumps({{"seconds": seconds, "maxrss_kib": rss}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=float, default=0.125)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--halo", type=int, default=128)
    p.add_argument("--backbone", default="dinov3_vits16")
    args = p.parse_args()
    bench = str(Path(__file__).resolve().parent)
    sys.path.insert(0, bench)
    import numpy as np
    import zarr
    from inference_common import machine, nuclei_image

    tmp = Path(tempfile.mkdtemp(prefix="microfm-bench-zarr-"))
    try:
        z = zarr.open_array(
            tmp / "big.zarr", mode="w", shape=(args.size,) * 2, chunks=(1024, 1024), dtype="uint16"
        )
        field = nuclei_image(2048)
        for y in range(0, args.size, 2048):
            for x in range(0, args.size, 2048):
                z[y : y + 2048, x : x + 2048] = np.roll(field, (y // 7, x // 5), axis=(0, 1))
        del field
        child_args = {
            "input": str(tmp / "big.zarr"),
            "output": str(tmp / "out"),
            "backbone": args.backbone,
            "tile": args.tile,
            "overlap": args.overlap,
            "batch_size": args.batch_size,
            "block": args.block,
            "halo": args.halo,
        }
        code = CHILD.format(bench=bench, args=json.dumps(child_args))
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        with open(tmp / "out" / "big_cellseg_cells.csv") as f:
            cells = sum(1 for _ in f) - 1
        print(f"machine: {machine()}")
        print(
            f"image {args.size}x{args.size} uint16 zarr (chunks 1024), {args.backbone} cellseg, "
            f"tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}, "
            f"block {args.block}, halo {args.halo}"
        )
        print(f"prediction: {result['seconds']:.0f} s ({wall:.0f} s with start-up), {cells} cells")
        peak = result["maxrss_kib"] / 2**20
        print(f"peak resident memory of the predicting process: {peak:.2f} GiB")
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"(this parent process, which wrote the input: {self_rss:.2f} GiB)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
