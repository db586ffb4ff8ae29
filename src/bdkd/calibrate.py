"""Calibrate saved logits: the workflow behind `bdkd calibrate`, callable from Python.

:func:`calibrate_file` reads logits and labels (``bdkd eval --save-logits`` writes them, as
does every run's ``predictions/<network>.npz``), fits a temperature on validation logits —
given separately, stored in the file (``val_logits``/``val_labels``), or, when there are
none, a random part of the file's own rows (the metrics are then computed on the rest) — and
returns the metrics before and after temperature scaling. A file from a run with several
networks holds ``logits_<network>``: ``network`` chooses one, else the run's deployed network
when the file names it (``deployed``), else the only one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bdkd import calibration as cal
from bdkd.files import load_logits

__all__ = ["Calibrated", "calibrate_file", "calibrate_logits"]

KEYS = ("accuracy", "ece", "adaptive_ece", "classwise_ece", "mce", "nll", "brier")


@dataclass
class Calibrated:
    """The outcome of :func:`calibrate_logits`: the temperature, where it was fitted, the
    metrics before and after, and the logits and labels they were computed on."""

    temperature: float
    source: str
    before: dict[str, Any]
    after: dict[str, Any]
    logits: Tensor
    labels: Tensor
    bins: int
    network: str | None = None
    notes: list[str] = field(default_factory=list)

    def panels(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Reliability panels (probabilities, labels) before and after scaling."""
        scaled = cal.apply_temperature(self.logits, self.temperature)
        return {
            "before": (torch.softmax(self.logits.double(), 1), self.labels),
            f"after TS (T={self.temperature:.2f})": (torch.softmax(scaled, 1), self.labels),
        }


def calibrate_logits(
    logits: Tensor,
    labels: Tensor,
    *,
    val_logits: Tensor | None = None,
    val_labels: Tensor | None = None,
    bins: int = 15,
    fit_fraction: float = 0.5,
    seed: int = 0,
    source: str | None = None,
) -> Calibrated:
    """Fit a temperature on ``val_logits`` (else on a random ``fit_fraction`` of the rows,
    drawn by ``seed``, reporting on the rest) and measure before and after."""
    if val_logits is not None and val_labels is not None:
        if val_logits.shape[1] != logits.shape[1]:
            raise ValueError(
                f"the validation logits have {val_logits.shape[1]} classes, the logits "
                f"{logits.shape[1]}"
            )
        fit_logits, fit_labels = val_logits, val_labels
        source = source or "fitted on the validation logits"
    else:
        n = logits.shape[0]
        fit_logits, fit_labels, logits, labels = cal.split_for_fitting(
            logits, labels, fraction=fit_fraction, seed=seed
        )
        source = (
            f"no validation logits given: fitted on a random {fit_logits.shape[0]} of {n} "
            f"samples (seed {seed}); metrics on the other {logits.shape[0]}"
        )
    temperature = cal.fit_temperature(fit_logits, fit_labels)
    before = cal.calibration_metrics(logits, labels, n_bins=bins)
    after = cal.calibration_metrics(cal.apply_temperature(logits, temperature), labels, n_bins=bins)
    return Calibrated(temperature, source, before, after, logits, labels, bins)


def calibrate_file(
    path: str | Path,
    *,
    val: str | Path | None = None,
    network: str | None = None,
    bins: int = 15,
    fit_fraction: float = 0.5,
    seed: int = 0,
) -> Calibrated:
    """:func:`calibrate_logits` on a saved file (see the module docstring)."""
    path = Path(path)
    data = load_logits(path, network=network)
    chosen = data.pop("_network", None)
    val_logits = val_labels = None
    source = None
    if val is not None:
        other = load_logits(val, network=network)
        val_logits, val_labels = other["logits"], other["labels"]
        source = f"fitted on {val}"
    elif "val_logits" in data:
        val_logits, val_labels = data["val_logits"], data["val_labels"]
        source = "fitted on the file's val_logits/val_labels"
    result = calibrate_logits(
        data["logits"],
        data["labels"],
        val_logits=val_logits,
        val_labels=val_labels,
        bins=bins,
        fit_fraction=fit_fraction,
        seed=seed,
        source=source,
    )
    result.network = chosen
    return result
