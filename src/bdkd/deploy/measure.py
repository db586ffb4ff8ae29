"""Measuring a written file, not the network it came from.

:func:`measure_file` runs an exported file (through onnxruntime, TorchScript, ...) on the
run's validation and test splits exactly as the run's own test phase runs its networks (the
task's :meth:`~bdkd.engine.tasks.Task.test_phase`: every image, or a pixel sample): accuracy,
ECE, NLL, Brier, a temperature fitted on the file's own validation outputs and the metrics
after it, and, from the same outputs, the abstention threshold and the conformal thresholds a
device needs (:func:`bdkd.engine.tasks.trust_of`). :func:`latency` times the file at batch 1
and 64 on this machine.
"""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.deploy.run import DeployedRun
from bdkd.engine import tasks
from bdkd.engine.evaluate import Evaluation, evaluate_networks

__all__ = ["FileNetwork", "file_size", "latency", "machine", "measure_file"]

Runner = Callable[[Tensor], Tensor]


class FileNetwork(nn.Module):
    """An exported file as a network: its outputs as logits (log-probabilities for a file
    that outputs probabilities: the same softmax, up to a constant per row)."""

    def __init__(self, runner: Runner, probabilities: bool) -> None:
        super().__init__()
        self.runner, self.probabilities = runner, probabilities

    def forward(self, x: Tensor) -> Tensor:
        out = self.runner(x).float()
        return out.clamp_min(1e-30).log() if self.probabilities else out


class _FileRun:
    """What a task's test phase asks of a run, for one exported file."""

    def __init__(self, dep: DeployedRun, network: nn.Module, raw_input: bool) -> None:
        self.cfg = dataclasses.replace(
            dep.cfg, eval=dataclasses.replace(dep.cfg.eval, temperature_scaling=True)
        )
        self.loaders, self.splits, self.dep = dep.loaders, dep.splits, dep
        self.distiller = _Networks({dep.name: network})
        self.transform = (lambda images: images) if raw_input else dep.transform

    def evaluate(
        self,
        loader: Any,
        *,
        networks: list[str] | None = None,
        keep_logits: bool = False,
        **options: Any,
    ) -> Evaluation:
        options.setdefault("seed", self.cfg.train.seed)
        return evaluate_networks(
            dict(self.distiller.networks),
            loader,
            self.dep.task.evaluator(self.transform, self.cfg.eval.bins, **options),
            keep_logits=keep_logits,
        )

    def frozen_evaluation(self) -> None:
        return None


@dataclasses.dataclass
class _Networks:
    networks: dict[str, nn.Module]

    @property
    def trainable(self) -> tuple[str, ...]:
        return tuple(self.networks)


def measure_file(
    runner: Runner,
    dep: DeployedRun,
    *,
    raw_input: bool = False,
    probabilities: bool = False,
    target_risk: float = 0.05,
    alpha: float = 0.1,
) -> tuple[dict[str, Any], tuple]:
    """The metrics of a written file on the run's test split (and its trust thresholds,
    fitted on validation), and its predictions (test and val outputs, or pixel samples)."""
    network = FileNetwork(runner, probabilities)
    with torch.no_grad():
        results, predictions, _ = dep.task.test_phase(_FileRun(dep, network, raw_input))
    _, notes = tasks.trust_of(results, predictions, target_risk, alpha)
    metrics = results[dep.name]
    metrics["temperature_note"] = notes.get(dep.name)
    return metrics, predictions[dep.name]


def latency(runner: Runner, example: Tensor, batch: int, *, rounds: int = 20) -> float:
    """Median milliseconds per image of ``runner`` on a batch of ``batch`` copies of the
    example images (after one warm-up call)."""
    reps = -(-batch // example.shape[0])
    x = example.repeat(reps, *([1] * (example.dim() - 1)))[:batch].contiguous()
    runner(x)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / batch


def machine() -> str:
    """The machine a measurement was taken on: its CPU model and the threads torch uses."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def file_size(path: Path) -> int:
    """Bytes on disk."""
    return Path(path).stat().st_size
