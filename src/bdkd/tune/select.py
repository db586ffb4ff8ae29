"""What a tune chooses by: the validation metrics of a finished run, and the searches.

Only the selection seed's validation split chooses anything. A run's validation metrics are
its deployed network's at the last validation (``metrics.jsonl``), and for classification
its AURC from the saved validation logits (``predictions/<network>.npz``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from bdkd.calibration import aurc
from bdkd.files import load_logits
from bdkd.tune.spaces import Space

__all__ = ["SELECT", "Sweep", "choose", "test_metrics", "val_metrics"]

# --select name -> (metric key, direction, label)
SELECT: dict[str, tuple[str, str, str]] = {
    "top1": ("accuracy", "max", "top-1"),
    "nll": ("nll", "min", "NLL"),
    "ece": ("ece", "min", "ECE"),
    "aurc": ("aurc", "min", "AURC"),
    "miou": ("miou", "max", "mIoU"),
}


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def test_metrics(run_dir: str | Path, network: str | None = None) -> dict[str, float]:
    """Network ``network``'s test metrics (default: the deployed one; an LLM run's
    student)."""
    s = _summary(Path(run_dir))
    return dict(s["results"][network or s.get("deployed", "student")])


def val_metrics(run_dir: str | Path) -> dict[str, float]:
    """The deployed network's validation metrics at the run's last validation (an LLM run's
    student), with AURC from its saved validation logits where it has them."""
    run_dir = Path(run_dir)
    s = _summary(run_dir)
    deployed = s.get("deployed", "student")
    values: dict[str, float] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        val = (json.loads(line) if line.strip() else {}).get("val") or {}
        if isinstance(val.get(deployed), dict):
            values = dict(val[deployed])
        elif "nll" in val:  # an LLM run: the student's metrics, flat
            values = {k: v for k, v in val.items() if isinstance(v, (int, float))}
    if not values:
        raise ValueError(f"run {run_dir} has no validation metrics (data.val_size is 0?)")
    pred = run_dir / "predictions" / f"{deployed}.npz"
    if "aurc" not in values and pred.is_file():
        try:
            data = load_logits(pred)
        except ValueError:  # a logit map per pixel: no AURC
            return values
        if "val_logits" in data:
            probs = torch.softmax(data["val_logits"].double(), 1)
            values["aurc"] = float(aurc(probs, data["val_labels"]))
    return values


def choose(vals: list[dict[str, float]], select: str) -> int:
    """Index of the best of ``vals`` by ``select``; ties go to the earlier setting."""
    key, direction, _ = SELECT[select]
    sign = -1.0 if direction == "max" else 1.0

    def score(i: int) -> tuple[float, int]:
        v = vals[i].get(key, math.nan)
        return (math.inf if not math.isfinite(v) else sign * v, i)

    return min(range(len(vals)), key=score)


class Sweep:
    """The settings one entry tries on the selection seed. ``random``: all ``budget`` at
    once (the whole grid when it has exactly ``budget``). ``tpe``: Optuna's TPE sampler, one
    setting after another, each seeing the validation results before it (seeded, so a
    rerun asks for the same settings again); its first ``max(2, budget // 3)`` are random."""

    def __init__(self, space: Space, budget: int, search: str, select: str, seed: int = 0):
        self.space, self.budget, self.search, self.select = space, budget, search, select
        self.asked: list[tuple[Any, dict[str, Any]]] = []
        self.told = 0
        if space.kind == "scratch" or space.size == 1 or search == "random":
            self.fixed: list[dict[str, Any]] | None = space.settings(
                1 if space.size == 1 or not space.axes else budget, seed
            )
            return
        self.fixed = None
        if space.size < budget:
            space.settings(budget, seed)  # raises the budget error
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        direction = "maximize" if SELECT[select][1] == "max" else "minimize"
        sampler = optuna.samplers.TPESampler(
            seed=_stable_seed(seed, space.name),
            n_startup_trials=max(2, budget // 3),
        )
        self.study = optuna.create_study(direction=direction, sampler=sampler)
        self.distributions = {}
        for i, axis in enumerate(space.axes):
            if axis.values is not None:
                self.distributions[f"a{i}"] = optuna.distributions.CategoricalDistribution(
                    list(range(len(axis.values)))
                )
            elif axis.integer:
                self.distributions[f"a{i}"] = optuna.distributions.IntDistribution(
                    int(axis.low or 0), int(axis.high or 0), log=axis.log
                )
            else:
                self.distributions[f"a{i}"] = optuna.distributions.FloatDistribution(
                    float(axis.low or 0), float(axis.high or 0), log=axis.log
                )

    def _setting(self, params: dict[str, Any]) -> dict[str, Any]:
        choice = []
        for i, axis in enumerate(self.space.axes):
            v = params[f"a{i}"]
            choice.append(axis.values[v] if axis.values is not None else (v,))
        return self.space.setting(tuple(choice))

    def settings(self, results: dict[int, dict[str, float]]) -> list[dict[str, Any]]:
        """Every setting to run so far, given the validation metrics of those finished
        (by index). Complete when it has ``budget`` entries that all have results."""
        if self.fixed is not None:
            return list(self.fixed)
        key = SELECT[self.select][0]
        while True:
            if self.told < len(self.asked):
                if self.told not in results:
                    break
                trial, _ = self.asked[self.told]
                value = results[self.told].get(key, math.nan)
                if math.isfinite(value):
                    self.study.tell(trial, value)
                else:
                    import optuna

                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                self.told += 1
                continue
            if len(self.asked) >= self.budget:
                break
            trial = self.study.ask(self.distributions)
            self.asked.append((trial, self._setting(trial.params)))
        return [s for _, s in self.asked]


def _stable_seed(seed: int, name: str) -> int:
    import zlib

    return zlib.crc32(f"{seed}:{name}".encode()) % 2**31
