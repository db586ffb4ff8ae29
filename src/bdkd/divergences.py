"""Divergences between a student's and a teacher's predicted distributions.

Every function takes logits ``(student_logits, teacher_logits)`` of shape ``(..., C)`` and,
with ``p = softmax(teacher / T)`` and ``q = softmax(student / T)``, returns one value per row
reduced by ``reduction``:

- ``"none"``: shape ``(...)``, masked rows are 0;
- ``"sum"``: the sum over valid rows;
- ``"mean"``: the sum over valid rows divided by their count (0 when there is none).

``mask`` (bool, shape ``(...)``) selects the valid rows, e.g. non-padding tokens. Masked rows
never touch the result or its gradients, whatever they hold (NaN, ``-inf``).

All computation is in log space and in at least float32 (float16/bfloat16 inputs are upcast;
float64 stays float64); the result has that compute dtype. No ``T**2`` factor is applied
here: objectives apply their own scaling. Gradients flow into both arguments; callers detach
what they need.

Classes where *both* distributions are exactly 0 (a ``-inf`` logit in both, e.g. a masked
vocabulary entry) are outside the support and contribute 0 to every divergence.

``chunk_size=int`` processes rows in chunks of that many rows: values and gradients are the
same, and the extra peak memory of forward + backward is O(chunk_size x C) instead of
O(rows x C) (see :class:`_ChunkedRows`). The chunked path supports one backward pass
(no double backward).

Formulas and sources: docs/divergences.md (Cichocki et al. 2011 for the alpha-beta
divergence; Ko et al. 2024, DistiLLM, for the skew KLs).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Annotated

import torch
from torch import Tensor

from bdkd.hparams import Range

POSITIVE = Range(gt=0)
UNIT = Range(ge=0, le=1)
TEMPERATURE = Annotated[float, POSITIVE]

__all__ = [
    "REDUCTIONS",
    "ROW_FUNCTIONS",
    "apply_rows",
    "kl_rows",
    "pairwise_rows",
    "row_values",
    "ab_divergence",
    "entropy",
    "entropy_rows",
    "forward_kl",
    "js_divergence",
    "reverse_kl",
    "skew_forward_kl",
    "skew_reverse_kl",
    "total_variation",
]

REDUCTIONS = ("mean", "sum", "none")

RowFn = Callable[..., Tensor]
"""Maps log-probability tensors of shape (N, C) to per-row values of shape (N,)."""


# --------------------------------------------------------------------------- validation


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    for t in tensors:
        if not t.is_floating_point():
            raise TypeError(f"logits must be a floating-point tensor, got dtype {t.dtype}")
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def _check_common(
    tensors: Sequence[Tensor],
    temperature: float,
    reduction: str,
    mask: Tensor | None,
    chunk_size: int | None,
) -> None:
    first = tensors[0]
    if first.dim() < 1 or first.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., C) with C >= 1, got {tuple(first.shape)}")
    for other in tensors[1:]:
        if other.shape != first.shape:
            raise ValueError(
                "student and teacher logits must have the same shape, got "
                f"{tuple(first.shape)} and {tuple(other.shape)}"
            )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.shape != first.shape[:-1]:
            raise ValueError(
                f"mask must have shape {tuple(first.shape[:-1])} (the logits without the class "
                f"dim), got {tuple(mask.shape)}"
            )
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")


def _check_unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


# --------------------------------------------------------------------------- row kernels


def _log_probs(logits: Tensor, temperature: float, dtype: torch.dtype) -> Tensor:
    return torch.log_softmax(logits.to(dtype) / temperature, dim=-1)


def _weighted_log_ratio(weight: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
    """``weight * (log_a - log_b)`` elementwise, exactly 0 where ``weight == 0``.

    The difference is replaced by 0 where the weight vanishes, so ``0 * (-inf)`` and
    ``-inf - (-inf)`` never reach the result or its gradient.
    """
    diff = torch.where(weight > 0, log_a - log_b, 0.0)
    return weight * diff


def kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a || b) per row from log-probabilities (N, C); classes where a is 0 add nothing."""
    return _weighted_log_ratio(log_a.exp(), log_a, log_b).sum(-1)


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w a + (1 - w) b), mixing probabilities in log space.

    Where both are 0 the mix is 0 (-inf); those positions are fed finite stand-ins first so
    that logaddexp's gradient there is 0 rather than NaN.
    """
    if weight_a == 0.0:
        return log_b
    if weight_a == 1.0:
        return log_a
    both = torch.isneginf(log_a) & torch.isneginf(log_b)
    mixed = torch.logaddexp(
        torch.where(both, 0.0, log_a) + math.log(weight_a),
        torch.where(both, 0.0, log_b) + math.log1p(-weight_a),
    )
    return torch.where(both, float("-inf"), mixed)


def _graph_anchor(log_r: Tensor) -> Tensor:
    """Per-row zeros that depend on ``log_r``, so a value that is constant in one argument
    (an endpoint of a skew or of the JSD) still backpropagates an exact zero into it."""
    return torch.where(torch.isfinite(log_r), log_r, 0.0).sum(-1) * 0.0


def _shared_zero_support(log_q: Tensor, log_p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positions where both distributions are 0, and both log-probs with those set to 0."""
    both = torch.isneginf(log_q) & torch.isneginf(log_p)
    return both, torch.where(both, 0.0, log_q), torch.where(both, 0.0, log_p)


def _ab_rows(log_q: Tensor, log_p: Tensor, alpha: float, beta: float) -> Tensor:
    """D_AB(p || q) per row (teacher p, student q), with the exact continuous limits."""
    outside, log_q, log_p = _shared_zero_support(log_q, log_p)
    if alpha == 0.0 and beta == 0.0:
        terms = 0.5 * (log_p - log_q) ** 2
    elif beta == 0.0:
        p_a = torch.exp(alpha * log_p)
        q_a = torch.exp(alpha * log_q)
        terms = (alpha * _weighted_log_ratio(p_a, log_p, log_q) - p_a + q_a) / alpha**2
    elif alpha == 0.0:
        q_b = torch.exp(beta * log_q)
        p_b = torch.exp(beta * log_p)
        terms = (beta * _weighted_log_ratio(q_b, log_q, log_p) - q_b + p_b) / beta**2
    elif alpha + beta == 0.0:
        d = alpha * (log_q - log_p)
        terms = (d + torch.exp(-d) - 1.0) / alpha**2
    else:
        s = alpha + beta
        cross = torch.exp(alpha * log_p + beta * log_q)
        p_s = torch.exp(s * log_p)
        q_s = torch.exp(s * log_q)
        direct = -(cross - (alpha / s) * p_s - (beta / s) * q_s) / (alpha * beta)
        # Where p and q are close the direct form cancels; with r = log q - log p it equals
        # p^s [(b/s) expm1(s r) - expm1(b r)] / (a b), which is exact at r = 0.
        r = log_q - log_p
        near = r.abs() <= 1.0
        r = torch.where(near, r, 0.0)
        close = p_s * ((beta / s) * torch.expm1(s * r) - torch.expm1(beta * r)) / (alpha * beta)
        terms = torch.where(near, close, direct)
    return torch.where(outside, 0.0, terms).sum(-1)


# --------------------------------------------------------------------------- row evaluation
# ``apply_rows`` is public for objectives that build their own per-row function (token-level
# BD-KD in :mod:`bdkd.llm`): it brings validation, masking, reductions and chunking.


def _sanitize_rows(x: Tensor, valid: Tensor | None) -> Tensor:
    if valid is None:
        return x
    return torch.where(valid.unsqueeze(-1), x, 0.0)


def row_values(
    fn: RowFn,
    logits: Sequence[Tensor],
    valid: Tensor | None,
    temperature: float,
    dtype: torch.dtype,
) -> Tensor:
    """Per-row values of ``fn`` on ``log_softmax(logits / temperature)`` computed in ``dtype``;
    rows outside ``valid`` are 0 and never reach the gradients. No checks: the building block
    of :func:`apply_rows` and of fused paths that form logits chunk by chunk."""
    log_probs = [_log_probs(_sanitize_rows(x, valid), temperature, dtype) for x in logits]
    values = fn(*log_probs)
    if valid is not None:
        values = torch.where(valid, values, 0.0)
    return values


class _ChunkedRows(torch.autograd.Function):
    """Per-row values computed chunk by chunk, with each chunk's gradient formed at once.

    Each row's value depends on that row alone, so the Jacobian is block diagonal: the
    gradient of ``sum(values)`` with respect to a chunk's rows is every row's own gradient.
    Forward stores those row gradients (one (N, C) tensor per input that needs one, in the
    input's dtype); backward scales them in place by the incoming per-row gradient. The
    extra memory beyond the stored gradients is that of one chunk's forward + backward.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        fn: RowFn,
        chunk_size: int,
        temperature: float,
        dtype: torch.dtype,
        valid: Tensor | None,
        *logits: Tensor,
    ) -> Tensor:
        n = logits[0].shape[0]
        needs = [x.requires_grad for x in logits]
        grads = [
            torch.empty_like(x) if need else None for x, need in zip(logits, needs, strict=True)
        ]
        values = logits[0].new_empty(n, dtype=dtype)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            chunk = [
                x[start:stop].detach().requires_grad_(need)
                for x, need in zip(logits, needs, strict=True)
            ]
            chunk_valid = None if valid is None else valid[start:stop]
            with torch.enable_grad():
                v = row_values(fn, chunk, chunk_valid, temperature, dtype)
                wrt = [c for c, need in zip(chunk, needs, strict=True) if need]
                chunk_grads = torch.autograd.grad(v.sum(), wrt)
            it = iter(chunk_grads)
            for g, need in zip(grads, needs, strict=True):
                if need:
                    g[start:stop] = next(it)
            values[start:stop] = v.detach()
        ctx.row_grads = grads
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_values: Tensor) -> tuple:  # type: ignore[override]
        grads = ctx.row_grads
        ctx.row_grads = None
        scale = grad_values.unsqueeze(-1)
        out = [None if g is None else g.mul_(scale.to(g.dtype)) for g in grads]
        return (None, None, None, None, None, *out)


def apply_rows(
    fn: RowFn,
    logits: Sequence[Tensor],
    *,
    temperature: float,
    reduction: str,
    mask: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Evaluate a per-row function on log-softmaxed ``logits`` with every guarantee of this
    module: validation, masking, reduction, upcasting and the chunked path."""
    _check_common(logits, temperature, reduction, mask, chunk_size)
    dtype = _compute_dtype(*logits)
    lead = logits[0].shape[:-1]
    num_classes = logits[0].shape[-1]
    flat = [x.reshape(-1, num_classes) for x in logits]
    valid = None if mask is None else mask.reshape(-1)

    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in flat)
    if chunk_size is None or flat[0].shape[0] <= chunk_size:
        values = row_values(fn, flat, valid, temperature, dtype)
    elif needs_grad:
        values = _ChunkedRows.apply(fn, chunk_size, temperature, dtype, valid, *flat)
    else:
        values = torch.cat(
            [
                row_values(
                    fn,
                    [x[i : i + chunk_size] for x in flat],
                    None if valid is None else valid[i : i + chunk_size],
                    temperature,
                    dtype,
                )
                for i in range(0, flat[0].shape[0], chunk_size)
            ]
        )

    if reduction == "none":
        return values.reshape(lead)
    total = values.sum()
    if reduction == "sum":
        return total
    count = values.new_tensor(values.numel()) if valid is None else valid.sum().to(dtype)
    return total / count.clamp_min(1)


# --------------------------------------------------------------------------- row functions


def _tv_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    return 0.5 * (log_p.exp() - log_q.exp()).abs().sum(-1)


def entropy_rows(log_r: Tensor) -> Tensor:
    """Shannon entropy per row from log-probabilities (N, C); zero-probability classes add 0."""
    return -_weighted_log_ratio(log_r.exp(), log_r, log_r.new_zeros(())).sum(-1)


def _skew_forward(*, skew: Annotated[float, UNIT] = 0.1) -> RowFn:
    _check_unit_interval("skew", skew)
    return lambda log_q, log_p: kl_rows(log_p, _log_mix(log_p, log_q, skew)) + _graph_anchor(log_q)


def _skew_reverse(*, skew: Annotated[float, UNIT] = 0.1) -> RowFn:
    _check_unit_interval("skew", skew)
    return lambda log_q, log_p: kl_rows(log_q, _log_mix(log_q, log_p, skew)) + _graph_anchor(log_p)


def _js(*, beta: Annotated[float, UNIT] = 0.5) -> RowFn:
    _check_unit_interval("beta", beta)

    def js_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
        log_m = _log_mix(log_p, log_q, beta)
        value = _graph_anchor(log_q) + _graph_anchor(log_p)
        if beta > 0.0:
            value = value + beta * kl_rows(log_p, log_m)
        if beta < 1.0:
            value = value + (1.0 - beta) * kl_rows(log_q, log_m)
        return value

    return js_rows


def _ab(*, alpha: float, beta: float) -> RowFn:
    for key, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise ValueError(f"{key} must be a finite number, got {value!r}")
    a, b = float(alpha), float(beta)
    return lambda log_q, log_p: _ab_rows(log_q, log_p, a, b)


ROW_FUNCTIONS: dict[str, Callable[..., RowFn]] = {
    "forward_kl": lambda: lambda log_q, log_p: kl_rows(log_p, log_q),
    "reverse_kl": lambda: kl_rows,
    "js_divergence": _js,
    "skew_forward_kl": _skew_forward,
    "skew_reverse_kl": _skew_reverse,
    "total_variation": lambda: _tv_rows,
    "ab_divergence": _ab,
}
"""Each divergence's builder: hyper-parameters in, per-row function ``(log_q, log_p)`` out."""


def pairwise_rows(name: str, **params: float) -> RowFn:
    """The per-row function ``(log_q, log_p) -> values`` of a divergence, by name.

    ``name`` is one of ``forward_kl``, ``reverse_kl``, ``js_divergence`` (``beta``),
    ``skew_forward_kl`` / ``skew_reverse_kl`` (``skew``), ``total_variation`` and
    ``ab_divergence`` (``alpha``, ``beta``); ``log_q`` is the student's log-probabilities,
    ``log_p`` the teacher's, both (N, C). Used by the public functions below and by fused
    paths that form logits chunk by chunk (:mod:`bdkd.llm`).
    """
    if name not in ROW_FUNCTIONS:
        raise ValueError(f"unknown divergence {name!r}; known: {sorted(ROW_FUNCTIONS)}")
    builder = ROW_FUNCTIONS[name]
    allowed = sorted(inspect.signature(builder).parameters)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"divergence {name!r} takes {allowed}, got {unknown}")
    try:
        return builder(**params)
    except TypeError:
        missing = sorted(set(allowed) - set(params))
        raise ValueError(f"divergence {name!r} needs {missing}") from None


def _divergence(
    name: str,
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float,
    reduction: str,
    mask: Tensor | None,
    chunk_size: int | None,
    **params: float,
) -> Tensor:
    return apply_rows(
        pairwise_rows(name, **params),
        (student_logits, teacher_logits),
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        chunk_size=chunk_size,
    )


# --------------------------------------------------------------------------- public API


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Forward KL, ``KL(p || q) = sum p (log p - log q)``: mass-covering; the classic KD term."""
    return _divergence("forward_kl", **locals())


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Reverse KL, ``KL(q || p) = sum q (log q - log p)``: mode-seeking."""
    return _divergence("reverse_kl", **locals())


def js_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 0.5,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Generalized Jensen-Shannon divergence.

    ``beta KL(p || m) + (1 - beta) KL(q || m)`` with ``m = beta p + (1 - beta) q``;
    ``beta = 0.5`` is the usual (symmetric) JSD, and it is exactly 0 at ``beta`` 0 and 1.
    """
    return _divergence("js_divergence", **locals())


def skew_forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Skew forward KL (DistiLLM), ``KL(p || skew p + (1 - skew) q)``; skew=0 is forward KL."""
    return _divergence("skew_forward_kl", **locals())


def skew_reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    skew: float = 0.1,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Skew reverse KL (DistiLLM), ``KL(q || skew q + (1 - skew) p)``; skew=0 is reverse KL."""
    return _divergence("skew_reverse_kl", **locals())


def total_variation(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Total variation distance, ``1/2 sum |p - q|``."""
    return _divergence("total_variation", **locals())


def ab_divergence(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Alpha-beta divergence ``D_AB(p || q)`` (Cichocki et al. 2011; ABKD, Wang et al. 2025).

    ``-1/(alpha beta) sum [p^a q^b - a/(a+b) p^(a+b) - b/(a+b) q^(a+b)]``, with the exact
    continuous limits at ``beta = 0``, ``alpha = 0``, ``alpha = -beta`` and
    ``alpha = beta = 0`` (scaled by ``1/alpha^2``, not the ``1/alpha`` of the official
    code). ``(1, 0)`` is forward KL, ``(0, 1)`` reverse KL, ``(0.5, 0.5)`` is
    ``2 sum (sqrt p - sqrt q)^2`` and ``(1, 1)`` is ``1/2 ||p - q||^2``. Every power is
    computed as ``exp(a log p + b log q)``, so an underflowed probability never gives a NaN
    gradient. Close to a limit (``|beta|`` ~ 1e-3) the general formula loses relative
    precision in float32 through cancellation; pass float64 logits when that matters.
    """
    return _divergence("ab_divergence", **locals())


def entropy(
    logits: Tensor,
    *,
    temperature: TEMPERATURE = 1.0,
    reduction: str = "mean",
    mask: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Shannon entropy ``H(softmax(logits / T)) = -sum r log r`` in nats."""

    return apply_rows(
        entropy_rows,
        (logits,),
        temperature=temperature,
        reduction=reduction,
        mask=mask,
        chunk_size=chunk_size,
    )
