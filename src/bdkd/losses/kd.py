"""Classic knowledge distillation (Hinton et al. 2015), and its reverse-KL mirror."""

from __future__ import annotations

from torch import Tensor

from bdkd.divergences import ROW_FUNCTIONS, forward_kl, reverse_kl
from bdkd.hparams import Positive
from bdkd.losses.registry import register_objective


@register_objective("kd", scale_t2=True, rows=ROW_FUNCTIONS["forward_kl"])
def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Positive = 4.0
) -> Tensor:
    """``T^2 mean_n KL(p^T || q^T)``. CIFAR-100 protocol: T = 4, CE weight 0.1, KD weight 0.9."""
    return temperature**2 * forward_kl(student_logits, teacher_logits, temperature=temperature)


@register_objective("reverse_kd", scale_t2=True, rows=ROW_FUNCTIONS["reverse_kl"], image=False)
def reverse_kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: Positive = 1.0
) -> Tensor:
    """``T^2 mean_n KL(q^T || p^T)``: KD with the mode-seeking reverse KL (BD-KD's teacher
    term in its ``teacher_divergence: forward_kl`` variant)."""
    return temperature**2 * reverse_kl(student_logits, teacher_logits, temperature=temperature)
