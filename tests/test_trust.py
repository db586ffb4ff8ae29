"""Selective prediction and conformal sets against hand computations and their guarantees."""

from __future__ import annotations

import math

import pytest
import torch

from bdkd import calibration as cal
from bdkd.calibration.conformal import conformal_quantile, conformal_scores
from bdkd.calibration.selective import risk_coverage_from, selective_at


def probs_with(conf, correct, classes=3):
    """Probabilities whose top class has confidence ``conf``, and labels right or wrong."""
    rows, labels = [], []
    for c, ok in zip(conf, correct, strict=True):
        rest = (1 - c) / (classes - 1)
        rows.append([c] + [rest] * (classes - 1))
        labels.append(0 if ok else 1)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(labels)


def test_aurc_and_excess_aurc_by_hand():
    p, y = probs_with([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    # risks after k = 1..4 answers: 0, 1/2, 1/3, 2/4
    assert cal.aurc(p, y) == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    # best order of two errors in four: 0, 0, 1/3, 2/4
    best = (0 + 0 + 1 / 3 + 2 / 4) / 4
    assert cal.excess_aurc(p, y) == pytest.approx(cal.aurc(p, y) - best)
    perfect, yp = probs_with([0.9, 0.8, 0.4, 0.35], [1, 1, 0, 0])
    assert cal.excess_aurc(perfect, yp) == pytest.approx(0.0)


def test_tied_confidences_spread_their_errors_evenly():
    p, y = probs_with([0.9, 0.9, 0.5], [1, 0, 1])
    curve = cal.risk_coverage(p, y)
    assert curve.risk.tolist() == pytest.approx([0.5, 0.5, 1 / 3])
    swapped, ys = probs_with([0.9, 0.9, 0.5], [0, 1, 1])
    assert cal.aurc(swapped, ys) == pytest.approx(cal.aurc(p, y))  # the order of a tie


def test_the_abstention_threshold_is_the_largest_coverage_within_the_target():
    conf = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    correct = torch.tensor([True, True, False, True, False])
    # risk after each answer: 0, 0, 1/3, 1/4, 2/5
    assert cal.threshold_for_risk(conf, correct, 0.3) == pytest.approx(0.7)
    assert selective_at(conf, correct, 0.7) == (pytest.approx(4 / 5), pytest.approx(1 / 4))
    assert cal.threshold_for_risk(conf, correct, 0.01) == pytest.approx(0.9)
    never = cal.threshold_for_risk(conf, ~correct & torch.tensor([1, 1, 1, 1, 1]).bool(), 0.2)
    assert never == cal.ABSTAIN_ALWAYS and selective_at(conf, correct, never) == (0.0, None)
    with pytest.raises(ValueError, match="target risk"):
        cal.threshold_for_risk(conf, correct, 1.0)
    assert risk_coverage_from(conf, correct).coverage.tolist() == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0]
    )


def test_conformal_quantile_and_sets_by_hand():
    scores = torch.tensor([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # n = 9, alpha = 0.2: rank ceil(10 * 0.8) = 8 -> the 8th smallest score
    assert conformal_quantile(scores, 0.2) == pytest.approx(0.7)
    assert math.isinf(conformal_quantile(scores[:3], 0.1))  # too few samples for alpha
    p = torch.tensor([[0.6, 0.3, 0.1], [0.4, 0.35, 0.25]], dtype=torch.float64)
    # LAC at q = 0.7: classes with p >= 0.3
    lac = cal.prediction_sets(p, 0.7, "lac")
    assert lac.tolist() == [[True, True, False], [True, True, False]]
    # APS at q = 0.7: classes whose mass up to and including them is <= 0.7, and the top one
    aps = cal.prediction_sets(p, 0.7, "aps")
    assert aps.tolist() == [[True, False, False], [True, False, False]]
    assert cal.prediction_sets(p, 0.95, "aps").tolist() == [[True, True, False]] * 2
    y = torch.tensor([1, 2])
    assert conformal_scores(p, y, "lac").tolist() == pytest.approx([0.7, 0.75])
    assert conformal_scores(p, y, "aps").tolist() == pytest.approx([0.9, 1.0])


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_conformal_sets_cover_as_promised(method):
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(21_000, 10, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # a calibrated model
    m = cal.conformal_metrics(
        probs[:1000], labels[:1000], probs[1000:], labels[1000:], alpha=0.1, method=method
    )
    # at least 1 - alpha; LAC tight, APS above it (its sets always hold the top class)
    assert 0.88 <= m["coverage"] <= (0.93 if method == "lac" else 0.97)
    assert 1 <= m["mean_size"] < 10
    assert sum(s["count"] for s in m["strata"]) == 20_000
    with pytest.raises(ValueError, match="alpha"):
        cal.conformal_metrics(probs, labels, probs, labels, alpha=1.5)


def test_trust_metrics_are_finite_and_follow_the_temperature():
    g = torch.Generator().manual_seed(1)
    z = 4 * torch.randn(600, 5, generator=g)
    y = torch.randint(0, 5, (600,), generator=g)
    m = cal.trust_metrics(z[:300], y[:300], z[300:], y[300:], target_risk=0.5, alpha=0.2)
    hot = cal.trust_metrics(z[:300], y[:300], z[300:], y[300:], target_risk=0.5, temperature=3.0)
    numbers = [v for v in m.values() if isinstance(v, float)]
    assert numbers and all(math.isfinite(v) for v in numbers)
    assert hot["lac_size"] != m["lac_size"]  # sets are of the tempered probabilities


def test_a_temperature_on_too_few_errors_or_at_its_bound_is_flagged():
    z = torch.tensor([[5.0, 0.0], [0.0, 5.0]] * 20)
    y = torch.tensor([0, 1] * 20)
    assert "too few" in cal.temperature_note(z, y, 0.5)
    assert "bound" in cal.temperature_note(z, 1 - y, cal.MIN_TEMPERATURE)
    noisy = torch.randn(200, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 3, (200,), generator=torch.Generator().manual_seed(3))
    assert cal.temperature_note(noisy, labels, cal.fit_temperature(noisy, labels)) is None
