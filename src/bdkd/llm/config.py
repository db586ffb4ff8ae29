"""The configuration of `bdkd llm-distill`: typed sections, validation, input checks.

Every key, its type, default and range is declared here (the ``spec`` fields, as on the
image side, :mod:`bdkd.config`); :func:`validate_llm_config` turns a YAML mapping into an
:class:`LLMConfig` with one-line errors naming the key, and :func:`check_inputs` checks that
the models and files it names exist before any model loads. The objective's ``params`` are
checked against the objective's declared hyper-parameters (:mod:`bdkd.losses`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bdkd.config import (
    MAX_SEED,
    SCHEDULES,
    ConfigError,
    apply_overrides,
    build_section,
    check_run_name,
    read_yaml,
    spec,
)
from bdkd.llm.data import FORMATS, FORTUNES, LMDataError

__all__ = [
    "DTYPES",
    "LLMConfig",
    "LLMScheduleConfig",
    "check_inputs",
    "load_llm_config",
    "validate_llm_config",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TeacherConfig:
    # a save_pretrained directory, a hub id (from the local cache), a .gguf file, or smollm2
    model: str = "smollm2"
    dtype: str = spec("float32", choices=tuple(DTYPES))


@dataclass
class StudentConfig:
    # exactly one of: model (loaded like the teacher's), layers (a subset of the teacher's
    # layers), config (the teacher's architecture with these overrides, random init)
    model: str | None = None
    layers: list[int] | None = spec(None, items={"ge": 0})
    config: dict[str, Any] | None = None
    lora: dict[str, Any] | None = None


@dataclass
class LMDataConfig:
    files: list[str] = field(default_factory=lambda: [FORTUNES])
    format: str = spec("auto", choices=FORMATS)
    text_field: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"
    val_files: list[str] = field(default_factory=list)
    test_files: list[str] = field(default_factory=list)
    val_size: int | float = spec(0.1, ge=0)
    test_size: int | float = spec(0.1, ge=0)
    max_length: int = spec(256, ge=2)
    prompt_tokens: int = spec(8, ge=1)
    max_samples: int | None = spec(None, ge=1)
    # the seed of the train / val / test split (default: train.seed); fix it to compare seeds
    # on one held-out set and to share one teacher cache between them
    split_seed: int | None = spec(None, ge=0, le=MAX_SEED)


@dataclass
class ObjectiveConfig:
    name: str = "forward_kl"
    temperature: float = spec(1.0, gt=0)
    params: dict[str, Any] = field(default_factory=dict)
    ce_weight: float = spec(0.0, ge=0)
    distill_weight: float = spec(1.0, ge=0)


@dataclass
class LLMTrainConfig:
    steps: int = spec(200, ge=1)
    micro_batch: int = spec(8, ge=1)
    accumulation: int = spec(1, ge=1)
    lr: float = spec(1e-4, gt=0)
    weight_decay: float = spec(0.0, ge=0)
    grad_clip: float | None = spec(1.0, gt=0)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    on_policy_fraction: float = spec(0.0, ge=0, le=1)
    sample_temperature: float = spec(1.0, gt=0)
    max_new_tokens: int = spec(32, ge=1)
    eval_every: int = spec(50, ge=1)
    eval_batch: int = spec(16, ge=1)
    chunk_size: int = spec(1024, ge=1)
    device: str = "auto"
    threads: int | None = spec(None, ge=1, le=4096)
    progress: bool = True
    precision: str = spec("fp32", choices=("fp32", "bf16"))
    gradient_checkpointing: bool = False
    parallel: str = spec("ddp", choices=("ddp", "fsdp"))
    teacher_cache: str | None = None


@dataclass
class LLMScheduleConfig:
    """The learning rate over optimizer steps (the image side's schedules, counted in steps):
    ``constant`` (the default), ``cosine`` or ``poly`` down to ``min_lr``, ``multistep``
    (times ``gamma`` at each of ``milestones``), after a linear warm-up of ``warmup_steps``."""

    name: str = spec("constant", choices=SCHEDULES)
    milestones: list[int] = spec(default_factory=list, items={"ge": 0})
    gamma: float = spec(0.1, gt=0)
    power: float = spec(0.9, gt=0)
    warmup_steps: int = spec(0, ge=0)
    min_lr: float = spec(0.0, ge=0)

    @property
    def warmup(self) -> int:
        return self.warmup_steps


@dataclass
class LLMOutputConfig:
    dir: str = "runs"
    name: str | None = None
    save_student: bool = True


@dataclass
class LLMConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: LLMTrainConfig = field(default_factory=LLMTrainConfig)
    schedule: LLMScheduleConfig = field(default_factory=LLMScheduleConfig)
    output: LLMOutputConfig = field(default_factory=LLMOutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_llm_config(path: str | Path, overrides: list[str] | None = None) -> LLMConfig:
    """Read, override and validate an LLM distillation config."""
    return validate_llm_config(apply_overrides(read_yaml(path), overrides or []))


def validate_llm_config(data: dict[str, Any]) -> LLMConfig:
    """Validate a plain dict into an :class:`LLMConfig` (errors name the key). Loads nothing;
    :func:`check_inputs` then checks that the models and files it names exist."""
    cfg = build_section(LLMConfig, data, "")
    from bdkd.hparams import HParamError
    from bdkd.llm.objectives import TOKEN_OBJECTIVES, token_rows

    if cfg.objective.name not in TOKEN_OBJECTIVES:
        raise ConfigError(
            f"config key 'objective.name': must be one of {list(TOKEN_OBJECTIVES)}, got {cfg.objective.name!r}"
        )
    try:
        token_rows(cfg.objective.name, **cfg.objective.params)
    except HParamError as err:
        raise ConfigError(f"config key 'objective.params.{err.key}': {err.message}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config key 'objective.params': {err}") from None
    s = cfg.student
    given = [k for k in ("model", "layers", "config") if getattr(s, k) is not None]
    if len(given) != 1:
        raise ConfigError(
            "config key 'student': give exactly one of model (a directory, hub id or .gguf), "
            f"layers (indices of the teacher's layers) or config (overrides of the teacher's "
            f"architecture, randomly initialised); got {given or 'none'}"
        )
    if s.layers is not None and not s.layers:
        raise ConfigError("config key 'student.layers': list at least one teacher layer")
    if not cfg.data.files:
        raise ConfigError("config key 'data.files': list at least one data file")
    if cfg.train.teacher_cache and cfg.train.on_policy_fraction > 0:
        raise ConfigError(
            "config key 'train.teacher_cache': a cached teacher cannot score the student's own "
            "samples; set train.on_policy_fraction: 0 or run the teacher live"
        )
    check_run_name(cfg.output.name)
    return cfg


def check_inputs(cfg: LLMConfig) -> None:
    """Every model and file the config names exists (nothing is loaded): one-line errors
    before minutes are spent loading a teacher."""
    from bdkd.llm.models import describe_source

    for key, name in (("teacher.model", cfg.teacher.model), ("student.model", cfg.student.model)):
        if name is None:
            continue
        try:
            describe_source(name)
        except (FileNotFoundError, ImportError) as err:
            raise ConfigError(f"config key {key!r}: {err}") from None
    from bdkd.llm.data import expand_files

    for key in ("files", "val_files", "test_files"):
        try:
            expand_files(getattr(cfg.data, key))
        except LMDataError as err:
            raise ConfigError(f"config key 'data.{key}': {err}") from None
    cache = cfg.train.teacher_cache
    if cache and not (Path(cache) / "meta.json").is_file():
        raise ConfigError(
            f"config key 'train.teacher_cache': {cache} is not a finished teacher cache "
            "(make it with bdkd llm-cache-teacher CONFIG --out DIR)"
        )
