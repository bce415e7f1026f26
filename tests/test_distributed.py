"""Distributed training on CPU: sharding, per-rank batches, a real 2-process DDP run through
cluster=local against the single-process run on the same global batch (gradients, metrics,
weights), learning-rate scaling, signal ownership."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from microfm.data.sampling import SeededSampler
from microfm.errors import ConfigError
from microfm.modules import OptimConfig
from microfm.run.build import build
from microfm.run.config import compose
from microfm.run.train import train
from tests.conftest import REPO, TINY

GLOBAL_BATCH = 4


def test_ranks_split_each_global_batch_like_one_process():
    data = list(range(13))
    single = SeededSampler(data, seed=3)
    single.set_epoch(2)
    order = single.global_order(world=1)
    for world in (2, 4):
        s = SeededSampler(data, seed=3)
        s.set_epoch(2)
        padded = s.global_order(world)
        assert padded[: len(order)] == order  # padding only appends (wrapping around)
        shards = [padded[r::world] for r in range(world)]
        per_rank = GLOBAL_BATCH // world
        for k in range(len(shards[0]) // per_rank):
            union = sorted(i for sh in shards for i in sh[k * per_rank : (k + 1) * per_rank])
            assert union == sorted(padded[k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH])


def test_sampler_state_resumes_mid_epoch_and_rolls_over():
    s = SeededSampler(list(range(10)), seed=1)
    s.set_epoch(4)
    full = list(s)
    s.samples_seen = 6
    resumed = SeededSampler(list(range(10)), seed=1)
    resumed.load_state_dict(s.state_dict())
    assert resumed.epoch == 4 and list(resumed) == full[6:] and len(resumed) == 10
    s.epoch_done = True  # saved after the last batch: the next epoch starts from its beginning
    resumed.load_state_dict(s.state_dict())
    nxt = SeededSampler(list(range(10)), seed=1)
    nxt.set_epoch(5)
    assert resumed.epoch == 5 and list(resumed) == list(nxt)
    resumed.set_epoch(6)  # a new epoch forgets the resume position
    assert resumed.start == 0


def datamodule(world: int, batch_size: int = GLOBAL_BATCH):
    cfg = compose([*TINY, f"data.batch_size={batch_size}"])
    dm = build(cfg.data, "data", augment=build(cfg.augment, "augment"))
    dm.setup("fit")
    dm.trainer = SimpleNamespace(world_size=world, accelerator=None)
    return dm


def test_each_process_loads_its_share_of_the_global_batch():
    assert datamodule(world=1).train_dataloader().batch_size == GLOBAL_BATCH
    assert datamodule(world=2).train_dataloader().batch_size == GLOBAL_BATCH // 2
    with pytest.raises(ConfigError, match="data.batch_size=4 .* 3 processes"):
        datamodule(world=3).train_dataloader()


def test_lr_scaling_rules():
    assert [OptimConfig(lr_scaling=r).scale(4) for r in ("none", "linear", "sqrt")] == [1, 4, 2]
    opt = OptimConfig(lr=1e-3, lr_backbone=1e-4, lr_scaling="linear")
    backbone, heads = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizer, _ = opt.build(backbone, heads, pretrained=True, total_steps=10, world_size=8)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(8e-4) and lrs["head"] == pytest.approx(8e-3)
    with pytest.raises(ConfigError, match="optim.lr_scaling"):
        OptimConfig(lr_scaling="quadratic")
    assert compose([]).optim.lr_scaling == "none"


def test_launcher_keeps_its_signal_handler(tmp_path):
    """In a submitit job Lightning must not own SIGTERM: LauncherOwnsSignals puts back the
    handler that was installed before fit (submitit's)."""
    from microfm.distributed.preemption import LauncherOwnsSignals

    def launcher_handler(signum, frame):  # stands for submitit's
        pass

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(signal.getsignal(signal.SIGTERM))

    previous = signal.signal(signal.SIGTERM, launcher_handler)
    try:
        for callbacks, expect_launcher in (
            ([Probe()], False),
            ([LauncherOwnsSignals(), Probe()], True),
        ):
            seen.clear()
            model = BoringModel()
            trainer = L.Trainer(
                max_steps=1,
                callbacks=callbacks,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                default_root_dir=tmp_path,
            )
            trainer.fit(model)
            assert (seen[0] is launcher_handler) == expect_launcher
    finally:
        signal.signal(signal.SIGTERM, previous)


def grads_callback(path) -> list[str]:
    return [
        "+callbacks.grads._target_=tests.callbacks.SaveGradients",
        f"+callbacks.grads.path={path}",
    ]


def ddp_and_single_runs(tmp_path, common: list[str]) -> tuple[dict, dict, dict]:
    """Train ``common`` as a 2-process DDP job through ``cluster=local`` (experiment ``ddp``)
    and in this process (experiment ``single``); returns the single run's metrics and the
    gradients both runs saved at their first step (DDP, single)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "microfm.cli.train", *common, "cluster=local"]
    cmd += ["trainer.devices=2", "experiment_id=ddp", *grads_callback(tmp_path / "ddp.pt")]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single = train(compose([*common, "experiment_id=single", *grads_callback(tmp_path / "1.pt")]))
    return single, torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "1.pt")


@pytest.mark.slow
def test_two_process_run_through_cluster_local_matches_one_process(tmp_path):
    """A real 2-process DDP (gloo) job started by submitit's local executor gives the
    gradients, metrics and final weights of the single-process run on the same global batch
    (so microfm's sampler, per-rank batch size and loss average correctly over the ranks),
    and on val/test splits of 5 images (3 + 2 per rank, each counted once) the same metrics."""
    common = [
        *TINY,
        "data.n_train=16",
        "data.n_val=5",  # uneven over 2 ranks: padding duplicates would shift val/test
        "data.n_test=5",
        f"data.batch_size={GLOBAL_BATCH}",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        f"results_root={tmp_path}",
    ]
    single, ddp_grads, single_grads = ddp_and_single_runs(tmp_path, common)
    assert set(ddp_grads) == set(single_grads) and len(single_grads) > 50
    for name, grad in single_grads.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-4, atol=1e-7)

    run = tmp_path / "seg" / "ddp_j0"  # job 0 of the (one-point) sweep
    assert (run / "train.log").is_file() and (run / "train.rank1.log").is_file()
    assert (
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2"
        in (run / "train.rank1.log").read_text()
    )
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["global_step"] == single["global_step"] == 8
    for key in [k for k in single if k.startswith(("val/", "test/", "best/val"))]:
        assert ddp[key] == pytest.approx(single[key], rel=1e-4, abs=1e-5), key
    a = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(tmp_path / "seg" / "single" / "ckpts" / "last.ckpt", weights_only=False)
    for name, value in b["state_dict"].items():
        torch.testing.assert_close(a["state_dict"][name], value, rtol=1e-3, atol=1e-4)
    summary = json.loads(next((tmp_path / "seg").glob("sweep_*.json")).read_text())
    assert summary["jobs_completed"] == 1 and summary["jobs"][0]["run_dir"] == str(run)
    assert not list((tmp_path / "seg").glob("ddp_j0*/**/*.tmp"))
    # each rank logs to its own file; rank-zero-only messages appear in rank 0's alone
    assert "`Trainer.fit` stopped" in (run / "train.log").read_text()
    assert "`Trainer.fit` stopped" not in (run / "train.rank1.log").read_text()
