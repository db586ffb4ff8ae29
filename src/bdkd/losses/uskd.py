"""USKD: teacher-free self-distillation (Yang et al., ICCV 2023).

From "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels". With ``S = softmax(z)`` and target prob ``s_y``:

- ``L_t = -mean p_y log S_y`` with the soft target ``p_y = s_y^2 + 1 - mean_batch(s_y^2)``
  (detached);
- ``L_weak``: cross-entropy of an auxiliary linear head on an intermediate feature against
  ``0.9 onehot + 0.1 / C``;
- ``L_non``: cross-entropy of the student's non-target softmax to a Zipf distribution
  (weight 1/rank) over the non-target classes ranked by the auxiliary head's scores.

``L = alpha L_t + beta L_non + mu L_weak`` (the trainer adds the ordinary CE).
ImageNet: alpha 1, beta 0.1, mu 0.005; CIFAR-100: alpha 0.1, beta 0.1, mu 0.1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.losses._targets import at_target, check_target, non_target


def zipf_non_target(aux_logits: Tensor, target: Tensor) -> Tensor:
    """(N, C - 1) Zipf soft labels for the non-target classes, ranked by ``aux_logits``."""
    scores = non_target(aux_logits.detach().float(), target)
    order = scores.argsort(dim=-1, descending=True)
    ranks = torch.empty_like(order)
    positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
    ranks.scatter_(1, order, positions)
    zipf = 1.0 / ranks.to(scores.dtype)
    return zipf / zipf.sum(dim=-1, keepdim=True)


def uskd_terms(
    student_logits: Tensor,
    aux_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    mu: float = 0.005,
) -> dict[str, Tensor]:
    """USKD's three weighted terms: ``{"target", "non_target", "weak"}``."""
    check_target(student_logits, target)
    if aux_logits.shape != student_logits.shape:
        raise ValueError(
            f"aux_logits must have the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(aux_logits.shape)}"
        )
    s = student_logits.float()
    num_classes = s.shape[1]
    log_s = torch.log_softmax(s, dim=-1)
    with torch.no_grad():
        s_y2 = at_target(log_s, target).exp() ** 2
        soft_target = s_y2 + 1.0 - s_y2.mean()
    loss_target = -(soft_target * at_target(log_s, target)).mean()

    zipf = zipf_non_target(aux_logits, target)
    log_non = torch.log_softmax(non_target(s, target), dim=-1)
    loss_non = -(zipf * log_non).sum(-1).mean()

    smooth = torch.full_like(s, 0.1 / num_classes)
    smooth.scatter_add_(1, target.long().unsqueeze(1), torch.full_like(s[:, :1], 0.9))
    loss_weak = -(smooth * torch.log_softmax(aux_logits.float(), dim=-1)).sum(-1).mean()
    return {"target": alpha * loss_target, "non_target": beta * loss_non, "weak": mu * loss_weak}


def uskd_loss(
    student_logits: Tensor,
    aux_logits: Tensor,
    target: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.1,
    mu: float = 0.005,
) -> Tensor:
    """``alpha L_t + beta L_non + mu L_weak`` (see the module docstring)."""
    terms = uskd_terms(student_logits, aux_logits, target, alpha=alpha, beta=beta, mu=mu)
    return terms["target"] + terms["non_target"] + terms["weak"]
