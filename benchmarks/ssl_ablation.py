"""Self-supervised pretraining on unlabelled EM, then the same fine-tuning budget on few labels.

1. Pretrain the tiny DINOv3-architecture ViT (``vit_test``: embed 64, depth 4, patch 8) with
   ``task=mae`` and with ``task=dino`` on the 20 unlabelled slices of
   ``drosophila_vnc_em/stack2/raw`` (resized to 256x256, ``data=unlabeled``); each run exports
   ``ckpts/backbone.pth``.
2. Fine-tune mitochondria segmentation (``task=semseg``) on ``drosophila_vnc_em/stack1``
   (slices resized to 256x256): 2 labelled training slices, 2 validation, 16 test slices,
   starting from random weights, the MAE backbone and the DINO backbone, with two protocols:
   a frozen backbone with a linear head (what the features alone give) and full fine-tuning
   with the UNet head; same steps, schedule and seeds for every initialisation.
3. Print the test metrics side by side as a markdown table (mean over seeds, and per seed).

    flock /tmp/microfm-cpu.lock python benchmarks/ssl_ablation.py /work/shared \\
        --results /tmp/microfm-ssl-ablation [--resume]

Every command is printed; the table is also written to ``<results>/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from train_runs import run_train

COMMON = [
    "backbone=vit_test",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.num_workers=0",
]
PRETRAIN = {
    "mae": [
        "task=mae",
        "task.views.global_size=128",
        "task.decoder.dim=128",
        "task.decoder.num_heads=4",
        "optim.lr=1.0e-3",
    ],
    "dino": [
        "task=dino",
        "task.head.out_dim=4096",
        "task.head.hidden_dim=512",
        "task.head.bottleneck_dim=128",
        "task.views.global_size=96",
        "task.views.local_size=48",
        "task.views.n_local=4",
        "task.momentum=0.98",
        "optim.lr=1.0e-3",
    ],
}
PROTOCOLS = {
    "linear probe (frozen)": ["finetune=frozen", "finetune.allow_random=true", "task/head=linear"],
    "full fine-tuning": ["finetune=full"],
}
KEYS = ("fg_iou", "fg_dice", "miou")


def finished(results: Path, name: str, max_epochs: int) -> dict | None:
    """The metrics of a run that already ran to the end (tested, or all its epochs done)."""
    for path in results.glob(f"*/{name}/metrics.json"):
        metrics = json.loads(path.read_text())
        if any(k.startswith("test/") for k in metrics) or metrics.get("epoch") == max_epochs - 1:
            return metrics
    return None


def run(overrides: list[str], results: Path, name: str, resume: bool) -> tuple[dict, float]:
    epochs = next(int(o.split("=")[1]) for o in overrides if o.startswith("trainer.max_epochs="))
    if resume and (metrics := finished(results, name, epochs)) is not None:
        print(f"# {name}: already finished, reusing {results}/*/{name}/metrics.json", flush=True)
        return metrics, float(metrics.get("train_seconds", float("nan")))
    return run_train([*COMMON, *overrides], results, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shared", type=Path, help="the ../shared folder")
    parser.add_argument("--results", type=Path, default=Path("/tmp/microfm-ssl-ablation"))
    parser.add_argument("--pretrain-steps", type=int, default=200)
    parser.add_argument("--finetune-steps", type=int, default=80)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--resume", action="store_true", help="reuse runs of --results that already finished"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    em = args.shared / "data" / "drosophila_vnc_em"

    weights: dict[str, str | None] = {"random init": None}
    timings: dict[str, float] = {}
    for method, overrides in PRETRAIN.items():
        steps = args.pretrain_steps
        metrics, seconds = run(
            [
                *overrides,
                "data=unlabeled",
                f"data.root={em / 'stack2' / 'raw'}",
                "+data.image_size=256",  # whole slices resized: one 256x256 field per slice
                "data.split.val=0.1",
                "data.batch_size=18",  # the 18 training slices: one step per epoch
                "callbacks.knn=null",
                f"trainer.max_epochs={steps}",
                f"trainer.check_val_every_n_epoch={max(1, steps // 4)}",
            ],
            args.results,
            f"pretrain_{method}",
            args.resume,
        )
        weights[method.upper()] = metrics["backbone_export"]
        timings[f"pretrain {method.upper()}"] = seconds

    rows: dict[tuple[str, str], list[dict]] = {}
    steps = args.finetune_steps
    for protocol, overrides in PROTOCOLS.items():
        for init, path in weights.items():
            for seed in args.seeds:
                name = f"ft_{protocol.split()[0]}_{init.split()[0].lower()}_s{seed}"
                metrics, seconds = run(
                    [
                        "task=semseg",
                        *overrides,
                        "data=folder",
                        f"data.root={em / 'stack1'}",
                        "data.images=raw",
                        "data.masks=mitochondria",
                        "data.labels=null",
                        "data.depth=null",
                        "+data.image_size=256",
                        "data.split.val=0.1",
                        "data.split.test=0.8",  # 16 test slices, 2 validation, 2 training
                        "data.batch_size=2",
                        f"trainer.max_epochs={steps}",
                        f"trainer.check_val_every_n_epoch={max(1, steps // 4)}",
                        f"seed={seed}",
                        *([f"backbone.weights={path}"] if path else []),
                    ],
                    args.results,
                    name,
                    args.resume,
                )
                rows.setdefault((protocol, init), []).append(metrics)
                timings[name] = seconds

    lines = [
        "| protocol | initialisation | "
        + " | ".join(f"test {k}" for k in KEYS)
        + " | per seed fg_iou |",
        "|---|---|" + "---|" * (len(KEYS) + 1),
    ]
    for (protocol, init), runs in rows.items():
        means = [statistics.mean(r[f"test/semseg/{k}"] for r in runs) for k in KEYS]
        per_seed = ", ".join(f"{r['test/semseg/fg_iou']:.3f}" for r in runs)
        lines.append(
            f"| {protocol} | {init} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {per_seed} |"
        )
    table = "\n".join(lines)
    print(table)
    print("\nwall time per run (s):", json.dumps({k: round(v) for k, v in timings.items()}))
    (args.results / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
