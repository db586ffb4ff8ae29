"""alpha-beta-divergence knowledge distillation (ABKD, Wang et al., ICML 2025)."""

from __future__ import annotations

from torch import Tensor

from bdkd.divergences import ab_divergence
from bdkd.losses.registry import register_objective


@register_objective("abkd")
def abkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float = 4.0,
) -> Tensor:
    """``mean_n D_AB(p^T || q^T)`` with no ``T^2`` factor.

    alpha and beta are chosen per teacher/student pair by grid search in the paper, so they
    have no default here; (0.8, 0.3) is its resnet56 -> resnet20 example. The official code multiplies the loss by 32-64
    instead of ``T^2``; put such a factor in the distillation weight.
    """
    return ab_divergence(
        student_logits, teacher_logits, alpha=alpha, beta=beta, temperature=temperature
    )
