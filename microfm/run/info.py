"""``run_info.txt``: what produced a run (versions, git commit, host, command line)."""

from __future__ import annotations

import datetime as dt
import platform
import shlex
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from microfm.utils.io import atomic_write_text

_PACKAGES = (
    "microfm",
    "torch",
    "torchvision",
    "lightning",
    "timm",
    "peft",
    "hydra-core",
    "omegaconf",
    "torchmetrics",
    "albumentations",
    "scikit-image",
    "numpy",
)


def git_commit(path: Path) -> str:
    """Commit (with ``-dirty`` when modified) of the checkout holding ``path``, if any."""
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"


def run_info_text(argv: list[str] | None = None) -> str:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    lines = [
        f"date: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"command: {shlex.join(argv if argv is not None else sys.argv)}",
        f"cwd: {Path.cwd()}",
        f"host: {socket.gethostname()}",
        f"platform: {platform.platform()}",
        f"python: {sys.version.split()[0]}",
        f"git_commit: {git_commit(Path(__file__).resolve().parent)}",
        f"cuda: {torch.version.cuda if torch.cuda.is_available() else 'not available'}",
        f"gpus: {', '.join(gpus) or 'none'}",
    ]
    for pkg in _PACKAGES:
        try:
            lines.append(f"{pkg}: {version(pkg)}")
        except PackageNotFoundError:
            lines.append(f"{pkg}: not installed")
    return "\n".join(lines) + "\n"


def write_run_info(run_dir: Path, argv: list[str] | None = None) -> None:
    atomic_write_text(Path(run_dir) / "run_info.txt", run_info_text(argv))
