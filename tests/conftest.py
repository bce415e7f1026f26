"""Shared fixtures. Tests that read ../shared skip with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MICROFM_SHARED", REPO.parent / "shared"))

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
