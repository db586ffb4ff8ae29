"""Divergence core: identities, parity with a float64 reference, extremes, chunking."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bdkd import divergences as D

PAIRWISE = {
    "forward_kl": D.forward_kl,
    "reverse_kl": D.reverse_kl,
    "js_divergence": D.js_divergence,
    "skew_forward_kl": D.skew_forward_kl,
    "skew_reverse_kl": D.skew_reverse_kl,
    "total_variation": D.total_variation,
    "ab_0.8_0.3": lambda s, t, **kw: D.ab_divergence(s, t, alpha=0.8, beta=0.3, **kw),
    "ab_0.5_-0.2": lambda s, t, **kw: D.ab_divergence(s, t, alpha=0.5, beta=-0.2, **kw),
    "ab_1_0": lambda s, t, **kw: D.ab_divergence(s, t, alpha=1.0, beta=0.0, **kw),
    "ab_0_1": lambda s, t, **kw: D.ab_divergence(s, t, alpha=0.0, beta=1.0, **kw),
    "ab_0.7_-0.7": lambda s, t, **kw: D.ab_divergence(s, t, alpha=0.7, beta=-0.7, **kw),
    "ab_0_0": lambda s, t, **kw: D.ab_divergence(s, t, alpha=0.0, beta=0.0, **kw),
    "ab_-0.5_0": lambda s, t, **kw: D.ab_divergence(s, t, alpha=-0.5, beta=0.0, **kw),
}


# --------------------------------------------------------------------------- reference
# A deliberately plain float64 reference on probabilities (fine for moderate logits).


def _probs(logits, temperature):
    return torch.softmax(logits.double() / temperature, dim=-1)


def _ref_kl(a, b):
    return (a * (a.log() - b.log())).sum(-1)


def _ref_ab(p, q, alpha, beta):
    if alpha == 0 and beta == 0:
        return 0.5 * ((p.log() - q.log()) ** 2).sum(-1)
    if beta == 0:
        pa, qa = p**alpha, q**alpha
        return (pa * (pa / qa).log() - pa + qa).sum(-1) / alpha**2
    if alpha == 0:
        qb, pb = q**beta, p**beta
        return (qb * (qb / pb).log() - qb + pb).sum(-1) / beta**2
    if alpha + beta == 0:
        r = q**alpha / p**alpha
        return ((r).log() + 1 / r - 1).sum(-1) / alpha**2
    s = alpha + beta
    return -(p**alpha * q**beta - alpha / s * p**s - beta / s * q**s).sum(-1) / (alpha * beta)


def _reference(name, s, t, temperature):
    p, q = _probs(t, temperature), _probs(s, temperature)
    if name == "forward_kl":
        return _ref_kl(p, q)
    if name == "reverse_kl":
        return _ref_kl(q, p)
    if name == "js_divergence":
        m = 0.5 * p + 0.5 * q
        return 0.5 * _ref_kl(p, m) + 0.5 * _ref_kl(q, m)
    if name == "skew_forward_kl":
        return _ref_kl(p, 0.1 * p + 0.9 * q)
    if name == "skew_reverse_kl":
        return _ref_kl(q, 0.1 * q + 0.9 * p)
    if name == "total_variation":
        return 0.5 * (p - q).abs().sum(-1)
    _, a, b = name.split("_")
    return _ref_ab(p, q, float(a), float(b))


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_values_and_gradients_match_float64_reference(name, temperature):
    s = _logits(6, 11, seed=1).requires_grad_()
    t = _logits(6, 11, seed=2).requires_grad_()
    s64 = s.detach().double().requires_grad_()
    t64 = t.detach().double().requires_grad_()

    ours = PAIRWISE[name](s, t, temperature=temperature, reduction="none")
    ref = _reference(name, s64, t64, temperature)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=2e-5, atol=2e-6)

    weights = torch.linspace(0.5, 2.0, 6)
    (ours * weights).sum().backward()
    (ref * weights.double()).sum().backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-6)


def test_entropy_matches_reference():
    x = _logits(5, 7, seed=3).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ours = D.entropy(x, temperature=2.0, reduction="none")
    r = _probs(x64, 2.0)
    ref = -(r * r.log()).sum(-1)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    uniform = D.entropy(torch.zeros(3, 8))
    assert math.isclose(uniform.item(), math.log(8), rel_tol=1e-6)


def test_float64_inputs_stay_float64():
    s, t = _logits(3, 5, seed=4, dtype=torch.float64), _logits(3, 5, seed=5, dtype=torch.float64)
    out = D.forward_kl(s, t)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, _reference("forward_kl", s, t, 1.0).mean())


# --------------------------------------------------------------------------- identities

logit_rows = st.integers(min_value=0, max_value=2**31 - 1).map(
    lambda seed: _logits(4, 9, scale=4.0, seed=seed)
)


@settings(max_examples=25, deadline=None)
@given(x=logit_rows)
def test_divergence_of_a_distribution_with_itself_is_zero(x):
    for name, fn in PAIRWISE.items():
        value = fn(x, x.clone(), reduction="none")
        torch.testing.assert_close(value, torch.zeros(4), atol=1e-6, rtol=0, msg=name)


@settings(max_examples=25, deadline=None)
@given(s=logit_rows, t=logit_rows)
def test_non_negative(s, t):
    for name, fn in PAIRWISE.items():
        assert (fn(s, t, reduction="none") >= -1e-6).all(), name


@settings(max_examples=25, deadline=None)
@given(s=logit_rows, t=logit_rows)
def test_jsd_symmetric_at_half(s, t):
    torch.testing.assert_close(D.js_divergence(s, t), D.js_divergence(t, s), atol=1e-6, rtol=1e-5)


def test_jsd_endpoints_are_zero_and_keep_the_graph():
    s = _logits(3, 6, seed=6).requires_grad_()
    t = _logits(3, 6, seed=7)
    for beta in (0.0, 1.0):
        value = D.js_divergence(s, t, beta=beta)
        assert abs(value.item()) < 1e-6
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(grad).all()


def test_skew_endpoints():
    s, t = _logits(3, 6, seed=8), _logits(3, 6, seed=9)
    torch.testing.assert_close(D.skew_forward_kl(s, t, skew=0.0), D.forward_kl(s, t))
    torch.testing.assert_close(D.skew_reverse_kl(s, t, skew=0.0), D.reverse_kl(s, t))
    assert abs(D.skew_forward_kl(s, t, skew=1.0).item()) < 1e-7


def test_ab_special_cases():
    s, t = _logits(5, 8, seed=10), _logits(5, 8, seed=11)
    p, q = _probs(t, 1.0), _probs(s, 1.0)
    none = {"reduction": "none"}
    torch.testing.assert_close(
        D.ab_divergence(s, t, alpha=1.0, beta=0.0, **none), D.forward_kl(s, t, **none)
    )
    torch.testing.assert_close(
        D.ab_divergence(s, t, alpha=0.0, beta=1.0, **none), D.reverse_kl(s, t, **none)
    )
    hellinger = 2 * ((p.sqrt() - q.sqrt()) ** 2).sum(-1)
    torch.testing.assert_close(
        D.ab_divergence(s, t, alpha=0.5, beta=0.5, **none).double(), hellinger, rtol=1e-5, atol=1e-6
    )
    squared = 0.5 * ((p - q) ** 2).sum(-1)
    torch.testing.assert_close(
        D.ab_divergence(s, t, alpha=1.0, beta=1.0, **none).double(), squared, rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize(
    ("limit", "nearby"),
    [
        ((0.7, 0.0), (0.7, 1e-6)),
        ((1.0, 0.0), (1.0, -1e-6)),
        ((0.0, 0.6), (1e-6, 0.6)),
        ((0.0, 1.0), (-1e-6, 1.0)),
        ((0.5, -0.5), (0.5, -0.5 + 1e-6)),
        ((-0.8, 0.8), (-0.8 + 1e-6, 0.8)),
        ((0.0, 0.0), (1e-5, 2e-5)),
    ],
)
def test_ab_limits_agree_with_general_formula_nearby(limit, nearby):
    s = _logits(4, 7, scale=1.5, seed=12, dtype=torch.float64)
    t = _logits(4, 7, scale=1.5, seed=13, dtype=torch.float64)
    at = D.ab_divergence(s, t, alpha=limit[0], beta=limit[1], reduction="none")
    near = D.ab_divergence(s, t, alpha=nearby[0], beta=nearby[1], reduction="none")
    torch.testing.assert_close(at, near, rtol=1e-3, atol=1e-6)
    # and the limit is not trivially zero
    assert (at > 1e-3).all()


# --------------------------------------------------------------------------- reductions, mask


def test_reductions_and_mask():
    s, t = _logits(2, 3, 5, seed=14), _logits(2, 3, 5, seed=15)
    rows = D.forward_kl(s, t, reduction="none")
    assert rows.shape == (2, 3)
    torch.testing.assert_close(D.forward_kl(s, t, reduction="sum"), rows.sum())
    torch.testing.assert_close(D.forward_kl(s, t), rows.mean())

    mask = torch.tensor([[True, False, True], [False, False, True]])
    s_bad = s.clone()
    s_bad[~mask] = float("nan")
    t_bad = t.clone()
    t_bad[~mask] = float("-inf")
    s_bad.requires_grad_()
    masked_rows = D.forward_kl(s_bad, t_bad, reduction="none", mask=mask)
    torch.testing.assert_close(masked_rows, torch.where(mask, rows, 0.0))
    mean = D.forward_kl(s_bad, t_bad, mask=mask)
    torch.testing.assert_close(mean, rows[mask].mean())
    mean.backward()
    assert torch.isfinite(s_bad.grad).all()
    assert (s_bad.grad[~mask] == 0).all()
    torch.testing.assert_close(D.forward_kl(s, t, reduction="sum", mask=mask), rows[mask].sum())


def test_empty_mask_mean_is_zero_with_finite_gradient():
    s = _logits(3, 4, seed=16).requires_grad_()
    value = D.reverse_kl(s, _logits(3, 4, seed=17), mask=torch.zeros(3, dtype=torch.bool))
    assert value.item() == 0.0
    value.backward()
    assert (s.grad == 0).all()


def test_bad_input_errors():
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    with pytest.raises(ValueError, match="same shape"):
        D.forward_kl(s, torch.randn(3, 6))
    with pytest.raises(ValueError, match="temperature"):
        D.forward_kl(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="reduction"):
        D.forward_kl(s, t, reduction="avg")
    with pytest.raises(ValueError, match="mask must have shape"):
        D.forward_kl(s, t, mask=torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        D.forward_kl(s, t, mask=torch.ones(3))
    with pytest.raises(ValueError, match="chunk_size"):
        D.forward_kl(s, t, chunk_size=0)
    with pytest.raises(ValueError, match="beta"):
        D.js_divergence(s, t, beta=1.5)
    with pytest.raises(ValueError, match="skew"):
        D.skew_reverse_kl(s, t, skew=-0.1)
    with pytest.raises(ValueError, match="alpha"):
        D.ab_divergence(s, t, alpha=float("nan"), beta=0.5)
    with pytest.raises(TypeError, match="floating-point"):
        D.forward_kl(s.long(), t.long())


# --------------------------------------------------------------------------- extremes


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@pytest.mark.parametrize("temperature", [0.5, 1.0, 8.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_give_finite_values_and_gradients(name, temperature, dtype):
    g = torch.Generator().manual_seed(18)
    s = (torch.randint(-1, 2, (4, 12), generator=g) * 1e4).to(dtype)
    t = (torch.randint(-1, 2, (4, 12), generator=g) * 1e4).to(dtype)
    # a masked vocabulary: the same entries are -inf in both
    s[:, -2:] = float("-inf")
    t[:, -2:] = float("-inf")
    # make sure every row keeps at least one shared finite maximum so KL stays finite
    s[:, 0] = 1e4
    t[:, 0] = 1e4
    s.requires_grad_()
    t.requires_grad_()
    if name.startswith("ab_") and name not in ("ab_0.8_0.3", "ab_1_0", "ab_0_1"):
        # members with a negative power or a squared log-ratio are infinite whenever one
        # distribution has a zero where the other has mass (which logits 2e4 apart produce)
        # and grow exponentially in the log-ratio, past float16's range of 65504; test them
        # on moderate logits instead
        s = _logits(4, 12, scale=1.5, seed=19).to(dtype).requires_grad_()
        t = _logits(4, 12, scale=1.5, seed=20).to(dtype).requires_grad_()
    value = PAIRWISE[name](s, t, temperature=temperature)
    assert torch.isfinite(value), name
    value.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all(), name
    assert s.grad.dtype == dtype


def test_teacher_only_masked_vocabulary_is_finite_for_forward_kl():
    s = _logits(3, 8, seed=21).requires_grad_()
    t = _logits(3, 8, seed=22)
    t[:, :3] = float("-inf")
    value = D.forward_kl(s, t)
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(s.grad).all()
    # and the reverse direction is honestly infinite: the student has mass where p = 0
    assert torch.isinf(D.reverse_kl(s, t))


def test_underflowed_probabilities_give_finite_ab_gradients():
    # torch.pow(p, beta) with beta < 1 has an infinite derivative at p = 0; ours does not
    s = torch.tensor([[0.0, -200.0, 5.0]], requires_grad=True)
    t = torch.tensor([[0.0, -300.0, 4.0]], requires_grad=True)
    value = D.ab_divergence(s, t, alpha=0.8, beta=0.3)
    value.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("name", sorted(PAIRWISE))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_chunked_equals_unchunked(name, reduction):
    fn = PAIRWISE[name]
    s = _logits(3, 7, 13, seed=23)
    t = _logits(3, 7, 13, seed=24)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(25)) > 0.3
    results = []
    for chunk in (None, 4, 5):
        si, ti = s.clone().requires_grad_(), t.clone().requires_grad_()
        out = fn(si, ti, reduction=reduction, mask=mask, chunk_size=chunk, temperature=2.0)
        weights = torch.linspace(0.1, 1.0, out.numel()).reshape(out.shape)
        (out * weights).sum().backward()
        results.append((out.detach(), si.grad, ti.grad))
    for out, gs, gt in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gs, results[0][1], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gt, results[0][2], rtol=1e-5, atol=1e-6)


def test_chunked_entropy_and_partial_requires_grad():
    x = _logits(10, 6, seed=26).requires_grad_()
    full = D.entropy(x)
    (g_full,) = torch.autograd.grad(full, x)
    chunked = D.entropy(x, chunk_size=3)
    (g_chunk,) = torch.autograd.grad(chunked, x)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunk, g_full)

    s = _logits(10, 6, seed=27).requires_grad_()
    t = _logits(10, 6, seed=28)  # teacher detached: only the student gets a gradient
    out = D.reverse_kl(s, t, chunk_size=4)
    out.backward()
    torch.testing.assert_close(s.grad, torch.autograd.grad(D.reverse_kl(s, t), s)[0])
    with torch.no_grad():
        torch.testing.assert_close(D.js_divergence(s, t, chunk_size=3), D.js_divergence(s, t))
