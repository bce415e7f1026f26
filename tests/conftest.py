"""Shared fixtures. Tests that read ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MICROFM_SHARED", REPO.parent / "shared"))

# Under pytest-xdist the workers share the cores: each worker (and every process a test
# starts) gets cores / workers threads. Oversubscribed OpenMP threads spin-wait for each other
# and can make a test several times slower.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_threads)
    if "torch" in sys.modules:  # imported before this file: set its pool directly
        sys.modules["torch"].set_num_threads(_threads)


def pytest_collection_modifyitems(config, items):
    """Start the slow tests first, so that under pytest-xdist no long test runs alone at the
    end while the other workers are idle (the order within each group is kept)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Quiet, fast defaults for runs composed in tests: tiny backbone, small data, no workers.
TINY = [
    "backbone=vit_test",
    "data.image_size=32",
    "data.n_train=8",
    "data.n_val=4",
    "data.n_test=4",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture
def shared() -> Path:
    """The ../shared folder beside the checkout (skips the test when absent)."""
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (set MICROFM_SHARED to its location)")
    return SHARED


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    return [*TINY, f"results_root={tmp_path / 'results'}", "experiment_id=test"]
