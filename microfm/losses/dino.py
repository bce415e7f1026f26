"""DINO self-distillation loss (Caron et al. 2021): cross-entropy between the centred, sharpened
teacher distribution of each global view and the student distribution of every other view."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from microfm.losses.centering import CenteredTeacherLoss


class DINOLoss(CenteredTeacherLoss):
    """DINO loss over multi-crop views.

    For teacher views ``t`` (the global crops) and student views ``s`` (global crops first,
    then local crops), the loss is the mean over all pairs with ``t != s`` and over the batch of
    ``-sum_k P_t[k] log softmax(z_s / student_temp)[k]``, where ``P_t`` comes from the teacher
    logits through :class:`TeacherCentering` (running-mean centering or Sinkhorn–Knopp).

    The constructor arguments are those of :class:`CenteredTeacherLoss`.

    Example:
        >>> loss = DINOLoss(16)
        >>> teacher = [torch.randn(4, 16) for _ in range(2)]
        >>> student = [torch.randn(4, 16, requires_grad=True) for _ in range(5)]
        >>> loss(student, teacher, teacher_temp=0.04).ndim
        0
    """

    def teacher_probs(
        self, teacher_out: Sequence[torch.Tensor], teacher_temp: float, record: bool = True
    ) -> torch.Tensor:
        """(V_t, B, K) teacher targets from V_t teacher views (B, K) each."""
        t = torch.stack(list(teacher_out))
        V, B, K = t.shape
        return self.centering.probs(t.reshape(V * B, K), teacher_temp, record).reshape(V, B, K)

    def forward(
        self,
        student_out: Sequence[torch.Tensor],
        teacher_out: Sequence[torch.Tensor],
        teacher_temp: float,
        record: bool = True,
    ) -> torch.Tensor:
        """Loss of student logits (list of V_s (B, K)) against teacher logits (list of V_t
        (B, K), the first V_t student views being the same crops).

        Args:
            record: count the teacher logits toward the next center update (training).
        """
        targets = self.teacher_probs(teacher_out, teacher_temp, record)
        return self.from_probs(student_out, targets)

    def from_probs(
        self, student_out: Sequence[torch.Tensor], targets: torch.Tensor
    ) -> torch.Tensor:
        """Loss of student logits against precomputed teacher targets (V_t, B, K)."""
        log_p = F.log_softmax(torch.stack(list(student_out)).float() / self.student_temp, dim=-1)
        ce = -torch.einsum("tbk,sbk->ts", targets.to(log_p.dtype), log_p)
        n_t, n_s = ce.shape
        off = ~torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)
        n_terms = int(off.sum())
        if n_terms == 0:
            raise ValueError("the DINO loss needs at least two views")
        return ce[off].sum() / (n_terms * targets.shape[1])
