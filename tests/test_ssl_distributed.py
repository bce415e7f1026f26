"""The all-reduce paths of the self-supervised losses in a real 2-process gloo group: teacher
centering, Sinkhorn-Knopp (also with different row counts per process), KoLeo over gathered
features (gradients included) and the DINO / iBOT losses. Each process saves what it computed;
the test compares that with the single-process computation on the global batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from microfm.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, TeacherCentering
from microfm.losses.centering import sinkhorn_knopp

WORLD = 2
K, B, D = 12, 4, 6  # prototypes, samples per process, feature size
ROWS = (3, 5)  # masked patches per process (iBOT): different on each process


def _data() -> dict[str, object]:
    g = torch.Generator().manual_seed(0)
    masks = [torch.zeros(2, 6, dtype=torch.bool) for _ in range(WORLD)]
    masks[0][0, :3] = True
    masks[1][0, :2] = True
    masks[1][1, 3:] = True
    return {
        "logits": torch.randn(WORLD * B, K, generator=g) * 2,
        "rows": torch.randn(sum(ROWS), K, generator=g),
        "feats": torch.randn(WORLD * B, D, generator=g),
        "teacher": [torch.randn(WORLD * B, K, generator=g) * 2 for _ in range(2)],
        "student": [torch.randn(WORLD * B, K, generator=g) for _ in range(4)],
        "masks": masks,
        "patch_teacher": torch.randn(sum(ROWS), K, generator=g),
        "patch_student": torch.randn(sum(ROWS), K, generator=g),
    }


def _mine(rank: int) -> slice:
    return slice(rank * B, (rank + 1) * B)


def _my_rows(rank: int) -> slice:
    return slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))


def _run(rank: int, d: dict, gathered: bool) -> dict[str, torch.Tensor]:
    """What process ``rank`` computes. In the group (``gathered``) collectives see the other
    process; the single-process reference gets the global batch where the method needs it."""
    out: dict[str, torch.Tensor] = {}
    c = TeacherCentering(K, momentum=0.8)
    c.probs(d["logits"][_mine(rank)] if gathered else d["logits"], 0.1)
    c.update()
    out["center"] = c.center

    rows = d["rows"]
    out["sinkhorn"] = (
        sinkhorn_knopp(rows[_my_rows(rank)], 0.07)
        if gathered
        else (sinkhorn_knopp(rows, 0.07)[_my_rows(rank)])
    )

    x = (d["feats"][_mine(rank)] if gathered else d["feats"]).clone().requires_grad_()
    if gathered:
        loss = KoLeoLoss(gather=True)(x)
        loss.backward()
        out["koleo_grad"] = x.grad
    else:  # rank's loss: its own rows against the global batch; the gradient of the sum
        xn = F.normalize(x, dim=-1)
        sim = (xn @ xn.t()).detach().fill_diagonal_(-2)
        per_row = -(F.pairwise_distance(xn, xn[sim.argmax(1)], eps=1e-8) + 1e-8).log()
        loss = per_row[_mine(rank)].mean()
        (per_row.reshape(WORLD, B).mean(1).sum()).backward()
        out["koleo_grad"] = x.grad[_mine(rank)]
    out["koleo"] = loss.detach()

    for centering in ("mean", "sinkhorn"):
        loss_fn = DINOLoss(K, centering=centering)
        for step in range(2):  # the second step uses the center the first one set
            student = [s[_mine(rank)].clone().requires_grad_() for s in d["student"]]
            teacher = [t[_mine(rank)] if gathered else t for t in d["teacher"]]
            targets = loss_fn.teacher_probs(teacher, 0.05)
            loss = loss_fn.from_probs(student, targets if gathered else targets[:, _mine(rank)])
            loss.backward()
            loss_fn.update_center()
            out[f"dino_{centering}_{step}"] = loss.detach()
            out[f"dino_{centering}_grad_{step}"] = torch.stack([s.grad for s in student])
        out[f"dino_{centering}_center"] = loss_fn.centering.center

    ibot = IBOTPatchLoss(K, centering="sinkhorn")
    rows = _my_rows(rank)
    if gathered:
        t_rows = d["patch_teacher"][rows]
        out["ibot"] = ibot(d["patch_student"][rows], t_rows, d["masks"][rank], teacher_temp=0.06)
    else:
        targets = sinkhorn_knopp(d["patch_teacher"], 0.06)[rows]
        ce = -(targets * torch.log_softmax(d["patch_student"][rows] / 0.1, -1)).sum(-1)
        mask = d["masks"][rank]
        weight = (1.0 / mask.sum(1, keepdim=True).clamp(min=1)).expand_as(mask)[mask]
        out["ibot"] = (ce * weight).sum() / mask.shape[0]
    return out


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=WORLD
    )
    try:
        torch.save(_run(rank, _data(), gathered=True), f"{folder}/rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_losses_in_a_two_process_gloo_group(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        expected = _run(rank, _data(), gathered=False)
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(
                got[key],
                value,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, k=key, r=rank: f"rank {r} {k}: {m}",
            )
