"""iBOT masked-patch loss (Zhou et al. 2022, as in DINOv2): the student sees a global view with
some patch embeddings replaced by a mask token and predicts, at those patches, the teacher's
distribution computed from the unmasked view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from microfm.losses.centering import CenteredTeacherLoss


class IBOTPatchLoss(CenteredTeacherLoss):
    """Cross-entropy between teacher targets and student predictions at masked patches.

    Each image weighs the same whatever its number of masked patches: the per-patch terms of
    an image are averaged, then summed over images and divided by the batch size (images
    without masked patches count in the batch size, as in DINOv2).

    The constructor arguments are those of :class:`CenteredTeacherLoss` (``out_dim``: the
    number of patch prototypes); the centering state is separate from the DINO loss's.

    Example:
        >>> loss = IBOTPatchLoss(8)
        >>> mask = torch.zeros(2, 4, dtype=torch.bool)
        >>> mask[0, :2] = True
        >>> t, s = torch.randn(2, 8), torch.randn(2, 8)
        >>> loss(s, t, mask, teacher_temp=0.04).ndim
        0
    """

    def forward(
        self,
        student_out: torch.Tensor,
        teacher_out: torch.Tensor,
        mask: torch.Tensor,
        teacher_temp: float,
        record: bool = True,
    ) -> torch.Tensor:
        """Loss of the masked patches.

        Args:
            student_out: (M, K) student logits at the masked patches, in the row-major order
                of ``mask``.
            teacher_out: (M, K) teacher logits at the same patches.
            mask: (B, N) or (B, h, w) boolean, True where masked; M = ``mask.sum()``.
            teacher_temp: teacher temperature.
            record: count the teacher logits toward the next center update (training).
        """
        mask = mask.reshape(mask.shape[0], -1).to(torch.bool)
        targets = self.centering.probs(teacher_out, teacher_temp, record)
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1)
        ce = -(targets * log_p).sum(dim=-1)
        per_image = mask.sum(dim=1, keepdim=True).clamp(min=1).to(ce.dtype)
        weight = (1.0 / per_image).expand_as(mask)[mask]
        return (ce * weight).sum() / mask.shape[0]
