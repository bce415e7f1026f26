"""Backbone speed and memory, measured side by side in one run:

1. the microfm backbone forward vs the bare timm model (same weights, same input);
2. training throughput of full fine-tuning, LoRA (r=8 on attn.qkv) and a frozen backbone with
   a linear head, and the fraction of the measured fp32 matmul peak they reach;
3. the extra training memory (beyond the weights) of full fine-tuning vs LoRA for ViT-S/16 and
   ViT-B/16, and of a ViT-B/16 LoRA step without and with gradient checkpointing (selective
   and full), with the step times of the three measured alternately in one process.

ViT-S/16 and ViT-B/16 are DINOv3 architectures with random weights, 224x224 inputs, batch 8.
Memory on CPU is the peak resident set size of a fresh process during its first step minus its
size before the step, with glibc's mmap threshold fixed at 128 KiB so that freed tensors go back
to the system and the peak follows the live tensors (with the default, adaptive threshold the
peak also holds whatever the allocator kept from earlier frees and varies by ~15 % between
runs); on CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory held before the step.

    flock /tmp/microfm-cpu.lock python benchmarks/bench_backbone.py [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

from microfm.backbones import build_backbone
from microfm.finetune.adapt import Finetune

SIZE, BATCH = 224, 8  # changed by --size/--batch for smoke runs


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(device: str) -> float:
    """fp32 GFLOP/s of a large square matmul (the machine's practical peak)."""
    n = 2048 if device == "cpu" else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    seconds = _time(lambda: a @ b, device, 5)
    return 2 * n**3 / seconds / 1e9


def _backbone(name: str, mode: str, device: str, checkpointing: bool | str = False):
    torch.manual_seed(0)
    bb = build_backbone(name, grad_checkpointing=checkpointing)
    Finetune(mode, mode, {"r": 8, "target_modules": ["attn.qkv"]}, allow_random=True).apply(bb)
    head = torch.nn.Linear(bb.embed_dim, 10)
    return bb.to(device), head.to(device)


def _step_fn(bb, head, device: str):
    params = [p for p in [*bb.parameters(), *head.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    bb.train()

    def step():
        feats = bb.forward_features(x)
        loss = torch.nn.functional.cross_entropy(head(feats["patch"].mean((2, 3))), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def training_flops(bb, head, device: str) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step = _step_fn(bb, head, device)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def speed(args) -> dict:
    device, repeats = args.device, args.repeats
    out: dict = {"matmul_peak_gflops": matmul_peak(device)}
    # 1. forward: wrapper vs bare timm model, interleaved
    bb, _ = _backbone("dinov3_vits16", "full", device)
    bb.eval()
    bare = bb.model
    x = torch.rand(BATCH, 3, SIZE, SIZE, device=device)
    normed = (x - bb.mean) / bb.std
    wrapper_t, bare_t = [], []
    with torch.no_grad():
        for _ in range(repeats):
            wrapper_t.append(_time(lambda: bb.forward_features(x), device, 1))
            bare_t.append(_time(lambda: bare.forward_features(normed), device, 1))
    out["forward_img_s"] = {
        "microfm": BATCH / statistics.median(wrapper_t),
        "timm": BATCH / statistics.median(bare_t),
    }
    out["forward_ratio_microfm_vs_timm"] = statistics.median(bare_t) / statistics.median(wrapper_t)
    # 2. training throughput per mode (frozen: the backbone runs without autograd)
    train = {}
    for mode in ("full", "lora", "frozen"):
        bb, head = _backbone("dinov3_vits16", mode, device)
        flops = training_flops(bb, head, device)
        seconds = _time(_step_fn(bb, head, device), device, repeats)
        train[mode] = {
            "img_s": BATCH / seconds,
            "step_s": seconds,
            "gflop_per_step": flops / 1e9,
            "fraction_of_peak": flops / seconds / 1e9 / out["matmul_peak_gflops"],
        }
    out["train"] = train
    out["lora_vs_full_throughput"] = train["lora"]["img_s"] / train["full"]["img_s"]
    return out


def memory_one(name: str, mode: str, checkpointing: bool | str, device: str) -> dict:
    """Extra memory of one configuration's first step (run in a fresh process; its step time
    is not used: the fixed mmap threshold makes allocation slower than usual)."""
    bb, head = _backbone(name, mode, device, checkpointing)
    step = _step_fn(bb, head, device)
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - before
    else:
        before = _rss_now()
        with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to now
            f.write("5")
        step()
        extra = _peak_rss() - before
    return {"extra_mb": extra / 2**20}


def _rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def memory(args) -> dict:
    cases = {
        "vits16_full": ("dinov3_vits16", "full", False),
        "vits16_lora": ("dinov3_vits16", "lora", False),
        "vitb16_full": ("dinov3_vitb16", "full", False),
        "vitb16_lora": ("dinov3_vitb16", "lora", False),
        "vitb16_lora_checkpointing": ("dinov3_vitb16", "lora", "selective"),
        "vitb16_lora_checkpointing_full": ("dinov3_vitb16", "lora", "full"),
    }
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    out = {}
    for key, (name, mode, ckpt) in cases.items():
        cmd = [
            sys.executable,
            __file__,
            "--one",
            json.dumps([name, mode, ckpt]),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--size",
            str(SIZE),
            "--batch",
            str(BATCH),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[key] = json.loads(result.stdout.strip().splitlines()[-1])
    out["lora_vs_full_memory"] = {
        s: out[f"{s}_lora"]["extra_mb"] / out[f"{s}_full"]["extra_mb"] for s in ("vits16", "vitb16")
    }
    plain = out["vitb16_lora"]["extra_mb"]
    out["checkpointing_memory_ratio"] = {
        "selective": out["vitb16_lora_checkpointing"]["extra_mb"] / plain,
        "full": out["vitb16_lora_checkpointing_full"]["extra_mb"] / plain,
    }
    out["checkpointing_step_s"] = steps = checkpointing_times(args)
    out["checkpointing_time_ratio"] = {
        mode: steps[mode] / steps["off"] for mode in ("selective", "full")
    }
    return out


def checkpointing_times(args) -> dict:
    """Median step time of a ViT-B/16 LoRA step without and with checkpointing, the three
    models stepped in turn in one process (so machine load affects them alike)."""
    steps = {
        mode: _step_fn(*_backbone("dinov3_vitb16", "lora", args.device, ck), args.device)
        for mode, ck in (("off", False), ("selective", "selective"), ("full", "full"))
    }
    for step in steps.values():
        step()  # warm-up
    times: dict = {mode: [] for mode in steps}
    for _ in range(args.repeats):
        for mode, step in steps.items():
            _sync(args.device)
            t0 = time.perf_counter()
            step()
            _sync(args.device)
            times[mode].append(time.perf_counter() - t0)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--batch", type=int, default=BATCH)
    args = p.parse_args()
    globals().update(SIZE=args.size, BATCH=args.batch)
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)  # random-weight notices
    if args.one:
        print(json.dumps(memory_one(*json.loads(args.one), device=args.device)))
        return
    result = {
        "machine": f"{platform.machine()}, {args.threads} threads, {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""),
        "torch": torch.__version__,
        "speed": speed(args),
    }
    if not args.skip_memory:
        result["memory"] = memory(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
