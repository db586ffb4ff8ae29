"""Calibration metrics, streaming accumulators, temperature scaling, per-bin statistics.

- :mod:`bdkd.calibration.metrics`: ECE, MCE, adaptive and classwise ECE, NLL, Brier of one
  set of predictions, and the per-bin statistics a reliability diagram draws;
- :mod:`bdkd.calibration.streaming`: the same metrics accumulated batch by batch;
- :mod:`bdkd.calibration.temperature`: temperature scaling (and when a fitted T is not to
  be trusted);
- :mod:`bdkd.calibration.selective`: risk–coverage, AURC, abstention thresholds;
- :mod:`bdkd.calibration.conformal`: split-conformal prediction sets (LAC, APS);
- :mod:`bdkd.calibration.trust`: all of the last two in one call.

Every name stays importable from ``bdkd.calibration``. Definitions: docs/calibration.md.
"""

from bdkd.calibration.conformal import conformal_metrics, conformal_quantile, prediction_sets
from bdkd.calibration.metrics import (
    ReliabilityBins,
    adaptive_ece,
    binned_sums,
    brier,
    classwise_ece,
    ece,
    ece_from_sums,
    mce,
    nll,
    reliability_bins,
    reliability_from_sums,
)
from bdkd.calibration.selective import (
    ABSTAIN_ALWAYS,
    RiskCoverage,
    aurc,
    excess_aurc,
    risk_coverage,
    threshold_for_risk,
)
from bdkd.calibration.streaming import (
    CalibrationAccumulator,
    SegmentationAccumulator,
    calibration_metrics,
)
from bdkd.calibration.temperature import (
    MAX_TEMPERATURE,
    MIN_ERRORS,
    MIN_TEMPERATURE,
    apply_temperature,
    fit_temperature,
    split_for_fitting,
    temperature_note,
    trust_note,
)
from bdkd.calibration.trust import TRUST_KEYS, trust_metrics

__all__ = [
    "ABSTAIN_ALWAYS",
    "TRUST_KEYS",
    "MAX_TEMPERATURE",
    "MIN_ERRORS",
    "MIN_TEMPERATURE",
    "CalibrationAccumulator",
    "ReliabilityBins",
    "RiskCoverage",
    "SegmentationAccumulator",
    "adaptive_ece",
    "apply_temperature",
    "aurc",
    "binned_sums",
    "brier",
    "calibration_metrics",
    "classwise_ece",
    "conformal_metrics",
    "conformal_quantile",
    "ece",
    "ece_from_sums",
    "excess_aurc",
    "fit_temperature",
    "mce",
    "nll",
    "prediction_sets",
    "reliability_bins",
    "reliability_from_sums",
    "risk_coverage",
    "split_for_fitting",
    "temperature_note",
    "trust_note",
    "threshold_for_risk",
    "trust_metrics",
]
