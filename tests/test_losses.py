"""Distillation objectives against an independent float64 reference, and their properties."""

from __future__ import annotations

import math

import pytest
import torch

from bdkd import losses as L
from bdkd.losses.registry import OBJECTIVES, get_objective

N, C = 7, 6


def _fixed(seed, scale=2.5, shape=(N, C)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


S64, T64 = _fixed(1), _fixed(2)
Y = torch.tensor([0, 5, 2, 2, 3, 1, 4])


# --------------------------------------------------------------------------- reference (float64)


def softmax(z, tau=1.0):
    return torch.softmax(z / tau, dim=-1)


def kl(a, b):
    return (a * (a / b).log()).sum(-1)


def entropy(a):
    return -(a * a.log()).sum(-1)


def drop(z, y):
    return torch.stack(
        [torch.cat([row[:k], row[k + 1 :]]) for row, k in zip(z, y.tolist(), strict=True)]
    )


def ref_kd(s, t, tau=4.0):
    return tau**2 * kl(softmax(t, tau), softmax(s, tau)).mean()


def ref_dkd(s, t, y, alpha=1.0, beta=8.0, tau=4.0):
    ps, pt = softmax(s, tau), softmax(t, tau)
    idx = torch.arange(len(y))
    bs = torch.stack([ps[idx, y], 1 - ps[idx, y]], -1)
    bt = torch.stack([pt[idx, y], 1 - pt[idx, y]], -1)
    tckd = kl(bt, bs).mean()
    nckd = kl(softmax(drop(t, y), tau), softmax(drop(s, y), tau)).mean()
    return tau**2 * (alpha * tckd + beta * nckd)


def ref_nkd(s, t, y, tau=1.0, gamma=1.5):
    idx = torch.arange(len(y))
    ty = softmax(t)[idx, y]
    sy = softmax(s)[idx, y]
    non = (softmax(drop(t, y), tau) * softmax(drop(s, y), tau).log()).sum(-1).mean()
    return (-ty * sy.log()).mean() - gamma * tau**2 * non


def ref_bdd(s, t, tf=4.0, tr=4.0, wf=1.0, wr=1.0):
    fkl = kl(softmax(t, tf), softmax(s, tf)).mean()
    rkl = kl(softmax(s, tr), softmax(t, tr)).mean()
    return wf * tf**2 * fkl + wr * tr**2 * rkl


def ref_abkd(s, t, alpha, beta, tau=4.0):
    p, q = softmax(t, tau), softmax(s, tau)
    a, b = alpha, beta
    d = -(p**a * q**b - a / (a + b) * p ** (a + b) - b / (a + b) * q ** (a + b)).sum(-1) / (a * b)
    return d.mean()


def pearson(a, b):
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def ref_dist(s, t, beta=1.0, gamma=1.0, tau=4.0):
    q, p = softmax(s, tau), softmax(t, tau)
    inter = 1 - pearson(q, p).mean()
    intra = 1 - pearson(q.T, p.T).mean()
    return tau**2 * (beta * inter + gamma * intra)


def ref_bdkd(s, t, tau=1.0, rule="hard", high=3.0, low=1.0, k=1.0):
    p, q = softmax(t, tau), softmax(s, tau)
    hs, ht = entropy(q).detach(), entropy(p).detach()  # the weights are detached
    if rule == "hard":
        wr = torch.where(hs > ht, high, low)
        wf = torch.where(ht > hs, high, low)
    else:
        wr = low + (high - low) * torch.sigmoid(k * (hs - ht))
        wf = low + (high - low) * torch.sigmoid(k * (ht - hs))
    return tau**2 * (wf * kl(p, q) + wr * kl(q, p)).mean()


CASES = {
    "kd": (lambda s, t: L.kd_loss(s, t), lambda s, t: ref_kd(s, t)),
    "kd_T2": (lambda s, t: L.kd_loss(s, t, temperature=2.0), lambda s, t: ref_kd(s, t, 2.0)),
    "dkd": (lambda s, t: L.dkd_loss(s, t, Y), lambda s, t: ref_dkd(s, t, Y)),
    "dkd_a2_b6_T3": (
        lambda s, t: L.dkd_loss(s, t, Y, alpha=2.0, beta=6.0, temperature=3.0),
        lambda s, t: ref_dkd(s, t, Y, 2.0, 6.0, 3.0),
    ),
    "nkd": (lambda s, t: L.nkd_loss(s, t, Y), lambda s, t: ref_nkd(s, t, Y)),
    "nkd_cifar": (
        lambda s, t: L.nkd_loss(s, t, Y, temperature=3.0, gamma=3.5),
        lambda s, t: ref_nkd(s, t, Y, 3.0, 3.5),
    ),
    "bdd": (lambda s, t: L.bdd_loss(s, t), lambda s, t: ref_bdd(s, t)),
    "bdd_mixed": (
        lambda s, t: L.bdd_loss(
            s,
            t,
            forward_temperature=2.0,
            reverse_temperature=5.0,
            forward_weight=0.5,
            reverse_weight=2.0,
        ),
        lambda s, t: ref_bdd(s, t, 2.0, 5.0, 0.5, 2.0),
    ),
    "abkd": (
        lambda s, t: L.abkd_loss(s, t, alpha=0.8, beta=0.3),
        lambda s, t: ref_abkd(s, t, 0.8, 0.3),
    ),
    "abkd_T1": (
        lambda s, t: L.abkd_loss(s, t, alpha=0.5, beta=0.6, temperature=1.0),
        lambda s, t: ref_abkd(s, t, 0.5, 0.6, 1.0),
    ),
    "dist": (lambda s, t: L.dist_loss(s, t), lambda s, t: ref_dist(s, t)),
    "dist_b2_g3": (
        lambda s, t: L.dist_loss(s, t, beta=2.0, gamma=3.0, temperature=1.0),
        lambda s, t: ref_dist(s, t, 2.0, 3.0, 1.0),
    ),
    "bdkd_hard": (lambda s, t: L.bdkd_student_loss(s, t), lambda s, t: ref_bdkd(s, t)),
    "bdkd_hard_T4": (
        lambda s, t: L.bdkd_student_loss(s, t, temperature=4.0),
        lambda s, t: ref_bdkd(s, t, 4.0),
    ),
    "bdkd_soft": (
        lambda s, t: L.bdkd_student_loss(s, t, rule="soft", sharpness=2.0),
        lambda s, t: ref_bdkd(s, t, rule="soft", k=2.0),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_objective_matches_float64_reference(name):
    ours_fn, ref_fn = CASES[name]
    s = S64.float().requires_grad_()
    t = T64.float()
    ours = ours_fn(s, t)
    assert ours.dim() == 0
    s64 = S64.clone().requires_grad_()
    ref = ref_fn(s64, T64)
    torch.testing.assert_close(ours.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-4, atol=1e-6)


def test_kd_golden_value():
    # two classes, hand-computed: p = softmax([0, 0]/4) = (1/2, 1/2), q = softmax([4, 0]/4)
    s = torch.tensor([[4.0, 0.0]])
    t = torch.tensor([[0.0, 0.0]])
    q1 = 1 / (1 + math.exp(-1.0))
    expected = 16 * (0.5 * math.log(0.5 / q1) + 0.5 * math.log(0.5 / (1 - q1)))
    assert math.isclose(L.kd_loss(s, t).item(), expected, rel_tol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        L.kd_loss,
        L.bdd_loss,
        lambda s, t: L.abkd_loss(s, t, alpha=0.8, beta=0.3),
        lambda s, t: L.bdkd_student_loss(s, t, temperature=2.0),
    ],
)
def test_identical_teacher_gives_zero(fn):
    z = S64.float()
    assert abs(fn(z, z.clone()).item()) < 1e-6


def test_dkd_with_beta_zero_is_the_target_class_term_alone():
    tau = 4.0
    value = L.dkd_loss(S64, T64, Y, alpha=1.0, beta=0.0, temperature=tau)
    ps, pt = softmax(S64, tau), softmax(T64, tau)
    idx = torch.arange(N)
    bs = torch.stack([ps[idx, Y], 1 - ps[idx, Y]], -1)
    bt = torch.stack([pt[idx, Y], 1 - pt[idx, Y]], -1)
    torch.testing.assert_close(value.double(), tau**2 * kl(bt, bs).mean(), rtol=1e-6, atol=1e-8)


def test_dkd_removes_the_target_exactly():
    # a huge target logit does not leak into the non-target distribution
    s = S64.clone()
    s[torch.arange(N), Y] = 1e4
    t = T64.clone()
    t[torch.arange(N), Y] = -1e4
    nckd_only = L.dkd_loss(s, t, Y, alpha=0.0, beta=1.0, temperature=4.0)
    expected = 16 * kl(softmax(drop(t, Y), 4.0), softmax(drop(s, Y), 4.0)).mean()
    torch.testing.assert_close(nckd_only.double(), expected, rtol=1e-5, atol=1e-7)


def test_bdkd_with_equal_weights_is_scaled_fkl_plus_rkl():
    tau = 3.0
    for rule in ("hard", "soft"):
        value = L.bdkd_student_loss(S64, T64, temperature=tau, rule=rule, high=2.0, low=2.0)
        p, q = softmax(T64, tau), softmax(S64, tau)
        expected = tau**2 * 2.0 * (kl(p, q) + kl(q, p)).mean()
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)


def test_bdkd_hard_rule_favours_reverse_kl_exactly_where_student_entropy_is_higher():
    s, t = S64.float(), T64.float()
    _, w = L.bdkd_student_loss(s, t, temperature=2.0, return_weights=True)
    hs = entropy(softmax(S64, 2.0))
    ht = entropy(softmax(T64, 2.0))
    assert ((hs > ht) == (w["reverse"] > w["forward"])).all()
    assert ((hs < ht) == (w["forward"] > w["reverse"])).all()
    assert set(w["reverse"].tolist()) <= {1.0, 3.0}
    # both directions occur on these logits, so the test is not vacuous
    assert (hs > ht).any() and (hs < ht).any()


def test_bdkd_soft_rule_weights_lie_between_low_and_high():
    _, w = L.bdkd_student_loss(S64, T64, rule="soft", return_weights=True)
    for v in w.values():
        assert ((v > 1.0) & (v < 3.0)).all()
    torch.testing.assert_close(
        w["forward"] + w["reverse"], torch.full((N,), 4.0, dtype=torch.float64)
    )


def test_logit_standardization():
    z = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]], dtype=torch.float16)
    out = L.standardize_logits(z)
    assert out.dtype == torch.float32
    # the reference's sample (Bessel) standard deviation, plus 1e-7, computed by hand
    for row, got in zip(z.double().tolist(), out.tolist(), strict=True):
        mean = sum(row) / len(row)
        std = (sum((v - mean) ** 2 for v in row) / (len(row) - 1)) ** 0.5
        assert got == pytest.approx([(v - mean) / (std + 1e-7) for v in row], abs=1e-5)
    torch.testing.assert_close(out.std(-1), torch.ones(2), atol=1e-5, rtol=0)
    # invariant to shifting and scaling each row
    torch.testing.assert_close(L.standardize_logits(z.float() * 3 + 7), out, atol=1e-5, rtol=0)


def _zipf_reference(aux, student, target, ranking):
    """Zipf labels by explicit loops: rank every class by the reference score (or the
    auxiliary logit), drop the target, weights 1/rank normalised."""
    rows = []
    for a, s, k in zip(aux.tolist(), student.tolist(), target.tolist(), strict=True):
        if ranking == "reference":
            za, zs = sum(math.exp(v) for v in a), sum(math.exp(v) for v in s)
            w = [math.exp(v) / za for v in a]
            log_s = [v - math.log(zs) for v in s]
            score = [w[i] / (1 - w[k]) + log_s[i] / (1 - log_s[k]) for i in range(len(a))]
        else:
            score = list(a)
        others = [i for i in range(len(a)) if i != k]
        order = sorted(others, key=lambda i: -score[i])
        weight = {i: 1.0 / (order.index(i) + 1) for i in others}
        total = sum(weight.values())
        rows.append([weight[i] / total for i in others])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("ranking", ["reference", "aux"])
def test_uskd_terms_match_reference(ranking):
    s = S64.float().requires_grad_()
    aux = T64.float().requires_grad_()
    terms = L.uskd_terms(s, aux, Y, alpha=0.1, beta=0.1, mu=0.1, ranking=ranking)
    # reference
    ps = softmax(S64)
    sy = ps[torch.arange(N), Y]
    soft = sy**2 + 1 - (sy**2).mean()
    l_t = -(soft * ps[torch.arange(N), Y].log()).mean()
    zipf = _zipf_reference(T64, S64, Y, ranking)
    l_non = -(zipf * softmax(drop(S64, Y)).log()).sum(-1).mean()
    target = torch.full((N, C), 0.1 / C, dtype=torch.float64)
    target[torch.arange(N), Y] += 0.9
    l_weak = -(target * torch.log_softmax(T64, -1)).sum(-1).mean()
    torch.testing.assert_close(terms["target"].double(), 0.1 * l_t, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["non_target"].double(), 0.1 * l_non, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(terms["weak"].double(), 0.1 * l_weak, rtol=1e-5, atol=1e-7)
    total = L.uskd_loss(s, aux, Y, alpha=0.1, beta=0.1, mu=0.1, ranking=ranking)
    torch.testing.assert_close(total, sum(terms.values()))
    total.backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(aux.grad).all()


def test_zipf_labels_follow_the_auxiliary_ranking():
    aux = torch.tensor([[0.0, 5.0, 1.0, 3.0]])
    zipf = L.zipf_non_target(aux, torch.tensor([1]), ranking="aux")  # non-target 0, 2, 3
    raw = torch.tensor([1 / 3, 1 / 2, 1.0])
    torch.testing.assert_close(zipf[0], raw / raw.sum())


def test_zipf_reference_ranking_differs_from_the_paper_wording():
    # The auxiliary head prefers class 3 over class 2, the student strongly prefers 2: the
    # reference score (which adds the student's log-probabilities) puts 2 first.
    aux = torch.tensor([[0.0, 5.0, 1.0, 1.2]])
    student = torch.tensor([[-6.0, 4.0, 3.0, -6.0]])
    target = torch.tensor([1])
    ref = L.zipf_non_target(aux, target, student, ranking="reference")
    torch.testing.assert_close(ref, _zipf_reference(aux, student, target, "reference").float())
    assert ref[0].argmax() == 1  # class 2 ranks first
    assert L.zipf_non_target(aux, target, ranking="aux")[0].argmax() == 2  # class 3 first
    with pytest.raises(ValueError, match="needs the student's logits"):
        L.zipf_non_target(aux, target)


# --------------------------------------------------------------------------- extremes, errors


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_gradients_at_extreme_logits(name, dtype):
    g = torch.Generator().manual_seed(3)
    shape = (N, C, 3, 2) if OBJECTIVES[name].spatial else (N, C)
    s = (torch.randint(-1, 2, shape, generator=g) * 1e4).to(dtype).requires_grad_()
    t = (torch.randint(-1, 2, shape, generator=g) * 1e4).to(dtype)
    kwargs = {"alpha": 0.8, "beta": 0.3} if name in ("abkd", "ab_divergence") else {}
    value = get_objective(name)(s, t, Y, **kwargs)
    assert torch.isfinite(value), name
    value.backward()
    assert torch.isfinite(s.grad).all(), name


def test_uskd_finite_at_extreme_logits():
    s = (torch.randint(-1, 2, (N, C), generator=torch.Generator().manual_seed(4)) * 1e4).float()
    s.requires_grad_()
    aux = torch.randn(N, C, requires_grad=True)
    L.uskd_loss(s, aux, Y).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(aux.grad).all()


def test_errors_are_clear():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"target class indices must lie in \[0, 3\]"):
        L.dkd_loss(s, t, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="target must have shape"):
        L.nkd_loss(s, t, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer class indices"):
        L.nkd_loss(s, t, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="rule must be one of"):
        L.bdkd_student_loss(s, t, rule="medium")
    with pytest.raises(ValueError, match="same shape"):
        L.dist_loss(s, torch.randn(3, 5))
    with pytest.raises(TypeError, match="alpha is required by objective 'abkd'"):
        get_objective("abkd")(s, t, None)
    with pytest.raises(TypeError, match="temprature is not a hyper-parameter"):
        get_objective("kd")(s, t, None, temprature=2.0)
    with pytest.raises(ValueError, match="unknown objective 'kdd'"):
        get_objective("kdd")


def test_registry_describes_objectives():
    assert OBJECTIVES["dkd"].needs_target and OBJECTIVES["dkd"].warmup_epochs == 20
    assert not OBJECTIVES["kd"].needs_target
    assert OBJECTIVES["kd"].defaults == {"temperature": 4.0}
    assert OBJECTIVES["abkd"].required == ("alpha", "beta")
