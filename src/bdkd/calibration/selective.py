"""Selective prediction: when to answer and when to abstain (risk–coverage).

A classifier that abstains below a confidence threshold ``t`` answers on the *coverage*
``|{i : conf_i >= t}| / n`` of the samples, with the *selective risk* the error rate among
them. Sorting by confidence (highest first), the risk–coverage curve has one point per sample
count k = 1..n; samples of equal confidence form one group, inside which errors are spread
evenly (the expectation over every order of the tie), so the curve does not depend on how
ties happen to be ordered.

- **AURC** (Geifman et al., 2019): the mean selective risk over k = 1..n, the area under the
  risk–coverage curve; lower is better.
- **Excess AURC** (E-AURC): AURC minus the AURC of the best possible ordering of the same
  errors (every correct sample first), so it measures the confidence ranking alone.
- :func:`threshold_for_risk`: the confidence threshold chosen on a validation split as the
  lowest one (the largest coverage) whose selective risk there is at most the target; a
  device abstains below it. It is an empirical choice, not a guarantee (conformal prediction,
  :mod:`bdkd.calibration.conformal`, gives one for prediction sets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from bdkd.calibration.metrics import ArrayLike, check_probs, confidence

__all__ = [
    "ABSTAIN_ALWAYS",
    "RiskCoverage",
    "aurc",
    "excess_aurc",
    "risk_coverage",
    "risk_coverage_from",
    "selective_at",
    "selective_metrics",
    "threshold_for_risk",
]

ABSTAIN_ALWAYS = math.nextafter(1.0, 2.0)
"""The threshold that abstains on every sample (no probability reaches it)."""


@dataclass
class RiskCoverage:
    """The risk–coverage curve: for k = 1..n answered samples, coverage k/n, selective risk,
    and the confidence of the k-th most confident sample."""

    coverage: np.ndarray
    risk: np.ndarray
    confidence: np.ndarray


def _sorted_pairs(conf: Tensor, correct: Tensor) -> tuple[np.ndarray, np.ndarray]:
    c = conf.double().cpu().numpy()
    wrong = (~correct.bool()).cpu().numpy().astype(np.float64)
    order = np.argsort(-c, kind="stable")
    return c[order], wrong[order]


def _expected_errors(c: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Errors among the k most confident samples, k = 1..n, ties spread evenly."""
    n = c.shape[0]
    if n == 0:
        return np.zeros(0)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    ends = np.r_[starts[1:], n]
    group_errors = np.add.reduceat(wrong, starts)
    before = np.r_[0.0, np.cumsum(group_errors)[:-1]]
    out = np.empty(n)
    for s, e, b, g in zip(starts, ends, before, group_errors, strict=True):
        out[s:e] = b + (np.arange(1, e - s + 1)) * (g / (e - s))
    return out


def risk_coverage_from(conf: Tensor, correct: Tensor) -> RiskCoverage:
    """The curve of confidences ``conf`` (N,) and correctness ``correct`` (N,)."""
    c, wrong = _sorted_pairs(conf, correct)
    k = np.arange(1, c.shape[0] + 1, dtype=np.float64)
    errors = _expected_errors(c, wrong)
    return RiskCoverage(k / max(1, c.shape[0]), errors / k, c)


def risk_coverage(probs: ArrayLike, labels: ArrayLike) -> RiskCoverage:
    """The risk–coverage curve of predicted probabilities (N, C) against labels (N,)."""
    p, y = check_probs(probs, labels)
    return risk_coverage_from(*confidence(p, y))


def aurc(probs: ArrayLike, labels: ArrayLike) -> float:
    """Area under the risk–coverage curve (mean selective risk over k = 1..n)."""
    curve = risk_coverage(probs, labels)
    return float(curve.risk.mean()) if curve.risk.size else 0.0


def excess_aurc(probs: ArrayLike, labels: ArrayLike) -> float:
    """AURC minus that of the best ordering of the same errors (all correct samples first)."""
    p, y = check_probs(probs, labels)
    conf, correct = confidence(p, y)
    n = conf.shape[0]
    if n == 0:
        return 0.0
    errors = int((~correct.bool()).sum())
    k = np.arange(1, n + 1, dtype=np.float64)
    best = np.maximum(0.0, k - (n - errors)) / k
    return float(risk_coverage_from(conf, correct).risk.mean() - best.mean())


def selective_at(conf: Tensor, correct: Tensor, threshold: float) -> tuple[float, float | None]:
    """(coverage, selective risk) when answering only where ``conf >= threshold``; the risk
    is None when nothing is answered."""
    answered = conf.double() >= threshold
    count = int(answered.sum())
    if count == 0:
        return 0.0, None
    risk = float((~correct.bool())[answered].double().mean())
    return count / conf.shape[0], risk


def threshold_for_risk(conf: Tensor, correct: Tensor, target_risk: float) -> float:
    """The lowest confidence threshold whose selective risk on these (validation) samples is
    at most ``target_risk``; :data:`ABSTAIN_ALWAYS` when even the most confident sample's
    answer would exceed it."""
    if not 0.0 < target_risk < 1.0:
        raise ValueError(f"the target risk must be in (0, 1), got {target_risk}")
    c, wrong = _sorted_pairs(conf, correct)
    if c.size == 0:
        return ABSTAIN_ALWAYS
    ends = np.r_[np.flatnonzero(c[1:] != c[:-1]), c.size - 1]  # last index of each tie group
    errors = np.cumsum(wrong)[ends]
    risk = errors / (ends + 1)
    ok = np.flatnonzero(risk <= target_risk + 1e-12)
    if ok.size == 0:
        return ABSTAIN_ALWAYS
    return float(c[ends[ok[-1]]])


def selective_metrics(
    val_probs: Tensor,
    val_labels: Tensor,
    test_probs: Tensor,
    test_labels: Tensor,
    target_risk: float,
) -> dict[str, float | None]:
    """AURC and E-AURC on test, and the abstention threshold chosen on validation for
    ``target_risk`` with its validation and test coverage and test risk."""
    v_conf, v_correct = confidence(*check_probs(val_probs, val_labels))
    t_conf, t_correct = confidence(*check_probs(test_probs, test_labels))
    threshold = threshold_for_risk(v_conf, v_correct, target_risk)
    val_coverage, _ = selective_at(v_conf, v_correct, threshold)
    coverage, risk = selective_at(t_conf, t_correct, threshold)
    return {
        "aurc": aurc(test_probs, test_labels),
        "e_aurc": excess_aurc(test_probs, test_labels),
        "target_risk": target_risk,
        "abstain_threshold": threshold,
        "val_coverage": val_coverage,
        "test_coverage": coverage,
        "test_selective_risk": risk,
    }
