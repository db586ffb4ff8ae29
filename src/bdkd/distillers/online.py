"""Online distillation: every network trains at once, one step on the same batch.

Each network has its own optimizer; every target taken from another network is detached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated

import torch
from torch import Tensor, nn

from bdkd.distillers.base import (
    Distiller,
    DistillerOutput,
    RowLayout,
    default_deployed,
    register_distiller,
)
from bdkd.hparams import NonNegative, Positive, Range
from bdkd.losses import get_objective

KD = get_objective("kd").fn
"""``T^2 mean KL(p^T || q^T)`` of the target ``p`` (second argument) and ``q``."""
REVERSE_KD = get_objective("reverse_kd").fn
BDKD_STUDENT = get_objective("bdkd_student").fn


def _need_networks(method: str, networks: Mapping[str, nn.Module], count: int = 2) -> list[str]:
    names = list(networks)
    if len(names) < count:
        raise ValueError(f"{method} needs at least {count} networks, got {names}")
    return names


def _size_order(networks: Mapping[str, nn.Module], order: Sequence[str] | None) -> list[str]:
    """Network names from largest to smallest (by parameter count unless ``order`` is given)."""
    if order is not None:
        if sorted(order) != sorted(networks):
            raise ValueError(
                f"order must list every network once: {sorted(networks)}, got {list(order)}"
            )
        return list(order)
    sizes = {n: sum(p.numel() for p in m.parameters()) for n, m in networks.items()}
    return sorted(networks, key=lambda n: -sizes[n])


@register_distiller("dml")
class DMLDistiller(Distiller):
    """Deep Mutual Learning (Zhang et al., CVPR 2018).

    Network i minimises ``CE(y, q_i) + kl_weight T^2 / (K - 1) sum_{j != i} KL(q_j^T || q_i^T)``,
    every ``q_j`` detached. The paper uses T = 1.
    """

    kind = "online"

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        temperature: Positive = 1.0,
        kl_weight: NonNegative = 1.0,
        ce_weight: NonNegative = 1.0,
        deployed: str | None = None,
        layout: RowLayout | None = None,
    ) -> None:
        names = _need_networks("DML", networks)
        super().__init__(
            networks,
            trainable=tuple(names),
            deployed=default_deployed(names, deployed),
            layout=layout,
        )
        self.temperature, self.kl_weight, self.ce_weight = temperature, kl_weight, ce_weight

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        logits = self.run_networks(inputs, cached)
        rows, y = self.as_rows(logits, labels)
        losses = {}
        for name, z in rows.items():
            others = [rows[o].detach() for o in rows if o != name]
            kl = sum(KD(z, target, temperature=self.temperature) for target in others)
            losses[name] = {
                "ce": self.ce_weight * self.cross_entropy(z, y),
                "kl": self.kl_weight * kl / len(others),
            }
        return DistillerOutput(logits=logits, losses=losses)


ENSEMBLES = ("mean", "min_logit")


@register_distiller("kdcl")
class KDCLDistiller(Distiller):
    """Knowledge distillation via collaborative learning (Guo et al., CVPR 2020).

    The peers' logits form an ensemble target (``mean``: the naive average; ``min_logit``:
    each network's logits minus its target logit, then the elementwise minimum), detached;
    each peer minimises ``CE + kd_weight T^2 KL(p_ens^T || q_i^T)``. KDCL's learned
    ensemble weights are not implemented. T = 2 is this library's default (the paper's
    value could not be read).
    """

    kind = "online"

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        temperature: Positive = 2.0,
        kd_weight: NonNegative = 1.0,
        ce_weight: NonNegative = 1.0,
        ensemble: Annotated[str, Range(choices=ENSEMBLES)] = "mean",
        deployed: str | None = None,
        layout: RowLayout | None = None,
    ) -> None:
        names = _need_networks("KDCL", networks)
        if ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
        super().__init__(
            networks,
            trainable=tuple(names),
            deployed=default_deployed(names, deployed),
            layout=layout,
        )
        self.temperature, self.kd_weight, self.ce_weight = temperature, kd_weight, ce_weight
        self.ensemble = ensemble

    def ensemble_logits(self, logits: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """The detached ensemble target's logits."""
        stacked = torch.stack([z.detach().float() for z in logits.values()])
        if self.ensemble == "mean":
            return stacked.mean(0)
        target_logit = stacked.gather(2, labels.view(1, -1, 1).expand(stacked.shape[0], -1, 1))
        return (stacked - target_logit).min(0).values

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        logits = self.run_networks(inputs, cached)
        rows, y = self.as_rows(logits, labels)
        target = self.ensemble_logits(rows, y)
        losses = {
            name: {
                "ce": self.ce_weight * self.cross_entropy(z, y),
                "kd": self.kd_weight * KD(z, target, temperature=self.temperature),
            }
            for name, z in rows.items()
        }
        return DistillerOutput(logits=logits, losses=losses)


TEACHER_DIVERGENCES = ("reverse_kl", "forward_kl")
# earlier spellings, named from the teacher's side: "forward" is KL(q || p), "reverse" KL(p || q)
_OLD_TEACHER_DIVERGENCES = {"forward": "reverse_kl", "reverse": "forward_kl"}


@register_distiller("bdkd")
class BDKDDistiller(Distiller):
    """BD-KD: online KD whose student balances forward and reverse KL per sample.

    Student: ``CE(y, q) + lam T^2 mean_n [w_f(n) KL(p||q) + w_r(n) KL(q||p)]`` with the
    entropy-gap weights of :func:`bdkd.losses.bdkd_student_loss` (teacher detached).
    Teacher: ``CE(y, p) + lam_t T^2 mean KL(q || p)`` (``teacher_divergence="reverse_kl"``,
    the default: DML's term, student detached) or ``KL(p || q)`` (``"forward_kl"``), named in
    the pair's orientation (p the teacher, q the student) and logged under that name. The
    older spellings ``"forward"`` (= ``"reverse_kl"``) and ``"reverse"`` (= ``"forward_kl"``)
    are still accepted. With more than two networks, ordered largest to smallest (``order``,
    else by parameter count), each smaller network is a student of each larger one and terms
    are averaged over partners. The teacher term and the weights are a reconstruction (see
    docs/methods.md).
    """

    kind = "online"

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        temperature: Positive = 1.0,
        student_weight: NonNegative = 1.0,
        teacher_weight: NonNegative = 1.0,
        ce_weight: NonNegative = 1.0,
        rule: Annotated[str, Range(choices=("hard", "soft"))] = "hard",
        high: NonNegative = 3.0,
        low: NonNegative = 1.0,
        sharpness: Positive = 1.0,
        teacher_divergence: Annotated[
            str, Range(choices=(*TEACHER_DIVERGENCES, *_OLD_TEACHER_DIVERGENCES))
        ] = "reverse_kl",
        order: Sequence[str] | None = None,
        deployed: str | None = None,
        layout: RowLayout | None = None,
    ) -> None:
        _need_networks("BD-KD", networks)
        teacher_divergence = _OLD_TEACHER_DIVERGENCES.get(teacher_divergence, teacher_divergence)
        if teacher_divergence not in TEACHER_DIVERGENCES:
            raise ValueError(
                f"teacher_divergence must be one of {TEACHER_DIVERGENCES}, got {teacher_divergence!r}"
            )
        ranked = _size_order(networks, order)
        super().__init__(
            networks,
            trainable=tuple(ranked),
            deployed=deployed if deployed is not None else ranked[-1],
            layout=layout,
        )
        self.order = ranked
        self.temperature = temperature
        self.student_weight, self.teacher_weight, self.ce_weight = (
            student_weight,
            teacher_weight,
            ce_weight,
        )
        self.balance = {"rule": rule, "high": high, "low": low, "sharpness": sharpness}
        if rule not in ("hard", "soft"):
            raise ValueError(f"rule must be 'hard' or 'soft', got {rule!r}")
        self.teacher_divergence = teacher_divergence

    def forward(
        self,
        inputs: Tensor,
        labels: Tensor,
        epoch: int = 0,
        cached: Mapping[str, Tensor] | None = None,
    ) -> DistillerOutput:
        logits = self.run_networks(inputs, cached)
        rows, y = self.as_rows(logits, labels)
        t = self.temperature
        teacher_term = self.teacher_divergence
        losses = {n: {"ce": self.ce_weight * self.cross_entropy(rows[n], y)} for n in self.order}
        diagnostics = {}
        for i, name in enumerate(self.order):
            z = rows[name]
            larger, smaller = self.order[:i], self.order[i + 1 :]
            if larger:
                parts = []
                for big in larger:
                    loss, weights = BDKD_STUDENT(
                        z, rows[big].detach(), temperature=t, return_weights=True, **self.balance
                    )
                    parts.append(loss)
                    diagnostics[f"{name}/reverse_heavier"] = (
                        (weights["reverse"] > weights["forward"]).float().mean()
                    )
                losses[name]["bdkd"] = self.student_weight * sum(parts) / len(parts)
            if smaller:
                parts = []
                for small in smaller:
                    # p = this (larger) network, q = the smaller one, detached
                    q = rows[small].detach()
                    term = KD if self.teacher_divergence == "reverse_kl" else REVERSE_KD
                    parts.append(term(z, q, temperature=t))  # KL(q || p), or KL(p || q)
                losses[name][teacher_term] = self.teacher_weight * sum(parts) / len(parts)
        return DistillerOutput(logits=logits, losses=losses, diagnostics=diagnostics)
