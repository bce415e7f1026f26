"""Throughput of the exported model: PyTorch vs onnxruntime on CPU, single image and batched,
measured in one run on the same inputs (ViT-S/16 cellseg, random weights, 256x256 tiles).

    flock /tmp/microfm-cpu.lock python benchmarks/bench_export.py [--backbone dinov3_vits16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from inference_common import cellseg_model, machine

from microfm.inference.export import ExportModule, export_onnx


def rate(fn, x, seconds: float) -> float:
    """Images per second of ``fn(x)`` over at least ``seconds`` (after one warm-up call)."""
    fn(x)
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds or n < 3:
        fn(x)
        n += 1
    return n * x.shape[0] / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="dinov3_vits16")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="timing per measurement")
    args = p.parse_args()
    import onnxruntime as ort

    model = cellseg_model(args.backbone, args.tile)
    module = ExportModule(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        t = time.perf_counter()
        report = export_onnx(model, path)
        export_s = time.perf_counter() - t
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def torch_run(x):
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        def ort_run(x):
            return session.run(None, {"image": x})

        rows = []
        for batch in (1, args.batch_size):
            x = np.random.default_rng(0).random((batch, 1, args.tile, args.tile), np.float32)
            # interleaved: PyTorch, onnxruntime, PyTorch, onnxruntime; best of two each
            pt = max(rate(torch_run, x, args.seconds / 2) for _ in range(2))
            ox = max(rate(ort_run, x, args.seconds / 2) for _ in range(2))
            rows.append((batch, pt, ox))
    print(f"machine: {machine()}, onnxruntime {ort.__version__}")
    print(
        f"{args.backbone} cellseg, {args.tile}x{args.tile} tiles; export + parity check "
        f"{export_s:.0f} s, max abs diff {report['max_abs_diff']:.1e}"
    )
    print("batch | PyTorch img/s | onnxruntime img/s | ort / torch")
    for batch, pt, ox in rows:
        print(f"{batch:5d} | {pt:13.2f} | {ox:17.2f} | {ox / pt:.2f}")


if __name__ == "__main__":
    main()
