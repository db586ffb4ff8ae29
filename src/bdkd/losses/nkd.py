"""Normalized knowledge distillation (NKD, Yang et al., ICCV 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.hparams import NonNegative, Positive
from bdkd.losses._targets import at_target, check_target, non_target
from bdkd.losses.registry import register_objective


@register_objective("nkd", scale_t2=True)
def nkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    *,
    temperature: Positive = 1.0,
    gamma: NonNegative = 1.5,
) -> Tensor:
    """``mean[-T_y log S_y] - gamma T^2 mean sum_{i != y} T~_i log S~_i``.

    ``T_y``, ``S_y``: teacher and student target probabilities at temperature 1 (``T_y``
    detached); ``T~``, ``S~``: softmax over the non-target logits only, at temperature T.
    ImageNet CNNs: T 1, gamma 1.5; CIFAR-100: T 3, gamma 3.5.
    """
    check_target(student_logits, target)
    s = student_logits.float()
    t = teacher_logits.float().detach()
    teacher_target_prob = at_target(torch.softmax(t, dim=-1), target)
    student_target_logp = at_target(torch.log_softmax(s, dim=-1), target)
    loss_target = -(teacher_target_prob * student_target_logp).mean()

    teacher_non = torch.softmax(non_target(t, target) / temperature, dim=-1)
    student_non = torch.log_softmax(non_target(s, target) / temperature, dim=-1)
    loss_non = (teacher_non * student_non).sum(-1).mean()
    return loss_target - gamma * temperature**2 * loss_non
