"""Joint vs separate training of cellseg, classify and depth on the synthetic data.

Runs ``microfm-train`` once with ``task=multitask`` (each loss weighting given) and once per
single task, all with the same data, backbone, augmentation, schedule and seed, and prints the
test metrics side by side as a markdown table. Early stopping is off (patience = epochs), so
every run trains the same number of epochs; each tests its best checkpoint by its monitor
(the joint runs by ``val/cellseg/op_csb``).

    flock /tmp/microfm-cpu.lock python benchmarks/multitask_synthetic.py --epochs 25 \
        --results /tmp/microfm-multitask
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from train_runs import run_train

TASKS = ("cellseg", "classify", "depth")
KEYS = {
    "cellseg": ("op_csb", "seg", "det", "ap50", "f1", "pq"),
    "classify": ("acc", "balanced_acc", "macro_f1"),
    "depth": ("absrel", "rmse", "delta1"),
}


def run(overrides: list[str], results: Path, name: str) -> tuple[dict, float]:
    return run_train([*overrides, "trainer.enable_progress_bar=false"], results, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--results", type=Path, default=Path("/tmp/microfm-multitask"))
    parser.add_argument("--weightings", nargs="+", default=["fixed", "uncertainty", "gradnorm"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common = [
        "backbone=vit_test",
        "finetune=full",
        "augment=flips",
        "data.image_size=64",
        "data.n_train=192",
        "data.n_val=32",
        "data.n_test=64",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        # every run trains all epochs (early stopping would cut the slow single tasks short)
        f"callbacks.early_stopping.patience={args.epochs}",
    ]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    columns: dict[str, tuple[dict, float]] = {}
    for task in TASKS:
        columns[f"{task} alone"] = run([f"task={task}", *common], args.results, f"single_{task}")
    for mode in args.weightings:
        columns[f"joint ({mode})"] = run(
            [
                "task=multitask",
                "task.tasks=[cellseg,classify,depth]",
                f"task.weighting.mode={mode}",
                *common,
            ],
            args.results,
            f"joint_{mode}",
        )
    singles = {t: columns[f"{t} alone"][0] for t in TASKS}
    joints = [c for c in columns if c.startswith("joint")]
    print("\n| task | metric | separately | " + " | ".join(joints) + " |")
    print("|---|---|---|" + "---|" * len(joints))
    for task in TASKS:
        for key in KEYS[task]:
            k = f"test/{task}/{key}"
            row = [f"{singles[task][k]:.3f}"] + [f"{columns[c][0][k]:.3f}" for c in joints]
            print(f"| {task} | {key} | " + " | ".join(row) + " |")
    sep = sum(columns[f"{t} alone"][1] for t in TASKS)
    print(
        f"\nwall time: separately {sep:.0f} s in total; "
        + ", ".join(f"{c} {columns[c][1]:.0f} s" for c in joints)
    )


if __name__ == "__main__":
    main()
