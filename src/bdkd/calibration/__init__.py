"""Calibration metrics, streaming accumulators, temperature scaling, per-bin statistics.

- :mod:`bdkd.calibration.metrics`: ECE, MCE, adaptive and classwise ECE, NLL, Brier of one
  set of predictions, and the per-bin statistics a reliability diagram draws;
- :mod:`bdkd.calibration.streaming`: the same metrics accumulated batch by batch;
- :mod:`bdkd.calibration.temperature`: temperature scaling.

Every name stays importable from ``bdkd.calibration``. Definitions: docs/calibration.md.
"""

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
)
from bdkd.calibration.streaming import (
    CalibrationAccumulator,
    SegmentationAccumulator,
    calibration_metrics,
)
from bdkd.calibration.temperature import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    apply_temperature,
    fit_temperature,
    split_for_fitting,
)

__all__ = [
    "MAX_TEMPERATURE",
    "MIN_TEMPERATURE",
    "CalibrationAccumulator",
    "ReliabilityBins",
    "SegmentationAccumulator",
    "adaptive_ece",
    "apply_temperature",
    "binned_sums",
    "brier",
    "calibration_metrics",
    "classwise_ece",
    "ece",
    "ece_from_sums",
    "fit_temperature",
    "mce",
    "nll",
    "reliability_bins",
    "split_for_fitting",
]
