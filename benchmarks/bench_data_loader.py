"""Does data loading keep up with training? Crops/s delivered by the data=folder loader (real
16-bit BBBC039 images, 224 crops, cellseg_default augmentation, distance-map targets computed
after augmentation, default number of workers) vs samples/s consumed by a ViT-S/16 LoRA training
step (cellseg head, forward + backward + AdamW), measured in one run on this machine.

    flock /tmp/microfm-cpu.lock python benchmarks/bench_data_loader.py [--root PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from microfm.run.build import build
from microfm.run.config import compose

SHARED = Path(os.environ.get("MICROFM_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(SHARED / "data" / "bbbc039_nuclei"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batches", type=int, default=20, help="loader batches to time")
    p.add_argument("--steps", type=int, default=3, help="training steps to time")
    p.add_argument("--num-workers", default="auto")
    args = p.parse_args()
    cache = tempfile.mkdtemp(prefix="microfm-bench-")
    cfg = compose(
        [
            "task=cellseg",
            "backbone=dinov3_vits16",
            "finetune=lora",
            "finetune.allow_random=true",
            "data=folder",
            f"data.root={args.root}",
            f"data.crop_size={args.crop}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.num_workers}",
            f"data.cache_dir={cache}",
            "augment=cellseg_default",
        ]
    )
    torch.manual_seed(0)
    t = time.perf_counter()
    dm = build(cfg.data, "data", augment=build(cfg.augment, "augment"))
    dm.setup()
    setup_s = time.perf_counter() - t
    loader = dm.train_dataloader()
    n = 0
    it = iter(loader)
    next(it)  # workers started, first batch
    t = time.perf_counter()
    while n < args.batches:
        try:
            batch = next(it)
        except StopIteration:
            dm.datasets["train"].epoch += 1
            it = iter(loader)
            continue
        n += 1
    loader_s = (time.perf_counter() - t) / n

    from microfm.modules import SupervisedModule

    task = build(cfg.task, "task")
    backbone = build(cfg.backbone, "backbone")
    build(cfg.finetune, "finetune").apply(backbone)
    module = SupervisedModule(backbone, task)
    params = [q for q in module.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = sum(module._losses(module(batch["image"]), batch).values())
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    step_s = (time.perf_counter() - t) / args.steps
    bs = args.batch_size
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}"
    )
    print(
        f"data: {args.root}, {len(dm.datasets['train'])} training images, crops "
        f"{args.crop}, batch {bs}, num_workers={args.num_workers} -> {dm.num_workers}"
    )
    print(f"setup (validation + cache fill): {setup_s:.1f} s")
    print(f"loader: {loader_s * 1e3:8.1f} ms/batch = {bs / loader_s:8.1f} crops/s")
    print(
        f"ViT-S/16 LoRA step: {step_s * 1e3:8.1f} ms/batch = {bs / step_s:8.1f} samples/s "
        f"({sum(q.numel() for q in params):,} trainable parameters)"
    )
    print(
        f"loader / step throughput: {step_s / loader_s:.1f}x "
        f"(loader time is {100 * loader_s / (loader_s + step_s):.0f}% of a step+load cycle "
        "when run in the main process)"
    )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
