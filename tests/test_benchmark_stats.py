"""The methods benchmark's paired statistics, against scipy and hand-computed values."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "methods"))

from stats import holm, paired  # noqa: E402


def test_paired_t_matches_scipy_and_the_formula():
    from scipy import stats

    a = [85.7, 85.9, 85.6, 85.8, 86.1]
    b = [85.2, 85.4, 85.5, 84.9, 85.6]
    result = paired(a, b)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 4)
    assert result.mean == pytest.approx(mean)
    assert result.p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    half = stats.t.ppf(0.975, 4) * sd / math.sqrt(5)
    assert (result.low, result.high) == pytest.approx((mean - half, mean + half))
    assert "[+" in result.text() and "p 0.0" in result.text()


def test_identical_and_constant_differences():
    assert paired([1.0, 2.0], [1.0, 2.0]).p == 1.0
    shifted = paired([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert shifted.mean == 1.0 and shifted.p == 0.0
    with pytest.raises(ValueError, match="equal length"):
        paired([1.0], [1.0])


def test_holm_adjustment():
    # p sorted: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04), monotone
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
