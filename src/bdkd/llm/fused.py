"""Fused linear + divergence: distil through the LM head without materialising (N, V) logits.

The student's logits ``h W^T (+ b)`` for a vocabulary of 32k-150k make the naive loss
dominate memory. Here tokens are processed in chunks: each chunk's logits are formed, its
per-token values and their gradient with respect to the chunk's logits computed at once,
and that gradient is pushed straight into ``grad h = g W`` and ``grad W += g^T h``; only
one chunk's (chunk, V) logits ever exist. The teacher is given as logits (N, V) or as
hidden states and head (its logits then formed chunk by chunk too, without gradients).
Values and gradients equal the unfused path (``bdkd.llm.token_loss`` on ``h W^T``).

Models that post-process their logits are followed exactly: ``scale`` multiplies them
(Cohere's ``logit_scale``) and ``softcap`` applies ``softcap * tanh(z / softcap)`` after it
(Gemma's ``final_logit_softcapping``), for the student and the teacher separately.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bdkd.divergences import row_values
from bdkd.llm.objectives import token_rows


def _flatten(x: Tensor | None, dim: int) -> Tensor | None:
    return None if x is None else x.reshape(-1, dim)


def postprocess(logits: Tensor, scale: float = 1.0, softcap: float | None = None) -> Tensor:
    """A model's own logit post-processing: times ``scale``, then ``softcap * tanh(z / softcap)``."""
    if scale != 1.0:
        logits = logits * scale
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class _FusedLinearDivergence(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        teacher_logits: Tensor | None,
        teacher_hidden: Tensor | None,
        teacher_weight: Tensor | None,
        teacher_bias: Tensor | None,
        fn: object,
        temperature: float,
        chunk_size: int,
        scale: float,
        post: tuple[float, float | None, float, float | None],
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
            with torch.no_grad():
                if teacher_logits is not None:
                    t = teacher_logits[start:stop].float()
                else:
                    t = teacher_hidden[start:stop].float() @ teacher_weight.float().T
                    if teacher_bias is not None:
                        t = t + teacher_bias.float()
                t = postprocess(t, post[2], post[3])
            logits = h @ w32.T
            if b32 is not None:
                logits = logits + b32
            logits.requires_grad_(any(needs))
            with torch.enable_grad():
                z = postprocess(logits, post[0], post[1])
                values = row_values(fn, [z, t], None, temperature, torch.float32)
                chunk_total = values.sum()
                if any(needs):
                    (g,) = torch.autograd.grad(chunk_total, logits)
            total += chunk_total.detach()
            if any(needs):
                if grad_h is not None:
                    grad_h[start:stop] = (g @ w32).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w += g.T @ h
                if grad_b is not None:
                    grad_b += g.sum(0)
        ctx.grads = (
            None if grad_h is None else grad_h * scale,
            None if grad_w is None else (grad_w * scale).to(weight.dtype),
            None if grad_b is None else (grad_b * scale).to(bias.dtype),
        )
        return total * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple:  # type: ignore[override]
        gh, gw, gb = ctx.grads
        ctx.grads = None
        out = [None if g is None else g * grad_out.to(g.dtype) for g in (gh, gw, gb)]
        return (*out, None, None, None, None, None, None, None, None, None)


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
    of its logits (see :func:`postprocess`).
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if (teacher_logits is None) == (teacher_hidden is None):
        raise ValueError(
            "give the teacher as teacher_logits or as teacher_hidden + teacher_weight, not both or neither"
        )
    if teacher_hidden is not None and teacher_weight is None:
        raise ValueError("teacher_hidden needs teacher_weight (the teacher's LM head)")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"weight must be (V, H) with H = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}"
        )
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
    if mask is not None and mask.shape != lead:
        raise ValueError(f"mask must have shape {tuple(lead)}, got {tuple(mask.shape)}")
    fn, squared = token_rows(objective, **params)
    h = hidden.reshape(-1, hidden.shape[-1])
    t_logits = _flatten(teacher_logits, vocab)
    t_hidden = (
        _flatten(teacher_hidden, teacher_hidden.shape[-1]) if teacher_hidden is not None else None
    )
    if mask is not None:
        index = mask.reshape(-1).nonzero().squeeze(1)
        h = h[index]
        t_logits = None if t_logits is None else t_logits[index]
        t_hidden = None if t_hidden is None else t_hidden[index]
    count = h.shape[0]
    if normalizer is not None:
        scale = 1.0 / float(normalizer)
    elif reduction == "mean":
        scale = 1.0 / max(count, 1)
    else:
        scale = 1.0
    if squared:
        scale *= temperature**2
    if count == 0:
        return h.sum() * 0.0  # no valid token: a zero that keeps the graph
    return _FusedLinearDivergence.apply(
        h,
        weight,
        bias,
        t_logits,
        t_hidden,
        teacher_weight,
        teacher_bias,
        fn,
        temperature,
        chunk_size,
        scale,
        (logit_scale, logit_softcap, teacher_logit_scale, teacher_logit_softcap),
    )
