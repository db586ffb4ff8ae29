"""What a deployed classifier needs to be trusted, measured in one call: selective prediction
(AURC, E-AURC, an abstention threshold for a target risk) and conformal prediction sets (LAC
and APS), each fitted on validation and measured on test, from logits at a temperature."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bdkd.calibration.conformal import METHODS, conformal_metrics
from bdkd.calibration.selective import selective_metrics

__all__ = ["TRUST_KEYS", "trust_metrics"]

TRUST_KEYS = ("aurc", "e_aurc", "abstain_coverage", "lac_size", "lac_coverage")
"""The trust metrics of a run's table (the rest stay in summary.json)."""


def _probs(logits: Tensor, temperature: float | None) -> Tensor:
    z = logits.double()
    return torch.softmax(z / temperature if temperature else z, dim=1)


def trust_metrics(
    val_logits: Tensor,
    val_labels: Tensor,
    test_logits: Tensor,
    test_labels: Tensor,
    *,
    target_risk: float = 0.05,
    alpha: float = 0.1,
    temperature: float | None = None,
) -> dict[str, Any]:
    """Flat metrics of ``softmax(logits / temperature)``: ``aurc``, ``e_aurc``, the
    abstention threshold for ``target_risk`` (``abstain_threshold``, its validation and test
    coverage, test risk), and for each conformal method its threshold, test coverage, mean
    set size, empty-set fraction and size-stratified coverage at miscoverage ``alpha``."""
    v, t = _probs(val_logits, temperature), _probs(test_logits, temperature)
    sel = selective_metrics(v, val_labels, t, test_labels, target_risk)
    out: dict[str, Any] = {
        "aurc": sel["aurc"],
        "e_aurc": sel["e_aurc"],
        "target_risk": target_risk,
        "abstain_threshold": sel["abstain_threshold"],
        "abstain_val_coverage": sel["val_coverage"],
        "abstain_coverage": sel["test_coverage"],
        "abstain_risk": sel["test_selective_risk"],
        "conformal_alpha": alpha,
    }
    for method in METHODS:
        m = conformal_metrics(v, val_labels, t, test_labels, alpha=alpha, method=method)
        out.update(
            {
                f"{method}_qhat": m["qhat"],
                f"{method}_coverage": m["coverage"],
                f"{method}_size": m["mean_size"],
                f"{method}_empty": m["empty"],
                f"{method}_strata": m["strata"],
            }
        )
    return out
