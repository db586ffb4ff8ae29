"""USKD: teacher-free self-distillation (Yang et al., ICCV 2023).

From "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
Normalized Loss and Customized Soft Labels". With ``S = softmax(z)`` and target prob ``s_y``:

- ``L_t = -mean p_y log S_y`` with the soft target ``p_y = s_y^2 + 1 - mean_batch(s_y^2)``
  (detached);
- ``L_weak``: cross-entropy of an auxiliary linear head on an intermediate feature against
  ``0.9 onehot + 0.1 / C``;
- ``L_non``: cross-entropy of the student's non-target softmax to a Zipf distribution
  (weight 1/rank) over the non-target classes. ``ranking="reference"`` (the default) ranks
  them as the reference code does: every class by ``w_i / (1 - w_t) + log S_i / (1 - log
  S_t)`` (``w`` the auxiliary head's softmax, ``S`` the student's, ``t`` the target), target
  then removed; ``ranking="aux"`` follows the paper's wording, the auxiliary head's scores
  alone.

``L = alpha L_t + beta L_non + mu L_weak`` (the trainer adds the ordinary CE).
ImageNet: alpha 1, beta 0.1, mu 0.005; CIFAR-100: alpha 0.1, beta 0.1, mu 0.1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.losses._targets import at_target, check_target, non_target

RANKINGS = ("reference", "aux")


def zipf_non_target(
    aux_logits: Tensor,
    target: Tensor,
    student_logits: Tensor | None = None,
    *,
    ranking: str = "reference",
) -> Tensor:
    """(N, C - 1) Zipf soft labels (``1/rank``, normalised) for the non-target classes.

    ``ranking="aux"``: ranked by ``aux_logits`` alone. ``ranking="reference"``: ranked by
    ``w_i / (1 - w_t) + log S_i / (1 - log S_t)`` with ``w = softmax(aux_logits)`` and
    ``S = softmax(student_logits)``, as in the reference code. Detached.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    aux = aux_logits.detach().float()
    if ranking == "aux":
        all_scores = aux
    else:
        if student_logits is None:
            raise ValueError("ranking='reference' needs the student's logits")
        w = torch.softmax(aux, dim=-1)
        log_s = torch.log_softmax(student_logits.detach().float(), dim=-1)
        w_t, log_s_t = at_target(w, target).unsqueeze(1), at_target(log_s, target).unsqueeze(1)
        all_scores = w / (1.0 - w_t).clamp_min(1e-12) + log_s / (1.0 - log_s_t)
    scores = non_target(all_scores, target)
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
    ranking: str = "reference",
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

    zipf = zipf_non_target(aux_logits, target, student_logits, ranking=ranking)
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
    ranking: str = "reference",
) -> Tensor:
    """``alpha L_t + beta L_non + mu L_weak`` (see the module docstring)."""
    terms = uskd_terms(
        student_logits, aux_logits, target, alpha=alpha, beta=beta, mu=mu, ranking=ranking
    )
    return terms["target"] + terms["non_target"] + terms["weak"]
