"""Self-supervised losses against reference computations on the same inputs: lightly's
DINOLoss / IBOTPatchLoss / KoLeoLoss, DINOv2's Sinkhorn-Knopp and MAE's loss written out from
the papers' code; centering once per optimiser step; the DINO head's prototype layer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from microfm.heads import DINOHead
from microfm.losses import DINOLoss, IBOTPatchLoss, KoLeoLoss, MAELoss, TeacherCentering
from microfm.losses.centering import sinkhorn_knopp

lightly_loss = pytest.importorskip("lightly.loss", reason="lightly (dev dependency) is needed")


def dinov2_sinkhorn(teacher_output, teacher_temp, n_iterations=3):
    """DINOv2's ``DINOLoss.sinkhorn_knopp_teacher`` (single process; the input dtype is kept)."""
    Q = torch.exp(teacher_output / teacher_temp).t()
    B = Q.shape[1]
    K = Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def mae_reference(imgs_patches, pred, mask):
    """``MaskedAutoencoderViT.forward_loss`` of facebookresearch/mae (norm_pix_loss=True)."""
    target = imgs_patches
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.0e-6) ** 0.5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def test_dino_loss_equals_lightly_over_steps():
    torch.manual_seed(0)
    K, B = 32, 6
    ours = DINOLoss(K, student_temp=0.1, center_momentum=0.9)
    ref = lightly_loss.DINOLoss(output_dim=K, student_temp=0.1, center_momentum=0.9)
    for step in range(3):
        teacher = [torch.randn(B, K) * 3 for _ in range(2)]
        student = [torch.randn(B, K, requires_grad=True) for _ in range(6)]
        temp = 0.04 + 0.01 * step
        a = ours(student, teacher, teacher_temp=temp)
        ours.update_center()  # once per optimiser step
        (ga,) = torch.autograd.grad(a, student[3])
        b = ref(teacher, student, teacher_temp=temp)
        (gb,) = torch.autograd.grad(b, student[3])
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ga, gb)
        torch.testing.assert_close(ours.centering.center, ref.center.reshape(1, K))
    assert ours.centering.center.abs().sum() > 0


def test_ibot_loss_equals_lightly():
    torch.manual_seed(1)
    K, B, N = 16, 4, 9
    mask = torch.rand(B, N) < 0.4
    mask[0] = False  # an image without masked patches still counts in the batch size
    mask[1, 0] = True
    M = int(mask.sum())
    teacher, student = torch.randn(M, K) * 2, torch.randn(M, K, requires_grad=True)
    ours = IBOTPatchLoss(K, student_temp=0.1, center_momentum=0.9)
    ref = lightly_loss.IBOTPatchLoss(output_dim=K, student_temp=0.1, center_momentum=0.9)
    a = ours(student, teacher, mask.reshape(B, 3, 3), teacher_temp=0.05)
    ours.update_center()
    b = ref(teacher, student, mask.reshape(B, 3, 3), teacher_temp=0.05)
    torch.testing.assert_close(a, b)
    g_a = torch.autograd.grad(a, student)[0]
    g_b = torch.autograd.grad(b, student)[0]
    torch.testing.assert_close(g_a, g_b)
    torch.testing.assert_close(ours.centering.center, ref.center.value)


def test_koleo_equals_lightly_with_gradients():
    torch.manual_seed(2)
    x = torch.randn(12, 8, requires_grad=True)
    a = KoLeoLoss()(x)
    b = lightly_loss.KoLeoLoss()(x)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])
    # the gather option is the same computation in a single process
    torch.testing.assert_close(KoLeoLoss(gather=True)(x), a)


def test_sinkhorn_equals_dinov2_and_balances_prototypes():
    torch.manual_seed(3)
    logits = torch.randn(24, 8) * 0.5
    q = sinkhorn_knopp(logits, 0.1, iterations=3)
    torch.testing.assert_close(q, dinov2_sinkhorn(logits, 0.1, 3))
    torch.testing.assert_close(q.sum(dim=1), torch.ones(24))
    many = sinkhorn_knopp(logits, 0.1, iterations=50)
    torch.testing.assert_close(many.sum(dim=0), torch.full((8,), 24 / 8), rtol=1e-3, atol=1e-3)
    # cosine logits at a low temperature: exp overflows float32 in the plain formula, not here
    # (log domain)
    cosines = torch.tanh(torch.randn(24, 8) * 2)
    assert not torch.isfinite(dinov2_sinkhorn(cosines, 0.01)).all()
    exact = dinov2_sinkhorn(cosines.double(), 0.01).float()
    torch.testing.assert_close(sinkhorn_knopp(cosines, 0.01), exact)
    extreme = sinkhorn_knopp(torch.randn(24, 8) * 50, 0.01)  # exp underflows in float64 too
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(extreme.sum(dim=1), torch.ones(24))


def test_dino_loss_with_sinkhorn_targets():
    torch.manual_seed(4)
    K, B = 16, 5
    loss = DINOLoss(K, centering="sinkhorn")
    teacher = [torch.randn(B, K) for _ in range(2)]
    student = [torch.randn(B, K) for _ in range(3)]
    targets = dinov2_sinkhorn(torch.cat(teacher), 0.07).reshape(2, B, K)
    log_p = [F.log_softmax(s / 0.1, dim=-1) for s in student]
    pairs = [(t, s) for t in range(2) for s in range(3) if t != s]
    expected = sum(-(targets[t] * log_p[s]).sum(-1).mean() for t, s in pairs) / len(pairs)
    torch.testing.assert_close(loss(student, teacher, teacher_temp=0.07), expected)
    loss.update_center()  # no state in Sinkhorn mode
    assert loss.centering.center.abs().sum() == 0


def test_center_moves_once_per_step_with_the_mean_of_all_micro_batches():
    torch.manual_seed(5)
    a, b = torch.randn(4, 6), torch.randn(8, 6)
    acc = TeacherCentering(6, momentum=0.5)
    acc.probs(a, 0.1)
    acc.probs(b, 0.1)  # two micro-batches of one optimiser step
    assert acc.pending() == 12 and acc.center.abs().sum() == 0
    acc.update()
    one = TeacherCentering(6, momentum=0.5)
    one.probs(torch.cat([a, b]), 0.1)
    one.update()
    torch.testing.assert_close(acc.center, one.center)
    torch.testing.assert_close(acc.center, 0.5 * torch.cat([a, b]).mean(0, keepdim=True))
    acc.probs(a, 0.1, record=False)  # validation: nothing recorded
    assert acc.pending() == 0


def test_mae_loss_equals_the_reference():
    torch.manual_seed(6)
    patches, pred = torch.randn(3, 10, 48), torch.randn(3, 10, 48)
    mask = (torch.rand(3, 10) < 0.75).float()
    torch.testing.assert_close(
        MAELoss()(pred, patches, mask.bool()), mae_reference(patches, pred, mask)
    )
    plain = ((pred - patches) ** 2).mean(-1)
    torch.testing.assert_close(
        MAELoss(norm_pix=False)(pred, patches, mask.bool()), (plain * mask).sum() / mask.sum()
    )


def test_dino_head_prototypes_are_weight_normalised():
    torch.manual_seed(7)
    head = DINOHead(16, out_dim=10, hidden_dim=32, bottleneck_dim=8)
    param = head.last_layer.parametrizations.weight
    assert not param.original0.requires_grad and param.original1.requires_grad
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(5, 16)).pow(2).sum().backward()
    opt.step()
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(10))
    # logits are cosine similarities between the normalised bottleneck and the prototypes
    x = torch.randn(3, 16)
    z = F.normalize(head.mlp(x), dim=-1)
    torch.testing.assert_close(head(x), z @ w.t())
    assert head(x).abs().max() <= 1.0 + 1e-5
    free = DINOHead(16, out_dim=10, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
