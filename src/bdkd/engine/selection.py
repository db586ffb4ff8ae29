"""Best checkpoints and early stopping, chosen on the validation split only.

``train.save_best: METRIC`` keeps ``checkpoints/best.pt`` of the epoch whose validation value
of METRIC (``accuracy``: highest; ``nll``, ``ece``: lowest) was the best so far, for the
deployed network; ``train.early_stop: {metric, patience, min_delta}`` ends training when that
metric has not improved by ``min_delta`` for ``patience`` validations. The test split never
chooses: the run's own test metrics are still those of the last epoch trained, and
``bdkd eval/export RUN --checkpoint best`` uses the best one.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["HIGHER_IS_BETTER", "Selection"]

HIGHER_IS_BETTER = {"accuracy": True, "nll": False, "ece": False}


class Selection:
    """Tracks the best validation value (for ``save_best``) and the epochs without
    improvement (for ``early_stop``); its state goes into every checkpoint."""

    def __init__(self, save_best: str | None, early_stop: Any) -> None:
        self.metric = save_best
        self.stop_metric = None if early_stop is None else early_stop.metric
        self.patience = None if early_stop is None else early_stop.patience
        self.min_delta = 0.0 if early_stop is None else early_stop.min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.stop_best: float | None = None
        self.stale = 0
        self.stopped = False

    @staticmethod
    def _improves(metric: str, value: float, best: float | None, delta: float) -> bool:
        if best is None:
            return True
        return value > best + delta if HIGHER_IS_BETTER[metric] else value < best - delta

    def update(self, epoch: int, val: dict[str, Any] | None) -> tuple[bool, bool]:
        """(whether this epoch is the new best, whether training should stop now) after a
        validation; epochs without one change nothing."""
        if not val:
            return False, False
        better = False
        if self.metric is not None:
            value = float(val[self.metric])
            if math.isfinite(value) and self._improves(self.metric, value, self.best, 0.0):
                self.best, self.best_epoch, better = value, epoch, True
        if self.stop_metric is not None:
            value = float(val[self.stop_metric])
            if math.isfinite(value) and self._improves(
                self.stop_metric, value, self.stop_best, self.min_delta
            ):
                self.stop_best, self.stale = value, 0
            else:
                self.stale += 1
            self.stopped = self.stale >= (self.patience or 0)
        return better, self.stopped

    def describe(self) -> str:
        return (
            f"validation {self.stop_metric} has not improved by {self.min_delta:g} for "
            f"{self.stale} validations (best {self.stop_best:.4f})"
        )

    def state(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "stop_metric": self.stop_metric,
            "stop_best": self.stop_best,
            "stale": self.stale,
            "stopped": self.stopped,
        }

    def load(self, state: dict[str, Any] | None) -> None:
        """Continue a resumed run's selection (format 2 checkpoints have none)."""
        if not state:
            return
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        self.stop_best, self.stale = state.get("stop_best"), int(state.get("stale", 0))
        self.stopped = bool(state.get("stopped", False))
