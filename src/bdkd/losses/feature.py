"""Feature and relational distillation losses: pure functions of the two networks' features.

Each is written from its paper; where the reference code (RepDistiller / mdistiller, the
code the CRD-protocol tables come from) differs from the paper's words, the reference
code's choice is the default and the paper's an option. Features arrive already matched in
shape where a method needs it (the distiller owns the connectors and the resizing); the
teacher's side carries no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from bdkd.hparams import Range

__all__ = [
    "AT_FORMS",
    "at_loss",
    "attention_map",
    "crd_nce_loss",
    "hcl_loss",
    "hint_loss",
    "nd_loss",
    "pairwise_distances",
    "pkt_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sp_loss",
]

AT_FORMS = ("reference", "paper")


def hint_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """FitNet's hint (Romero et al., ICLR 2015): ``mean((r(s) - t)^2)`` with ``r`` the
    connector already applied to the student's feature."""
    return F.mse_loss(student.float(), teacher.float())


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """AT's spatial attention: ``normalize(mean_c |f_c|^p)`` flattened to (N, H*W)."""
    return F.normalize(feature.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    p: Annotated[float, Range(gt=0)] = 2.0,
    form: Annotated[str, Range(choices=AT_FORMS)] = "reference",
) -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) between two (N, C, H, W) maps of
    equal H, W. ``reference``: ``mean((Q_s - Q_t)^2)`` over batch and positions (the
    reference code); ``paper``: ``mean_n ||Q_s - Q_t||_2 / 2`` (the paper's eq. 2 with the
    p = 2 norm, β applied outside)."""
    diff = attention_map(student, p) - attention_map(teacher, p)
    if form == "paper":
        return diff.norm(dim=1).mean() / 2
    return diff.pow(2).mean()


def sp_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ``||G_s - G_t||_F^2 / N^2`` with
    ``G = rownorm(f f^T)`` the (N, N) similarity of the flattened features."""
    n = student.shape[0]
    gs = F.normalize(student.float().flatten(1) @ student.float().flatten(1).T, dim=1)
    gt = F.normalize(teacher.float().flatten(1) @ teacher.float().flatten(1).T, dim=1)
    return (gs - gt).pow(2).sum() / (n * n)


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distances between the rows of ``e`` (N, D), zero on the diagonal."""
    sq = e.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * e @ e.T).clamp(min=eps)
    off = 1 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype)
    return d2.sqrt() * off


def _normalised_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    positive = d[d > 0]
    scale = positive.mean() if positive.numel() else d.new_ones(())
    return d / scale


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-D (Park et al., CVPR 2019): Huber loss between the pairwise distances of the
    embeddings, each normalised by its mean non-zero distance."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    return F.smooth_l1_loss(_normalised_distances(s), _normalised_distances(t))


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # [i, j] = e_j - e_i
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cos of angle j-i-k


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-A: Huber loss between the cosines of every angle ``e_j - e_i - e_k``."""
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    return F.smooth_l1_loss(_angles(s), _angles(t))


def _pkt_probabilities(e: Tensor, eps: float) -> Tensor:
    e = e / (e.norm(dim=1, keepdim=True) + eps)
    sim = (e @ e.T + 1) / 2
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(student: Tensor, teacher: Tensor, *, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the cosine kernel
    ``(cos + 1) / 2`` of each network's embeddings, row-normalised to conditional
    probabilities, compared by ``mean(P_t log((P_t + eps) / (P_s + eps)))`` over all pairs."""
    ps = _pkt_probabilities(student.float().flatten(1), eps)
    pt = _pkt_probabilities(teacher.float().flatten(1), eps)
    return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def nd_loss(student: Tensor, teacher: Tensor, centers: Tensor, labels: Tensor) -> Tensor:
    """ND (Wang et al., "Improving KD via Regularizing Feature Norm and Direction", 2023):
    ``mean_i [1 - <s_i, c_y / ||c_y||> / max(||s_i||, ||t_i||)]`` with ``c_y`` the teacher's
    mean embedding of sample i's class: pulls the student's embedding towards the class-mean
    direction and its projection up to the larger of the two norms."""
    s, t = student.float(), teacher.float()
    direction = F.normalize(centers.float()[labels], dim=1)
    scale = torch.maximum(s.norm(dim=1), t.norm(dim=1)).clamp(min=1e-12)
    return (1 - (s * direction).sum(1) / scale).mean()


def hcl_loss(
    students: Sequence[Tensor], teachers: Sequence[Tensor], levels: Sequence[int] = (4, 2, 1)
) -> Tensor:
    """ReviewKD's hierarchical context loss (Chen et al., CVPR 2021): per feature pair, the
    MSE at full size plus at each pooled size in ``levels`` smaller than the map, weighted
    1, 1/2, 1/4, ... and divided by the sum of the weights; summed over pairs."""
    total = students[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(students, teachers, strict=True):
        fs, ft = fs.float(), ft.float()
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in levels:
            if level >= fs.shape[-1]:
                continue
            weight /= 2
            pooled = F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level)
            loss = loss + weight * F.mse_loss(*pooled)
            weights += weight
        total = total + loss / weights
    return total


def crd_nce_loss(scores: Tensor, num_samples: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE objective (Tian et al., ICLR 2020), as the reference code computes it:
    ``scores`` (N, K + 1) are ``exp(<v, m> / τ) / Z`` with the positive first and K noise
    samples drawn uniformly (``P_n = 1 / num_samples``);
    ``-mean_i [log(P_0 / (P_0 + K P_n)) + Σ_k log(K P_n / (P_k + K P_n))]``."""
    k = scores.shape[1] - 1
    noise = k / num_samples
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
    negative = torch.log(noise / (scores[:, 1:] + noise + eps)).sum(1)
    return -(positive + negative).mean()
