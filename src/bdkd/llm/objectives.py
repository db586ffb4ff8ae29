"""Token-level distillation objectives on (B, T, V) logits with padding / prompt masks.

The token objectives are the entries of the one objective registry that serve tokens
(:data:`bdkd.losses.TOKEN_OBJECTIVES`): the divergences of :mod:`bdkd.divergences` (no
``T^2``), ABKD's ``ab_divergence`` (no ``T^2``) and BD-KD's entropy-balanced forward/reverse
KL per token (``bdkd``, times ``T^2``, the same per-row function as
:func:`bdkd.losses.bdkd_student_loss`). Every objective is averaged over the valid tokens
(``mask`` True), never over padding; whether ``T^2`` applies is the entry's declaration.

``js_divergence`` follows TRL's generalized-JSD convention at its endpoints: ``beta=0`` is
forward KL and ``beta=1`` reverse KL (the normalised limits), so a GKD config ported with
those values trains on what it meant, not on the definition's value there, which is 0.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from bdkd.divergences import RowFn, apply_rows
from bdkd.losses import TOKEN_OBJECTIVES, bdkd_rows, token_objective

__all__ = ["TOKEN_OBJECTIVES", "bdkd_rows", "effective_objective", "token_loss", "token_rows"]


def effective_objective(objective: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What ``objective`` computes: ``js_divergence`` at ``beta`` 0 or 1 is forward or
    reverse KL (TRL's convention); everything else is itself."""
    if objective == "js_divergence" and "beta" in params:
        beta = params["beta"]
        if isinstance(beta, (int, float)) and beta in (0, 1):
            return ("forward_kl" if beta == 0 else "reverse_kl"), {}
    return objective, dict(params)


def token_rows(objective: str, **params: Any) -> tuple[RowFn, bool]:
    """The per-token function of token objective ``objective`` and whether it is scaled by
    ``T^2`` (the registry's declaration). The temperature is not a parameter here: it is
    applied to the logits (``objective.temperature``)."""
    token_objective(objective)
    if "temperature" in params:
        raise ValueError(
            "the temperature is not one of the objective's params; set objective.temperature"
        )
    name, params = effective_objective(objective, params)
    entry = token_objective(name)
    return entry.row_function(f"token objective {objective!r}", **params), entry.scale_t2


def token_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    objective: str = "forward_kl",
    mask: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    **params: Any,
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
