"""Token-level distillation objectives on (B, T, V) logits with padding / prompt masks.

Every objective is averaged over the valid tokens (``mask`` True), never over padding:
the divergences of :mod:`bdkd.divergences` (no T^2), ABKD (``ab_divergence``, no T^2), and
BD-KD's entropy-balanced forward/reverse KL per token (times T^2, as
:func:`bdkd.losses.bdkd_student_loss`).

``js_divergence`` follows TRL's generalized-JSD convention at its endpoints: ``beta=0`` is
forward KL and ``beta=1`` reverse KL (the normalised limits), so a GKD config ported with
those values trains on what it meant, not on the definition's value there, which is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.divergences import RowFn, apply_rows, kl_rows, pairwise_rows
from bdkd.losses.bdkd import entropy_gap_weights

TOKEN_OBJECTIVES = (
    "forward_kl",
    "reverse_kl",
    "js_divergence",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
    "ab_divergence",
    "bdkd",
)


def bdkd_rows(
    *, rule: str = "hard", high: float = 3.0, low: float = 1.0, sharpness: float = 1.0
) -> RowFn:
    """Per-token ``w_f KL(p||q) + w_r KL(q||p)`` with BD-KD's detached entropy-gap weights."""

    def rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        with torch.no_grad():
            h_s = -(log_q.exp() * torch.where(log_q.isfinite(), log_q, 0.0)).sum(-1)
            h_t = -(log_p.exp() * torch.where(log_p.isfinite(), log_p, 0.0)).sum(-1)
        w_f, w_r = entropy_gap_weights(h_s, h_t, rule=rule, high=high, low=low, sharpness=sharpness)
        return w_f * kl_rows(log_p, log_q) + w_r * kl_rows(log_q, log_p)

    return rows


def token_rows(objective: str, **params: float) -> tuple[RowFn, bool]:
    """The per-token function of ``objective`` and whether it is scaled by T^2."""
    if objective == "bdkd":
        return bdkd_rows(**params), True  # type: ignore[arg-type]
    if objective not in TOKEN_OBJECTIVES:
        raise ValueError(f"unknown token objective {objective!r}; known: {list(TOKEN_OBJECTIVES)}")
    objective, params = effective_objective(objective, params)
    return pairwise_rows(objective, **params), False


def effective_objective(objective: str, params: dict[str, float]) -> tuple[str, dict[str, float]]:
    """What ``objective`` computes: ``js_divergence`` at ``beta`` 0 or 1 is forward or
    reverse KL (TRL's convention); everything else is itself."""
    if objective == "js_divergence" and "beta" in params:
        beta = params["beta"]
        if isinstance(beta, (int, float)) and beta in (0, 1):
            return ("forward_kl" if beta == 0 else "reverse_kl"), {}
    return objective, dict(params)


def token_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    objective: str = "forward_kl",
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    **params: float,
) -> Tensor:
    """``objective`` between student and teacher next-token distributions, over valid tokens.

    ``mask`` (B, T) bool selects the tokens that count (response tokens: not padding, not
    prompt). ``reduction="sum"`` gives the sum over valid tokens, for gradient accumulation
    with one normaliser across micro-batches. The teacher's logits should be detached.
    """
    fn, squared = token_rows(objective, **params)
    value = apply_rows(
        fn,
        (student_logits, teacher_logits),
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        chunk_size=chunk_size,
    )
    return value * temperature**2 if squared else value
