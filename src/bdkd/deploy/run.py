"""A finished image run, read back for deployment: checked, and built as far as needed.

:func:`load_run` reads a run directory someone may have made elsewhere as data: its summary
is checked (:func:`bdkd.report.load_summary`), its checkpoint must be the one this directory
wrote (run id of the marker) and of an image run, its stored config may name only registered
objects unless the user trusts its code (:mod:`bdkd.plugins`), and no symbolic link may lie
inside (deployment writes the export record into the run). Only the network that is deployed
is built; its fitted temperature is checked to be one :func:`bdkd.calibration.fit_temperature`
can give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bdkd.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
from bdkd.config import Config, ConfigError, validate
from bdkd.data import Splits
from bdkd.engine import build, tasks
from bdkd.engine.checkpoint import CheckpointError, load_checkpoint, load_network_state
from bdkd.engine.lifecycle import checkpoint_kind
from bdkd.engine.rundir import read_marker, refuse_links
from bdkd.plugins import code_trusted
from bdkd.report import load_summary

__all__ = ["DeployedRun", "check_temperature", "load_run"]


@dataclass
class DeployedRun:
    """One network of a finished run, rebuilt with its data, preprocessing and temperature."""

    run: Path
    summary: dict[str, Any]
    name: str
    cfg: Config
    splits: Splits
    network: nn.Module
    task: Any
    augment: Any
    loaders: Any
    temperature: float | None
    temperature_note: str | None = None
    checkpoint: str = "last"

    @property
    def info(self) -> Any:
        return self.splits.info

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> what the network takes (normalised float)."""
        return self.augment(images, train=False)


def check_temperature(value: Any, where: str) -> float | None:
    """A stored temperature: None, or a finite number in the range the fit keeps T in."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: the temperature {value!r} is not a finite number")
    if not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(
            f"{where}: the temperature {value} lies outside [{MIN_TEMPERATURE:g}, "
            f"{MAX_TEMPERATURE:g}], where every fitted temperature lies; the summary was edited "
            "or damaged"
        )
    return float(value)


def load_run(
    run: str | Path,
    network: str | None = None,
    *,
    trust_code: bool = False,
    checkpoint: str = "last",
) -> DeployedRun:
    """Network ``network`` (default: the deployed one) of run directory ``run``, checked as
    the module docstring says; ``checkpoint="best"`` takes ``checkpoints/best.pt`` (kept by
    ``train.save_best``), whose temperature is fitted on validation here."""
    if checkpoint not in ("last", "best"):
        raise ValueError(f"--checkpoint must be last or best, got {checkpoint!r}")
    run = Path(run)
    marker = read_marker(run)
    if marker is None:
        raise ValueError(f"{run}: no bdkd run marker (.bdkd-run): not a bdkd run directory")
    refuse_links(run)
    path = run / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        raise ValueError(f"{run}: no checkpoints/best.pt (the run did not set train.save_best)")
    state = load_checkpoint(path)
    if checkpoint_kind(state, path) != "image":
        raise CheckpointError(
            f"checkpoint {path} is an LLM run's; its student is the Hugging Face directory "
            f"{run / 'student'} (AutoModelForCausalLM.from_pretrained, or bdkd llm-eval)"
        )
    summary = load_summary(run)
    if state.get("run_id") != marker.get("run_id"):
        raise CheckpointError(
            f"checkpoint {path} was written by another run (run id {state.get('run_id')!r}, "
            f"this directory's is {marker.get('run_id')!r}); refusing to deploy it with this "
            "run's temperature and metrics"
        )
    name = network or state.get("deployed")
    if name not in state["networks"]:
        raise ConfigError(f"run {run} has no network {name!r}; it has {sorted(state['networks'])}")
    data = dict(state["config"])
    stored = data.get("networks")
    if not isinstance(stored, dict) or name not in stored:
        raise CheckpointError(f"checkpoint {path}: its config has no network {name!r}")
    data["networks"] = {name: stored[name]}  # only the deployed network is built
    cfg = validate(data, trusted=code_trusted(trust_code), source=f"the checkpoint of {run}")
    cfg.networks[name].checkpoint, cfg.networks[name].weights = None, None
    splits = build.load_splits(cfg)
    net = build.build_networks(cfg, splits)[name]
    load_network_state(net, state["networks"][name], f"checkpoint of {run}")
    net.eval()
    task = tasks.for_dataset(splits.info)
    loaders = build.build_loaders(cfg, splits, torch.device("cpu"))
    results = summary["results"].get(name, {})
    temperature = check_temperature(results.get("temperature"), f"{run}/summary.json, {name}")
    dep = DeployedRun(
        run, summary, name, cfg, splits, net, task, task.augment(cfg.data), loaders, temperature
    )
    dep.temperature_note = results.get("temperature_note")
    if checkpoint == "best":
        dep.checkpoint = "best"
        dep.temperature, dep.temperature_note = _fit_on_validation(dep)
    return dep


def _fit_on_validation(dep: DeployedRun) -> tuple[float | None, str | None]:
    """A temperature fitted on the validation split for this network (and why it is not to
    be trusted, when it is not); None without a validation split."""
    from bdkd import calibration as cal
    from bdkd.engine.evaluate import evaluate_networks

    if dep.loaders.val is None:
        return None, None
    evaluator = dep.task.evaluator(dep.transform, dep.summary.get("bins", 15), sample_fraction=0.05)
    sampled = hasattr(evaluator.accumulator(), "sample")  # pixels: a uniform sample of them
    with torch.no_grad():
        result = evaluate_networks(
            {"net": dep.network}, dep.loaders.val, evaluator, keep_logits=not sampled
        )
    if sampled:
        logits, labels = result.accumulators["net"].sample()
    else:
        logits, labels = result.logits["net"], result.labels
    t = cal.fit_temperature(logits, labels)
    return t, cal.temperature_note(logits, labels, t)
