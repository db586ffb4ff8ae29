"""Paired comparisons over seeds: mean difference, 95 % t interval, two-sided p, Holm.

Two methods run on the same seed share the data split, the order of the batches and the
seed of every initialisation, so their difference on that seed is one paired observation.
With n seeds the mean difference d and its sample std s give the t statistic
``d / (s / sqrt(n))`` with n - 1 degrees of freedom (a paired t-test), the interval
``d ± t_{0.975, n-1} s / sqrt(n)`` and the two-sided p-value. Holm's step-down correction
adjusts a family of p-values (one metric, every baseline against one method).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _scipy


@dataclass(frozen=True)
class Paired:
    """``a - b`` over paired seeds."""

    n: int
    mean: float
    low: float
    high: float
    p: float

    def text(self, digits: int = 2, p_adjusted: float | None = None) -> str:
        p = self.p if p_adjusted is None else p_adjusted
        return (
            f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}], "
            f"p {format_p(p)}"
        )


def format_p(p: float) -> str:
    if math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def paired(a: Sequence[float], b: Sequence[float]) -> Paired:
    """Paired t-test of ``a - b`` (same length, same seed order)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need two paired samples of equal length >= 2, got {len(a)}, {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = statistics.mean(d)
    sd = statistics.stdev(d)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return Paired(n, mean, mean, mean, p)
    se = sd / math.sqrt(n)
    q = float(_scipy.t.ppf(0.975, n - 1))
    p = float(2 * _scipy.t.sf(abs(mean / se), n - 1))
    return Paired(n, mean, mean - q * se, mean + q * se, p)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
