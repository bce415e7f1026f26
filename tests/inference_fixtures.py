"""A tiny trained cellseg checkpoint shared by the inference, eval and export tests (trained
once per session: import the fixture into a test module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY


def train_tiny(
    results: Path, extra: list[str] = (), experiment_id: str = "tiny", synthetic: bool = True
) -> Path:
    """Train the tiny model for a few steps (on synthetic data unless ``extra`` chooses other
    data with ``synthetic=False``); returns the run folder."""
    from microfm.run.config import compose
    from microfm.run.train import train

    base = (
        [*TINY, "data.image_size=48"]
        if synthetic
        else [
            "backbone=vit_test",
            "data.batch_size=4",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
        ]
    )
    overrides = [
        *base,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.log_every_n_steps=1",
        f"results_root={results}",
        f"experiment_id={experiment_id}",
        *extra,
    ]
    train(compose(overrides))
    return results / "seg" / experiment_id


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """Run folder of a tiny cellseg model (vit_test, LoRA adapters on random weights, so
    loading has adapters to merge) trained for two steps on synthetic data."""
    root = tmp_path_factory.mktemp("inference_run")
    return train_tiny(root / "results", ["finetune=lora", "finetune.allow_random=true"])
