"""``microfm-train`` as a subprocess, for the benchmarks that compare whole training runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def run_train(overrides: list[str], results: Path, name: str) -> tuple[dict, float]:
    """Run ``microfm-train`` with ``overrides`` into ``results`` as experiment ``name`` (the
    command is printed; a failure ends the benchmark with its stderr). Returns the run's
    ``metrics.json`` and its wall time in seconds."""
    cmd = [
        sys.executable,
        "-m",
        "microfm.cli.train",
        *overrides,
        f"results_root={results}",
        f"experiment_id={name}",
    ]
    print("$ microfm-train", " ".join(cmd[3:]), flush=True)
    start = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    path = next(results.glob(f"*/{name}/metrics.json"))
    return json.loads(path.read_text()), time.time() - start
