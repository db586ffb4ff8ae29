"""Decoupled knowledge distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.divergences import forward_kl
from bdkd.hparams import NonNegative, Positive
from bdkd.losses._targets import at_target, check_target, non_target
from bdkd.losses.registry import register_objective


def _binary_log_probs(logits: Tensor, target: Tensor, temperature: float) -> Tensor:
    """(N, 2) log-probabilities of [target, rest] at ``temperature``, exactly in log space."""
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    log_target = at_target(log_probs, target)
    log_rest = torch.logsumexp(non_target(log_probs, target), dim=-1)
    return torch.stack([log_target, log_rest], dim=-1)


@register_objective("dkd", warmup_epochs=20, scale_t2=True)
def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    alpha: NonNegative = 1.0,
    beta: NonNegative = 8.0,
    temperature: Positive = 4.0,
) -> Tensor:
    """``alpha T^2 KL(b || b_hat) + beta T^2 KL(p~ || q~)``, mean over rows.

    ``b = [p_y, 1 - p_y]`` (target vs rest) and ``p~`` the softmax over the non-target logits
    only, all at temperature T; the target class is removed exactly, not masked with -1000.
    CIFAR-100: alpha 1, beta 8 (6 for WRN-40-2 -> WRN-16-2), T 4; the distiller applies the
    paper's 20-epoch linear warm-up.
    """
    check_target(student_logits, target)
    tckd = forward_kl(
        _binary_log_probs(student_logits, target, temperature),
        _binary_log_probs(teacher_logits, target, temperature),
    )
    nckd = forward_kl(
        non_target(student_logits, target),
        non_target(teacher_logits, target),
        temperature=temperature,
    )
    return temperature**2 * (alpha * tckd + beta * nckd)
