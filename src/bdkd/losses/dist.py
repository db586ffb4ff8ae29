"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.hparams import NonNegative, Positive
from bdkd.losses.registry import register_objective


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + eps)


@register_objective("dist", scale_t2=True)
def dist_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: NonNegative = 1.0,
    gamma: NonNegative = 1.0,
    temperature: Positive = 4.0,
) -> Tensor:
    """``beta T^2 (1 - mean_rows rho(p, q)) + gamma T^2 (1 - mean_cols rho(p, q))``.

    ``rho`` is the Pearson correlation: across classes for each sample (inter-class relation)
    and across the batch for each class (intra-class relation); p, q at temperature T.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "DIST needs student and teacher logits of the same shape (N, C), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    q = torch.softmax(student_logits.float() / temperature, dim=-1)
    p = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    inter = 1.0 - _pearson_rows(q, p).mean()
    intra = 1.0 - _pearson_rows(q.transpose(0, 1), p.transpose(0, 1)).mean()
    return temperature**2 * (beta * inter + gamma * intra)
