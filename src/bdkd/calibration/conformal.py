"""Split-conformal prediction sets: a set of classes that holds the true one with a chosen
probability, whatever the model.

Fitted on a held-out split of n samples (validation; never test) with miscoverage ``alpha``:
the threshold ``q̂`` is the ``⌈(n + 1)(1 − α)⌉ / n`` empirical quantile ("higher") of the
validation scores; on exchangeable test data the set contains the label with probability at
least ``1 − α`` (Vovk et al. 2005; Angelopoulos & Bates 2021).

- **LAC** (least ambiguous set-valued classifier, Sadinle et al. 2019): score ``1 − p_y``;
  the set ``{k : p_k >= 1 − q̂}`` (it may be empty when the model is unsure of everything).
- **APS** (adaptive prediction sets, Romano et al. 2020), non-randomised: score the mass of the
  classes ranked up to and including ``y``; the set holds the classes, in decreasing
  probability, whose mass up to and including them is at most ``q̂``, and always the most
  probable class (so it is never empty; ``y`` is in it exactly when its score is at most
  ``q̂`` or it is the top class). The randomised version is not used: a device gets a
  deterministic rule.

Sizes are reported with the coverage of the test samples whose set has each size range
(size-stratified coverage, Angelopoulos et al. 2021), which shows where coverage comes from.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bdkd.calibration.metrics import ArrayLike, check_probs

__all__ = [
    "METHODS",
    "SIZE_STRATA",
    "conformal_metrics",
    "conformal_quantile",
    "conformal_scores",
    "prediction_sets",
]

METHODS = ("lac", "aps")
SIZE_STRATA = ((0, 0), (1, 1), (2, 3), (4, 6), (7, 10), (11, 100), (101, 10**9))


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def conformal_scores(probs: ArrayLike, labels: ArrayLike, method: str = "lac") -> Tensor:
    """The nonconformity score of each sample's true label (float64)."""
    p, y = check_probs(probs, labels)
    p = p.double()
    if method == "lac":
        return 1.0 - p.gather(1, y.view(-1, 1)).squeeze(1)
    if method == "aps":
        order = p.argsort(dim=1, descending=True, stable=True)
        mass = p.gather(1, order).cumsum(1)
        rank = (order == y.view(-1, 1)).long().argmax(1)
        return mass.gather(1, rank.view(-1, 1)).squeeze(1)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def conformal_quantile(scores: Tensor, alpha: float) -> float:
    """``q̂``: the ``⌈(n + 1)(1 − α)⌉ / n`` quantile of the scores ("higher"); infinite when
    the split is too small for ``alpha`` (every set then holds every class)."""
    _check_alpha(alpha)
    n = scores.shape[0]
    rank = math.ceil((n + 1) * (1.0 - alpha))
    if n == 0 or rank > n:
        return math.inf
    return float(torch.sort(scores.double()).values[rank - 1])


def prediction_sets(probs: ArrayLike, qhat: float, method: str = "lac") -> Tensor:
    """Boolean (N, C): which classes each sample's set holds at threshold ``qhat``."""
    p = torch.as_tensor(probs).double()
    if method == "lac":
        return (1.0 - p) <= qhat  # the score's own arithmetic: y is in iff its score <= q
    if method == "aps":
        order = p.argsort(dim=1, descending=True, stable=True)
        keep_sorted = p.gather(1, order).cumsum(1) <= qhat
        keep_sorted[:, 0] = True  # never empty: the most probable class always
        keep = torch.zeros_like(keep_sorted)
        keep.scatter_(1, order, keep_sorted)
        return keep
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def conformal_metrics(
    val_probs: ArrayLike,
    val_labels: ArrayLike,
    test_probs: ArrayLike,
    test_labels: ArrayLike,
    *,
    alpha: float = 0.1,
    method: str = "lac",
) -> dict[str, Any]:
    """``q̂`` fitted on validation, and on test: coverage, mean and empty-set fraction, and the
    coverage of each set-size stratum that holds samples."""
    _check_alpha(alpha)
    qhat = conformal_quantile(conformal_scores(val_probs, val_labels, method), alpha)
    p, y = check_probs(test_probs, test_labels)
    sets = prediction_sets(p, qhat, method)
    sizes = sets.sum(1)
    covered = sets.gather(1, y.view(-1, 1)).squeeze(1)
    strata = []
    for lo, hi in SIZE_STRATA:
        inside = (sizes >= lo) & (sizes <= hi)
        count = int(inside.sum())
        if count:
            strata.append(
                {
                    "sizes": [lo, hi],
                    "count": count,
                    "coverage": float(covered[inside].double().mean()),
                }
            )
    return {
        "method": method,
        "alpha": alpha,
        "qhat": qhat if math.isfinite(qhat) else None,
        "coverage": float(covered.double().mean()) if y.numel() else 0.0,
        "mean_size": float(sizes.double().mean()) if y.numel() else 0.0,
        "empty": float((sizes == 0).double().mean()) if y.numel() else 0.0,
        "strata": strata,
    }
