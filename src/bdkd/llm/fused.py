"""Fused linear + divergence: distil through the LM head without materialising (N, V) logits.

The student's logits ``h W^T (+ b)`` for a vocabulary of 32k-150k make the naive loss
dominate memory. Here tokens are processed in chunks: each chunk's logits are formed, its
per-token losses and their gradient with respect to the chunk's logits computed at once,
and that gradient is pushed straight into ``grad h = g W`` and ``grad W += g^T h``; only
one chunk's (chunk, V) logits ever exist. Values and gradients equal the unfused path
(``bdkd.llm.token_loss`` on ``h W^T``).

The teacher comes as logits (N, V), as hidden states and head (its logits then formed chunk
by chunk too, without gradients), or as a top-k cache (:func:`fused_linear_topk_divergence`).
The student's own next-token cross-entropy can be computed in the same pass
(``ce_labels``), so its logits are not materialised for it either.

Models that post-process their logits are followed exactly: ``scale`` multiplies them
(Cohere's ``logit_scale``) and ``softcap`` applies ``softcap * tanh(z / softcap)`` after it
(Gemma's ``final_logit_softcapping``), for the student and the teacher separately.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bdkd.divergences import row_values
from bdkd.llm.objectives import token_rows

ChunkTerms = Callable[[int, int, Tensor], dict[str, Tensor]]
"""``(start, stop, z)`` -> named, already scaled loss sums of the chunk's rows (with grad in
``z``, the chunk's post-processed student logits)."""


def postprocess(logits: Tensor, scale: float = 1.0, softcap: float | None = None) -> Tensor:
    """A model's own logit post-processing: times ``scale``, then ``softcap * tanh(z / softcap)``."""
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class _FusedHead(torch.autograd.Function):
    """Chunks of ``hidden @ weight.T + bias`` through ``chunk_terms``; returns the sum of
    every term; their separate (detached) sums go into ``stats`` when it is a dict."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        chunk_terms: ChunkTerms,
        chunk_size: int,
        post: tuple[float, float | None],
        stats: dict[str, Tensor] | None,
    ) -> Tensor:
        needs = (
            hidden.requires_grad,
            weight.requires_grad,
            bias is not None and bias.requires_grad,
        )
        grad_h = torch.zeros_like(hidden) if needs[0] else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if needs[1]
            else None
        )
        grad_b = (
            torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if needs[2] else None
        )
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        w32 = weight.detach().float()
        b32 = None if bias is None else bias.detach().float()
        for start in range(0, hidden.shape[0], chunk_size):
            stop = min(start + chunk_size, hidden.shape[0])
            h = hidden[start:stop].detach().float()
            logits = h @ w32.T
            if b32 is not None:
                logits = logits + b32
            logits.requires_grad_(any(needs))
            with torch.enable_grad():
                terms = chunk_terms(start, stop, postprocess(logits, *post))
                chunk_total = torch.stack(list(terms.values())).sum()
                if any(needs):
                    (g,) = torch.autograd.grad(chunk_total, logits)
            total += chunk_total.detach()
            if stats is not None:
                for k, v in terms.items():
                    stats[k] = stats.get(k, 0.0) + v.detach()
            if any(needs):
                if grad_h is not None:
                    grad_h[start:stop] = (g @ w32).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w += g.T @ h
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.grads = (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
        )
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple:  # type: ignore[override]
        gh, gw, gb = ctx.grads
        ctx.grads = None
        out = [None if g is None else g * grad_out.to(g.dtype) for g in (gh, gw, gb)]
        return (*out, None, None, None, None)


def _flatten(x: Tensor | None, dim: int) -> Tensor | None:
    return None if x is None else x.reshape(-1, dim)


def _scales(
    count: int, reduction: str, normalizer: float | None, temperature: float, squared: bool
) -> tuple[float, float]:
    """(scale of the divergence sum, scale of the cross-entropy sum)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if normalizer is not None:
        base = 1.0 / float(normalizer)
    elif reduction == "mean":
        base = 1.0 / max(count, 1)
    else:
        base = 1.0
    return base * (temperature**2 if squared else 1.0), base


def _ce_rows(z: Tensor, labels: Tensor) -> Tensor:
    return -torch.log_softmax(z.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)


def _check_student(hidden: Tensor, weight: Tensor, mask: Tensor | None, chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
    if mask is not None and mask.shape != hidden.shape[:-1]:
        raise ValueError(
            f"mask must have shape {tuple(hidden.shape[:-1])}, got {tuple(mask.shape)}"
        )


def _check_teacher(
    hidden: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    chunk_size: int,
    teacher_logits: Tensor | None,
    teacher_hidden: Tensor | None,
    teacher_weight: Tensor | None,
) -> None:
    """The student's inputs (:func:`_check_student`) and exactly one teacher of a fitting shape:
    logits (..., V), or hidden states (..., H_t) with their head (V, H_t)."""
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError(
            "give the teacher as teacher_logits or as teacher_hidden + teacher_weight, not both or neither"
        )
    if teacher_hidden is not None and teacher_weight is None:
        raise ValueError("teacher_hidden needs teacher_weight (the teacher's LM head)")
    _check_student(hidden, weight, mask, chunk_size)
    lead = hidden.shape[:-1]
    vocab = weight.shape[0]
    if teacher_logits is not None and teacher_logits.shape != (*lead, vocab):
        raise ValueError(
            f"teacher_logits must have shape {(*lead, vocab)}, got {tuple(teacher_logits.shape)}"
        )
    if teacher_hidden is not None and (
        teacher_hidden.shape[:-1] != lead or teacher_weight.shape[0] != vocab
    ):
        raise ValueError(
            "teacher_hidden must match hidden's leading shape and teacher_weight the vocabulary"
        )


def fused_linear_divergence(
    hidden: Tensor,
    weight: Tensor,
    teacher_logits: Tensor | None = None,
    *,
    teacher_hidden: Tensor | None = None,
    teacher_weight: Tensor | None = None,
    bias: Tensor | None = None,
    teacher_bias: Tensor | None = None,
    mask: Tensor | None = None,
    objective: str = "forward_kl",
    temperature: float = 1.0,
    reduction: str = "mean",
    normalizer: float | None = None,
    chunk_size: int = 1024,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    teacher_logit_scale: float = 1.0,
    teacher_logit_softcap: float | None = None,
    ce_labels: Tensor | None = None,
    ce_weight: float = 0.0,
    divergence_weight: float = 1.0,
    stats: dict[str, Tensor] | None = None,
    **params: float,
) -> Tensor:
    """Token-level ``objective`` of student logits ``hidden @ weight.T (+ bias)`` against the
    teacher, over the tokens where ``mask`` is True, computed chunk by chunk.

    ``hidden`` (..., H) and ``mask`` (...); the teacher as ``teacher_logits`` (..., V) or as
    ``teacher_hidden`` (..., H_t) with ``teacher_weight`` (V, H_t). ``reduction`` is ``mean``
    (over valid tokens) or ``sum``; ``normalizer`` divides the sum by a count of your choosing
    (the valid tokens of a whole accumulated batch, for micro-batches). Gradients flow into
    ``hidden``, ``weight`` and ``bias``; the teacher is treated as detached. One backward pass.
    ``logit_scale``/``logit_softcap`` (and the teacher's) repeat a model's own post-processing
    of its logits (see :func:`postprocess`). The objective is multiplied by
    ``divergence_weight``; with ``ce_labels`` (...) the student's cross-entropy to them, times
    ``ce_weight``, is added in the same pass (reduced as the divergence, without T^2);
    ``stats`` then receives the two weighted parts (``divergence``, ``ce``).
    """
    _check_teacher(hidden, weight, mask, chunk_size, teacher_logits, teacher_hidden, teacher_weight)
    vocab = weight.shape[0]
    fn, squared = token_rows(objective, **params)
    h = hidden.reshape(-1, hidden.shape[-1])
    t_logits = _flatten(teacher_logits, vocab)
    t_hidden = (
        _flatten(teacher_hidden, teacher_hidden.shape[-1]) if teacher_hidden is not None else None
    )
    labels = None if ce_labels is None else ce_labels.reshape(-1)
    if mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(1)
        h = h[index]
        t_logits = None if t_logits is None else t_logits[index]
        t_hidden = None if t_hidden is None else t_hidden[index]
        labels = None if labels is None else labels[index]
    scale, ce_scale = _scales(h.shape[0], reduction, normalizer, temperature, squared)
    if h.shape[0] == 0:
        return h.sum() * 0.0  # no valid token: a zero that keeps the graph

    def chunk_terms(start: int, stop: int, z: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            if t_logits is not None:
                t = t_logits[start:stop].float()
            else:
                t = t_hidden[start:stop].float() @ teacher_weight.float().T
                if teacher_bias is not None:
                    t = t + teacher_bias.float()
            t = postprocess(t, teacher_logit_scale, teacher_logit_softcap)
        rows = row_values(fn, [z, t], None, temperature, torch.float32)
        terms = {"divergence": divergence_weight * scale * rows.sum()}
        if labels is not None and ce_weight:
            terms["ce"] = ce_weight * ce_scale * _ce_rows(z, labels[start:stop]).sum()
        return terms

    return _FusedHead.apply(
        h, weight, bias, chunk_terms, chunk_size, (logit_scale, logit_softcap), stats
    )


# --------------------------------------------------------------------------- top-k teacher


def bucket_log_probs(log_q: Tensor, ids: Tensor) -> Tensor:
    """A distribution (N, V) of log-probabilities folded onto k + 1 buckets: the k tokens of
    ``ids`` (N, k) and one bucket holding the rest of the mass, (N, k + 1)."""
    top = log_q.gather(1, ids)
    rest = log_q.scatter(1, ids, float("-inf"))
    empty = torch.isneginf(rest).all(dim=1, keepdim=True)  # k = V: no rest (and no NaN grads)
    tail = torch.logsumexp(torch.where(empty, 0.0, rest), dim=1, keepdim=True)
    return torch.cat([top, torch.where(empty, float("-inf"), tail)], dim=1)


def teacher_buckets(
    top_log_probs: Tensor, tail_log_mass: Tensor, temperature: float = 1.0
) -> Tensor:
    """The teacher's k + 1 bucket log-probabilities at ``temperature`` from its cached top-k
    log-probabilities and tail log-mass (at temperature 1): ``log_softmax(log p_b / T)``.
    Exact at T = 1; at T != 1 the tail bucket is tempered as if it were one token (an
    approximation: the tail's own spread is unknown)."""
    raw = torch.cat([top_log_probs.float(), tail_log_mass.float()[:, None]], dim=1)
    return torch.log_softmax(raw / temperature, dim=1)


def fused_linear_topk_divergence(
    hidden: Tensor,
    weight: Tensor,
    top_ids: Tensor,
    top_log_probs: Tensor,
    tail_log_mass: Tensor,
    *,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    objective: str = "forward_kl",
    temperature: float = 1.0,
    reduction: str = "mean",
    normalizer: float | None = None,
    chunk_size: int = 1024,
    logit_scale: float = 1.0,
    logit_softcap: float | None = None,
    ce_labels: Tensor | None = None,
    ce_weight: float = 0.0,
    divergence_weight: float = 1.0,
    stats: dict[str, Tensor] | None = None,
    **params: float,
) -> Tensor:
    """The token ``objective`` against a teacher given by its top-k cache, fused with the head.

    The teacher is ``top_ids`` (M, k), ``top_log_probs`` (M, k) and ``tail_log_mass`` (M,)
    for the M valid tokens (``mask`` True, row-major). Both distributions are folded onto
    k + 1 buckets (the teacher's k tokens, the rest) and ``objective`` is exact on those
    buckets; the student's buckets are exact at any temperature (its full softmax is formed
    chunk by chunk), the teacher's exact at T = 1 (:func:`teacher_buckets`). With k = V the
    value equals the full-vocabulary objective.
    """
    _check_student(hidden, weight, mask, chunk_size)
    fn, squared = token_rows(objective, **params)
    h = hidden.reshape(-1, hidden.shape[-1])
    labels = None if ce_labels is None else ce_labels.reshape(-1)
    if mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(1)
        h = h[index]
        labels = None if labels is None else labels[index]
    if top_ids.shape[0] != h.shape[0] or top_log_probs.shape != top_ids.shape:
        raise ValueError(
            f"the cache gives {top_ids.shape[0]} tokens (ids {tuple(top_ids.shape)}, log-probs "
            f"{tuple(top_log_probs.shape)}) for {h.shape[0]} valid tokens"
        )
    if tail_log_mass.shape != (h.shape[0],):
        raise ValueError(f"tail_log_mass must be ({h.shape[0]},), got {tuple(tail_log_mass.shape)}")
    scale, ce_scale = _scales(h.shape[0], reduction, normalizer, temperature, squared)
    if h.shape[0] == 0:
        return h.sum() * 0.0
    ids = top_ids.long()

    def chunk_terms(start: int, stop: int, z: Tensor) -> dict[str, Tensor]:
        log_q = bucket_log_probs(torch.log_softmax(z.float() / temperature, dim=1), ids[start:stop])
        with torch.no_grad():
            log_p = teacher_buckets(
                top_log_probs[start:stop], tail_log_mass[start:stop], temperature
            )
        terms = {"divergence": divergence_weight * scale * fn(log_q, log_p).sum()}
        if labels is not None and ce_weight:
            terms["ce"] = ce_weight * ce_scale * _ce_rows(z, labels[start:stop]).sum()
        return terms

    return _FusedHead.apply(
        h, weight, bias, chunk_terms, chunk_size, (logit_scale, logit_softcap), stats
    )
