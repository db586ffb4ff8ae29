"""Channel-wise distillation for dense prediction (CWD, Shu et al., ICCV 2021)."""

from __future__ import annotations

from torch import Tensor

from bdkd.divergences import forward_kl
from bdkd.hparams import Positive
from bdkd.losses.registry import register_objective


@register_objective("cwd", spatial=True, scale_t2=True)
def cwd_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Positive = 4.0
) -> Tensor:
    """``T^2 / C sum_c KL(phi(y_c^T) || phi(y_c^S))``, averaged over the batch.

    ``phi(y_c) = softmax(y_c / T)`` over the H x W positions of channel c: each channel is a
    distribution over space, and the student matches where the teacher puts each class's
    mass. Logits (N, C, H, W) of the same size (the models' outputs are at the input's
    resolution). Every pixel counts, including ignored ones: the maps are compared whole.
    The paper uses T = 4 and loss weight 3 for Cityscapes PSPNet-R18.
    """
    if student_logits.dim() != 4 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "CWD needs student and teacher logits of the same shape (N, C, H, W), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    n, c = student_logits.shape[:2]
    # one row per (sample, channel); the mean over N * C rows is 1/C sum_c, averaged over N
    s = student_logits.reshape(n * c, -1)
    t = teacher_logits.reshape(n * c, -1)
    return temperature**2 * forward_kl(s, t, temperature=temperature)
