"""The Python API: train from a config, load a trained student.

    import bdkd
    summary = bdkd.train("digits/bdkd", overrides=["train.epochs=5"], out="runs/mine")
    student = bdkd.load_student("runs/mine")          # the deployed network, eval mode
    probs = student.predict(images_uint8)              # with its fitted temperature
    probs, answered = student.predict_or_abstain(images_uint8)

``train`` takes what the CLI takes (a file, a shipped config's name, a mapping or a config
object) and the same run-directory rules (nothing replaced without ``force``); callbacks
(:mod:`bdkd.engine.callbacks`) see every step, validation and the finish.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bdkd.config import Config, apply_overrides, read_yaml, validate, with_bases
from bdkd.engine.callbacks import Callback
from bdkd.engine.rundir import default_run_dir

__all__ = ["Student", "load_student", "train"]

LLM_SECTIONS = ("teacher", "student", "objective")


def _as_data(config: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The config as plain data, and a name for its default run directory (a mapping's
    ``base:`` files are relative to the working directory)."""
    if isinstance(config, Mapping):
        return with_bases(copy.deepcopy(dict(config)), Path.cwd(), "the config mapping"), "config"
    from bdkd.shipped import resolve_config

    path = resolve_config(config)
    return read_yaml(path), path.stem


def train(
    config: str | Path | Mapping[str, Any] | Config | Any,
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train one config (image or LLM) and return its summary. ``out`` is the run directory
    (default ``output.dir/output.name``, as the CLI); ``resume=True`` continues ``out``."""
    from bdkd.llm.config import LLMConfig, validate_llm_config

    if isinstance(config, (Config, LLMConfig)):
        data, stem = config.to_dict(), "config"
    else:
        data, stem = _as_data(config)
    data = apply_overrides(data, list(overrides))
    llm = isinstance(config, LLMConfig) or any(k in data for k in LLM_SECTIONS)
    cfg = validate_llm_config(data) if llm else validate(data)
    run_dir = (
        Path(out) if out else default_run_dir(stem, cfg.output.dir, cfg.output.name, cfg.train.seed)
    )
    if llm:
        from bdkd.llm.trainer import run_llm_distill

        return run_llm_distill(cfg, run_dir, resume=resume, force=force, callbacks=callbacks)
    from bdkd.engine import Trainer

    return Trainer(cfg, run_dir, resume=resume, force=force, callbacks=callbacks).fit()


class Student(nn.Module):
    """A run's deployed network with what using it needs: ``forward(x)`` on normalised float
    images gives logits; :meth:`preprocess` normalises uint8 images as the run did;
    :meth:`predict` gives probabilities at the fitted ``temperature``; the abstention
    threshold and the conformal threshold the run fitted on validation come along."""

    def __init__(self, network: nn.Module, run: Any) -> None:
        super().__init__()
        self.network = network.eval()
        info = run.info
        self.register_buffer("mean", torch.tensor(info.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(info.std).view(1, -1, 1, 1))
        results = run.summary["results"].get(run.name, {})
        self.temperature: float | None = run.temperature
        self.temperature_note: str | None = run.temperature_note
        self.abstain_threshold: float | None = results.get("abstain_threshold")
        self.lac_qhat: float | None = results.get("lac_qhat")
        self.class_names = list(info.class_names)
        self.image_size, self.channels = info.image_size, info.channels
        self.name, self.run = run.name, str(run.run)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        return self.network(x)

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) or (C, H, W) -> what the network takes."""
        x = images if images.dim() == 4 else images.unsqueeze(0)
        return (x.to(self.mean.device).float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def predict(self, images: Tensor, *, calibrated: bool = True) -> Tensor:
        """Class probabilities of uint8 images, at the fitted temperature (``calibrated``)."""
        z = self.network(self.preprocess(images)).float()
        if calibrated and self.temperature:
            z = z / self.temperature
        return torch.softmax(z, dim=1)

    @torch.no_grad()
    def predict_or_abstain(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(probabilities, answered): ``answered`` is False where the top probability is below
        the threshold the run chose for ``eval.target_risk``. The threshold was fitted on the
        model's own softmax (T = 1), so it is applied to that."""
        raw = self.predict(images, calibrated=False)
        threshold = self.abstain_threshold if self.abstain_threshold is not None else 0.0
        return self.predict(images), raw.max(1).values >= threshold


def load_student(
    run: str | Path,
    *,
    checkpoint: str = "last",
    network: str | None = None,
    trust_code: bool = False,
) -> Student:
    """The deployed network of finished run ``run`` (its last or best checkpoint), read back
    as data (the run's stored config may name only registered objects unless
    ``trust_code``)."""
    from bdkd.deploy.run import load_run

    dep = load_run(run, network, trust_code=trust_code, checkpoint=checkpoint)
    return Student(dep.network, dep)
