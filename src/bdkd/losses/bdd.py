"""Balance Divergence Distillation (Qi et al. 2025)."""

from __future__ import annotations

from torch import Tensor

from bdkd.divergences import forward_kl, reverse_kl
from bdkd.hparams import NonNegative, Positive
from bdkd.losses.registry import register_objective


@register_objective("bdd", scale_t2=True)
def bdd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    forward_temperature: Positive = 4.0,
    reverse_temperature: Positive = 4.0,
    forward_weight: NonNegative = 1.0,
    reverse_weight: NonNegative = 1.0,
) -> Tensor:
    """``w_f T_f^2 KL(p^Tf || q^Tf) + w_r T_r^2 KL(q^Tr || p^Tr)``, mean over rows.

    Forward KL plus a compensating reverse KL, each at its own temperature. The paper's
    temperatures and weights could not be read: the defaults (4, 4, 1, 1) are a
    reconstruction (docs/methods.md).
    """
    fkl = forward_kl(student_logits, teacher_logits, temperature=forward_temperature)
    rkl = reverse_kl(student_logits, teacher_logits, temperature=reverse_temperature)
    return (
        forward_weight * forward_temperature**2 * fkl
        + reverse_weight * reverse_temperature**2 * rkl
    )
