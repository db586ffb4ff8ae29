"""Distillers: the contract, detached targets, and that training reduces their loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bdkd.distillers import (
    DISTILLERS,
    BDKDDistiller,
    Distiller,
    OfflineDistiller,
    available_methods,
    create_distiller,
    feature_use,
)
from bdkd.losses.registry import OBJECTIVES
from bdkd.models.taps import attach_taps


class TinyNet(nn.Module):
    """A two-layer MLP exposing the feature contract of bdkd.models."""

    def __init__(self, width: int, num_classes: int = 3, in_dim: int = 4):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)
        self.feature_dim, self.num_classes = width, num_classes

    def forward_with_features(self, x):
        feature = self.body(x)
        return feature, self.head(feature)

    def forward(self, x):
        return self.head(self.body(x))


def separable_problem(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centers = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    x = centers[y] + 0.5 * torch.randn(n, 4, generator=g)
    return x, y


def networks(seed=0, count=2):
    torch.manual_seed(seed)
    if count == 2:
        return {"teacher": TinyNet(32), "student": TinyNet(8)}
    return {f"peer{i}": TinyNet(32 // (2**i)) for i in range(count)}


HPARAMS = {"abkd": {"alpha": 0.8, "beta": 0.3}}


ROW_METHODS = [m for m in available_methods() if not (m in OBJECTIVES and OBJECTIVES[m].spatial)]


def tapped_networks(method: str) -> dict[str, nn.Module]:
    """TinyNets with feature taps for a feature method: the hidden layer (its embedding
    for the embedding methods, ``head:in``); ReviewKD reads both."""
    nets = networks()
    use = feature_use(method)
    if use is not None:
        names = {"embedding": ["head:in"], "review": ["body", "head:in"]}.get(use, ["body"])
        for net in nets.values():
            net.tap_shapes = attach_taps(net, names, torch.zeros(2, 4))
    return nets


# AT needs (N, C, H, W) maps; tests/test_feature_kd.py trains it on CNNs
ROW_METHODS = [m for m in ROW_METHODS if m != "at"]


@pytest.mark.parametrize("method", ROW_METHODS)
def test_a_few_steps_reduce_the_training_loss(method):
    x, y = separable_problem()
    hparams = {**HPARAMS.get(method, {}), **({"nce_k": 32} if method == "crd" else {})}
    distiller = create_distiller(method, tapped_networks(method), num_samples=len(y), **hparams)
    distiller.prepare([(x, y)])
    distiller.train()
    optimizers = {
        name: torch.optim.SGD(params, lr=0.1, momentum=0.9)
        for name, params in distiller.parameter_groups().items()
    }
    extra = {"index": torch.arange(len(y))} if distiller.uses_index else {}

    def loss_now():
        with torch.no_grad():
            return distiller(x, y, epoch=30, **extra).total().item()

    before = loss_now()
    for _ in range(30):
        out = distiller(x, y, epoch=30, **extra)
        for opt in optimizers.values():
            opt.zero_grad()
        out.total().backward()
        for opt in optimizers.values():
            opt.step()
    after = loss_now()
    assert after < 0.7 * before, (method, before, after)
    # every term is a finite scalar
    for name, value in out.flat_terms().items():
        assert value.dim() == 0 and torch.isfinite(value), name


def test_offline_teacher_is_frozen_and_in_eval_mode():
    nets = networks()
    nets["teacher"].body.append(nn.Dropout(0.5))
    distiller = create_distiller("kd", nets)
    distiller.train()
    assert distiller.trainable == ("student",) and distiller.deployed == "student"
    assert not distiller.networks["teacher"].training
    assert distiller.networks["student"].training
    assert all(not p.requires_grad for p in distiller.networks["teacher"].parameters())
    assert set(distiller.parameter_groups()) == {"student"}
    x, y = separable_problem(12)
    out = distiller(x, y)
    assert not out.logits["teacher"].requires_grad
    out.total().backward()
    assert all(p.grad is None for p in distiller.networks["teacher"].parameters())


@pytest.mark.parametrize("method", ["dml", "kdcl", "bdkd"])
def test_online_targets_are_detached(method):
    """Each network's distillation term sends gradients into that network only."""
    distiller = create_distiller(method, networks())
    x, y = separable_problem(12)
    out = distiller(x, y)
    assert set(distiller.parameter_groups()) == {"teacher", "student"}
    for learner, terms in out.losses.items():
        for term, value in terms.items():
            if term == "ce":
                continue
            distiller.zero_grad()
            value.backward(retain_graph=True)
            for name, net in distiller.networks.items():
                touched = any(
                    p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()
                )
                assert touched == (name == learner), (method, learner, term, name)


def test_bdkd_terms_and_teacher_divergence_option():
    x, y = separable_problem(12)
    d = create_distiller("bdkd", networks())
    out = d(x, y)
    assert set(out.losses["student"]) == {"ce", "bdkd"}
    assert set(out.losses["teacher"]) == {"ce", "reverse_kl"}
    assert d.deployed == "student" and d.order == ["teacher", "student"]
    # the diagnostic is the fraction of rows whose reverse weight is the larger one
    from bdkd.losses import bdkd_weights

    w_f, w_r = bdkd_weights(out.logits["student"], out.logits["teacher"])
    expected = (w_r > w_f).float().mean()
    torch.testing.assert_close(out.diagnostics["student/reverse_heavier"], expected)
    # the teacher's default term is KL(q || p): the teacher learns towards the student
    from bdkd.divergences import forward_kl, reverse_kl

    s, t = out.logits["student"], out.logits["teacher"]
    torch.testing.assert_close(out.losses["teacher"]["reverse_kl"], forward_kl(t, s.detach()))
    alt = create_distiller("bdkd", networks(), teacher_divergence="forward_kl", temperature=2.0)
    out = alt(x, y)
    s, t = out.logits["student"], out.logits["teacher"]
    torch.testing.assert_close(
        out.losses["teacher"]["forward_kl"], 4.0 * reverse_kl(t, s.detach(), temperature=2.0)
    )
    # the older spellings, named from the teacher's side, mean the same
    assert (
        create_distiller("bdkd", networks(), teacher_divergence="reverse").teacher_divergence
        == "forward_kl"
    )
    assert (
        create_distiller("bdkd", networks(), teacher_divergence="forward").teacher_divergence
        == "reverse_kl"
    )


def test_bdkd_with_three_networks_makes_each_smaller_a_student_of_each_larger():
    d = create_distiller("bdkd", networks(count=3))
    assert d.order == ["peer0", "peer1", "peer2"] and d.deployed == "peer2"
    out = d(*separable_problem(12))
    assert set(out.losses["peer0"]) == {"ce", "reverse_kl"}
    assert set(out.losses["peer1"]) == {"ce", "bdkd", "reverse_kl"}
    assert set(out.losses["peer2"]) == {"ce", "bdkd"}


def test_dml_with_k_peers_averages_over_the_others():
    from bdkd.divergences import forward_kl

    d = create_distiller("dml", networks(count=3))
    out = d(*separable_problem(12))
    z = out.logits
    expected = 0.5 * (forward_kl(z["peer0"], z["peer1"]) + forward_kl(z["peer0"], z["peer2"]))
    torch.testing.assert_close(out.losses["peer0"]["kl"], expected)
    assert d.deployed == "peer2"


def test_kdcl_min_logit_ensemble():
    d = create_distiller("kdcl", networks(), ensemble="min_logit")
    logits = {"a": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([[2.0, 1.0]])}
    target = d.ensemble_logits(logits, torch.tensor([0]))
    torch.testing.assert_close(target, torch.tensor([[0.0, -1.0]]))


def test_dkd_warmup_scales_the_distillation_term():
    d = create_distiller("dkd", networks())
    assert isinstance(d, OfflineDistiller) and d.warmup_epochs == 20
    x, y = separable_problem(12)
    first = d(x, y, epoch=0).losses["student"]["dkd"]
    late = d(x, y, epoch=25).losses["student"]["dkd"]
    torch.testing.assert_close(first * 20, late)


def test_logit_standardization_option_changes_the_objective_inputs():
    x, y = separable_problem(12)
    plain = create_distiller("kd", networks(), temperature=2.0)
    std = create_distiller("kd", networks(), temperature=2.0, logit_standardization=True)
    a = plain(x, y).losses["student"]
    b = std(x, y).losses["student"]
    torch.testing.assert_close(a["ce"], b["ce"])
    assert not torch.allclose(a["kd"], b["kd"])


def test_uskd_head_trains_with_the_student():
    d = create_distiller("uskd", {"student": TinyNet(8)})
    groups = d.parameter_groups()
    head = set(map(id, d.aux_head.parameters()))
    assert head <= set(map(id, groups["student"]))
    assert set(d.networks) == {"student"}
    with pytest.raises(TypeError, match="forward_with_features"):
        create_distiller("uskd", {"student": nn.Linear(4, 3)}, feature_dim=4, num_classes=3)(
            torch.randn(2, 4), torch.tensor([0, 1])
        )


def test_creation_errors_are_clear():
    with pytest.raises(ValueError, match="unknown method 'kdd'"):
        create_distiller("kdd", networks())
    with pytest.raises(ValueError, match="temprature is not a hyper-parameter.*did you mean"):
        create_distiller("bdkd", networks(), temprature=2.0)
    with pytest.raises(ValueError, match="alpha is required"):
        create_distiller("abkd", networks())
    with pytest.raises(ValueError, match="needs networks 'teacher' and 'student'"):
        create_distiller("kd", {"student": TinyNet(4)})
    with pytest.raises(ValueError, match="at least 2 networks"):
        create_distiller("dml", {"student": TinyNet(4)})
    with pytest.raises(ValueError, match="teacher_divergence"):
        create_distiller("bdkd", networks(), teacher_divergence="sideways")


def test_registry_has_every_method():
    assert {"offline", "scratch", "dml", "kdcl", "bdkd", "uskd"} <= set(DISTILLERS)
    assert {"kd", "dkd", "nkd", "bdd", "abkd", "dist"} <= set(available_methods())
    assert issubclass(BDKDDistiller, Distiller)
