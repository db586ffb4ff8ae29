"""Callbacks: your own code at the points of a run (both trainers call them).

Subclass :class:`Callback` and override what you need; pass instances to
``Trainer(..., callbacks=[...])``, ``LLMTrainer(..., callbacks=[...])`` or
``bdkd.train(config, callbacks=[...])``. Every call is made in the first process only.

- ``on_start(params)``: the run's resolved config, flattened (``train.lr``: 0.05, ...);
- ``on_step(step, values)``: every ``output.log_every`` optimizer steps, the running mean of
  every loss term (``train/student/ce``, ...), step counted from 1 over the whole run;
- ``on_epoch(epoch, values)``: after every epoch of an image run (counted from 1), the epoch's
  mean loss terms (``train/student/ce``, ...) and the learning rate ``lr``; LLM runs are
  counted in steps and make no such call;
- ``on_eval(step, values)``: every validation, its metrics (``val/student/ece``, ...); ``step``
  is the epoch (images) or the optimizer step (LLMs, whose values also hold the step's loss
  terms and ``lr``);
- ``on_finish(summary, artifacts)``: the run's ``summary.json`` content and the files it
  wrote (report, figures).

The trackers of ``output.report_to`` (:mod:`bdkd.engine.tracking`) are callbacks too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Callback", "Callbacks", "flatten", "numbers"]


class Callback:
    """A no-op at every point of a run; override the methods you need."""

    def on_start(self, params: Mapping[str, Any]) -> None:
        """The run starts (or resumes) with this flattened config."""

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        """The running loss terms after optimizer step ``step``."""

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """Image runs: epoch ``epoch`` ended with these mean loss terms and ``lr``."""

    def on_eval(self, step: int, values: Mapping[str, float]) -> None:
        """A validation at ``step`` (epoch or optimizer step)."""

    def on_finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        """The run finished and wrote ``artifacts``."""

    def close(self) -> None:
        """Release what the callback holds (the run ended, well or not)."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of ``values`` (per-class lists and text left out)."""
    import math

    return {
        k: float(v)
        for k, v in values.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


class Callbacks(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, params: Mapping[str, Any]) -> None:
        for c in self.callbacks:
            c.on_start(params)

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        for c in self.callbacks:
            c.on_step(step, values)

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        for c in self.callbacks:
            c.on_epoch(epoch, values)

    def on_eval(self, step: int, values: Mapping[str, float]) -> None:
        for c in self.callbacks:
            c.on_eval(step, values)

    def on_finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        for c in self.callbacks:
            c.on_finish(summary, artifacts)

    def close(self) -> None:
        for c in self.callbacks:
            c.close()
