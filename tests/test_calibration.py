"""Calibration metrics: hand-computed cases, torchmetrics parity, streaming, temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bdkd import calibration as cal
from bdkd.report import reliability_diagram

# Four samples, two classes, hand-checked.
PROBS = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
LABELS = np.array([0, 1, 1, 0])
# confidences 0.9, 0.6, 0.7, 0.55; correct 1, 0, 1, 1
# 15 bins of width 1/15: 0.9 -> bin 13 (0.8667, 0.9333]; 0.6 -> bin 8 (0.5333, 0.6];
# 0.7 -> bin 10 (0.6667, 0.7333]; 0.55 -> bin 8. Bin 8: acc 1/2, conf 0.575.


def test_ece_hand_computed():
    expected = (1 / 4) * abs(1 - 0.9) + (2 / 4) * abs(0.5 - 0.575) + (1 / 4) * abs(1 - 0.7)
    assert math.isclose(cal.ece(PROBS, LABELS), expected, rel_tol=1e-12)


def test_mce_hand_computed():
    assert math.isclose(cal.mce(PROBS, LABELS), 0.3, rel_tol=1e-12)


def test_adaptive_ece_hand_computed():
    # 2 equal-mass bins of the sorted confidences: {0.55, 0.6} and {0.7, 0.9}
    expected = (2 / 4) * abs(0.5 - 0.575) + (2 / 4) * abs(1.0 - 0.8)
    assert math.isclose(cal.adaptive_ece(PROBS, LABELS, n_bins=2), expected, rel_tol=1e-12)
    # uneven split: 3 bins over 4 samples -> sizes 2, 1, 1
    expected3 = (2 / 4) * abs(0.5 - 0.575) + (1 / 4) * abs(1 - 0.7) + (1 / 4) * abs(1 - 0.9)
    assert math.isclose(cal.adaptive_ece(PROBS, LABELS, n_bins=3), expected3, rel_tol=1e-12)


def test_classwise_ece_hand_computed():
    # 2 bins: (0, 0.5], (0.5, 1]. Class 0 probs 0.9, 0.6, 0.3, 0.55 with hits 1, 0, 0, 1.
    c0 = abs(0 - 0.3) + abs((1 + 0 + 1) - (0.9 + 0.6 + 0.55))
    # class 1 probs 0.1, 0.4, 0.7, 0.45 with hits 0, 1, 1, 0
    c1 = abs((0 + 1 + 0) - (0.1 + 0.4 + 0.45)) + abs(1 - 0.7)
    expected = (c0 / 4 + c1 / 4) / 2
    assert math.isclose(cal.classwise_ece(PROBS, LABELS, n_bins=2), expected, rel_tol=1e-12)


def test_nll_and_brier_hand_computed():
    logits = np.log(PROBS)
    expected_nll = -np.mean(np.log([0.9, 0.4, 0.7, 0.55]))
    assert math.isclose(cal.nll(logits, LABELS), expected_nll, rel_tol=1e-12)
    expected_brier = np.mean([0.1**2 + 0.1**2, 0.6**2 + 0.6**2, 0.3**2 + 0.3**2, 0.45**2 + 0.45**2])
    assert math.isclose(cal.brier(PROBS, LABELS), expected_brier, rel_tol=1e-12)


def test_bin_edges_are_right_closed_and_zero_goes_first():
    # a confidence of exactly 0.6 belongs to bin (8/15, 9/15], i.e. with 0.55
    probs = np.array([[0.6, 0.4], [0.55, 0.45]])
    labels = np.array([0, 1])
    # one bin: acc 1/2, conf 0.575
    assert math.isclose(cal.ece(probs, labels), abs(0.5 - 0.575), rel_tol=1e-12)
    # with 5 bins, 0.6 sits on the edge of (0.4, 0.6] and joins 0.55 there
    assert math.isclose(cal.ece(probs, labels, n_bins=5), abs(0.5 - 0.575), rel_tol=1e-12)
    # classwise: a probability of exactly 0 goes to the first bin without error
    zero = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert cal.classwise_ece(zero, np.array([0, 1])) == 0.0


def test_torch_and_numpy_inputs_agree_and_return_floats():
    t = torch.tensor(PROBS, dtype=torch.float32)
    for fn in (cal.ece, cal.mce, cal.adaptive_ece, cal.classwise_ece, cal.brier):
        a, b = fn(PROBS, LABELS), fn(t, torch.tensor(LABELS))
        assert isinstance(a, float) and isinstance(b, float)
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)


def _random_case(n=500, c=10, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g) * scale
    labels = torch.randint(0, c, (n,), generator=g)
    # make the model better than chance so bins fill unevenly
    logits[torch.arange(n), labels] += 2.0
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_torchmetrics(seed):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    logits, labels = _random_case(seed=seed)
    probs = torch.softmax(logits, dim=1)
    for norm, ours in (("l1", cal.ece), ("max", cal.mce)):
        theirs = tm.multiclass_calibration_error(
            probs, labels, num_classes=10, n_bins=15, norm=norm
        )
        assert math.isclose(ours(probs, labels), float(theirs), rel_tol=1e-4, abs_tol=1e-6), norm


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_streaming_equals_one_shot(batch):
    logits, labels = _random_case(n=300, seed=3)
    probs = torch.softmax(logits.double(), dim=1)
    acc = cal.CalibrationAccumulator(num_classes=10, n_bins=12)
    for i in range(0, 300, batch):
        acc.update(logits[i : i + batch], labels[i : i + batch])
    got = acc.compute()
    assert acc.count == 300
    expected = {
        "ece": cal.ece(probs, labels, n_bins=12),
        "mce": cal.mce(probs, labels, n_bins=12),
        "adaptive_ece": cal.adaptive_ece(probs, labels, n_bins=12),
        "classwise_ece": cal.classwise_ece(probs, labels, n_bins=12),
        "nll": cal.nll(logits, labels),
        "brier": cal.brier(probs, labels),
        "accuracy": float((probs.argmax(1) == labels).double().mean()),
    }
    for key, value in expected.items():
        assert math.isclose(got[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean()
    assert math.isclose(got["top5"], float(top5), rel_tol=1e-12)


def test_merged_accumulators_equal_one_accumulator():
    logits, labels = _random_case(n=200, seed=4)
    whole = cal.CalibrationAccumulator(10)
    whole.update(logits, labels)
    a, b = cal.CalibrationAccumulator(10), cal.CalibrationAccumulator(10)
    a.update(logits[:77], labels[:77])
    b.update(logits[77:], labels[77:])
    a.merge(b)
    for key, value in whole.compute().items():
        assert math.isclose(a.compute()[key], value, rel_tol=1e-9, abs_tol=1e-12), key
    with pytest.raises(ValueError, match="different"):
        a.merge(cal.CalibrationAccumulator(10, n_bins=5))


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5, 6.0])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    g = torch.Generator().manual_seed(5)
    n, c = 20000, 10
    base = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    # labels drawn from softmax(base); the logits a model reports are base * true_t, so the
    # temperature that calibrates them is true_t
    labels = torch.multinomial(torch.softmax(base, dim=1), 1, generator=g).squeeze(1)
    fitted = cal.fit_temperature(base * true_t, labels)
    assert math.isclose(fitted, true_t, rel_tol=0.05), fitted


def test_temperature_scaling_keeps_accuracy_and_lowers_nll():
    logits, labels = _random_case(n=1000, seed=6, scale=6.0)  # over-confident
    t = cal.fit_temperature(logits, labels)
    assert t > 1.0
    scaled = cal.apply_temperature(logits, t)
    before, after = cal.calibration_metrics(logits, labels), cal.calibration_metrics(scaled, labels)
    assert before["accuracy"] == after["accuracy"]
    assert after["nll"] < before["nll"]
    with pytest.raises(ValueError, match="temperature"):
        cal.apply_temperature(logits, 0.0)


def test_reliability_diagram_writes_a_png(tmp_path):
    a, la = _random_case(n=400, seed=7)
    b, lb = _random_case(n=400, seed=8, scale=8.0)
    out = reliability_diagram(
        {"calibrated": (torch.softmax(a, 1), la), "over-confident": (torch.softmax(b, 1), lb)},
        tmp_path / "sub" / "rel.png",
        title="test",
    )
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert 600 <= width <= 1200 and 400 <= height <= 800
    assert not list(out.parent.glob("*.tmp.png"))


def test_bad_input_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        cal.ece(PROBS, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\]"):
        cal.ece(PROBS, np.array([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="integer class indices"):
        cal.ece(PROBS, LABELS.astype(float))
    nan = PROBS.copy()
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 row"):
        cal.brier(nan, LABELS)
    with pytest.raises(ValueError, match="empty"):
        cal.ece(np.zeros((0, 3)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"shape \(N, C\)"):
        cal.ece(PROBS[0], LABELS[:1])
    with pytest.raises(ValueError, match="sum to 1"):
        cal.ece(PROBS * 0.5, LABELS)
    with pytest.raises(ValueError, match="n_bins"):
        cal.ece(PROBS, LABELS, n_bins=0)
    with pytest.raises(ValueError, match="no samples"):
        cal.CalibrationAccumulator(3).compute()
