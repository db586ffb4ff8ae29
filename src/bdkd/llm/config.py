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
    OutputConfig,
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
    model: str = spec(
        "smollm2",
        doc="a save_pretrained directory, a hub id (from the local cache), a .gguf file, or smollm2",
    )
    dtype: str = spec("float32", choices=tuple(DTYPES), doc="the teacher's weights' type")


@dataclass
class StudentConfig:
    model: str | None = spec(
        None, doc="a student loaded like the teacher (exactly one of model, layers, config)"
    )
    layers: list[int] | None = spec(
        None, items={"ge": 0}, doc="the student is these layers of the teacher (indices)"
    )
    config: dict[str, Any] | None = spec(
        None, doc="the student is the teacher's architecture with these overrides, random init"
    )
    lora: dict[str, Any] | None = spec(
        None, doc="train a LoRA adapter only: {r: 8, alpha: 16, dropout: 0, target_modules: [...]}"
    )


@dataclass
class LMDataConfig:
    files: list[str] = spec(default_factory=lambda: [FORTUNES], doc="data files (globs allowed)")
    format: str = spec("auto", choices=FORMATS, doc="how the files hold text")
    text_field: str = spec("text", doc="jsonl/json/parquet: the field of plain text")
    prompt_field: str = spec("prompt", doc="the field of prompts (prompt/completion rows)")
    completion_field: str = spec("completion", doc="the field of completions")
    messages_field: str = spec("messages", doc="the field of chat messages")
    val_files: list[str] = spec(default_factory=list, doc="a separate validation set (else carved)")
    test_files: list[str] = spec(default_factory=list, doc="a separate test set (else carved)")
    val_size: int | float = spec(
        0.1, ge=0, doc="validation texts carved from files: count or fraction"
    )
    test_size: int | float = spec(0.1, ge=0, doc="test texts carved from files: count or fraction")
    max_length: int = spec(256, ge=2, doc="texts are cut to this many tokens")
    prompt_tokens: int = spec(
        8, ge=1, doc="plain text: the first tokens are the prompt (not targets)"
    )
    max_samples: int | None = spec(None, ge=1, doc="use only the first rows")
    split_seed: int | None = spec(
        None,
        ge=0,
        le=MAX_SEED,
        doc="the seed of the train/val/test split (default train.seed): fix it to compare seeds",
    )


@dataclass
class ObjectiveConfig:
    name: str = spec("forward_kl", doc="a token objective (bdkd methods lists them)")
    temperature: float = spec(1.0, gt=0, doc="the softmax temperature of both distributions")
    params: dict[str, Any] = spec(
        default_factory=dict,
        doc="the objective's hyper-parameters (bdkd: rule, high, low, sharpness)",
    )
    ce_weight: float = spec(0.0, ge=0, doc="add the student's next-token cross-entropy, times this")
    distill_weight: float = spec(1.0, ge=0, doc="the objective's weight")


@dataclass
class LLMHiddenConfig:
    weight: float = spec(0.0, ge=0, doc="hidden-state distillation's weight (0: off)")
    loss: str = spec("cosine", choices=("cosine", "mse"), doc="per token: 1 - cos, or MSE")
    layers: list[list[int]] = spec(
        default_factory=list,
        doc="[student, teacher] pairs of hidden_states indices (0 embeddings, -1 the last); "
        "empty: the last of each",
    )


@dataclass
class LLMTrainConfig:
    steps: int = spec(200, ge=1, doc="optimizer steps")
    micro_batch: int = spec(8, ge=1, doc="texts per forward (shared by the processes)")
    accumulation: int = spec(1, ge=1, doc="micro-batches per optimizer step")
    lr: float = spec(1e-4, gt=0, doc="AdamW's learning rate")
    weight_decay: float = spec(0.0, ge=0, doc="AdamW's decoupled weight decay")
    grad_clip: float | None = spec(1.0, gt=0, doc="clip the gradient norm")
    seed: int = spec(0, ge=0, le=MAX_SEED, doc="the seed of the batches, sampling and the split")
    on_policy_fraction: float = spec(
        0.0, ge=0, le=1, doc="the share of micro-batches the student samples itself (GKD)"
    )
    sample_temperature: float = spec(1.0, gt=0, doc="on-policy: the sampling temperature")
    max_new_tokens: int = spec(32, ge=1, doc="on-policy samples and test generations: tokens")
    eval_every: int = spec(50, ge=1, doc="validate and checkpoint every this many steps")
    eval_batch: int = spec(16, ge=1, doc="texts per evaluation forward")
    chunk_size: int = spec(1024, ge=1, doc="tokens per chunk of the fused LM-head loss")
    device: str = spec("auto", doc="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    threads: int | None = spec(None, ge=1, le=4096, doc="torch CPU threads")
    progress: bool = spec(True, doc="a progress line")
    precision: str = spec("fp32", choices=("fp32", "bf16"), doc="autocast precision")
    gradient_checkpointing: bool = spec(False, doc="recompute the student's activations")
    parallel: str = spec("ddp", choices=("ddp", "fsdp"), doc="with --nproc: DDP or FSDP2 sharding")
    teacher_cache: str | None = spec(
        None, doc="a bdkd llm-cache-teacher directory (no teacher loaded)"
    )


@dataclass
class LLMScheduleConfig:
    """The learning rate over optimizer steps (the image side's schedules, counted in steps):
    ``constant`` (the default), ``cosine`` or ``poly`` down to ``min_lr``, ``multistep``
    (times ``gamma`` at each of ``milestones``), after a linear warm-up of ``warmup_steps``."""

    name: str = spec("constant", choices=SCHEDULES, doc="the learning-rate schedule, in steps")
    milestones: list[int] = spec(
        default_factory=list, items={"ge": 0}, doc="multistep: the steps where the rate drops"
    )
    gamma: float = spec(0.1, gt=0, doc="multistep: the factor at each milestone")
    power: float = spec(0.9, gt=0, doc="poly: (1 - progress)^power")
    warmup_steps: int = spec(0, ge=0, doc="a linear warm-up over this many steps first")
    min_lr: float = spec(0.0, ge=0, doc="cosine and poly end at this rate")

    @property
    def warmup(self) -> int:
        return self.warmup_steps


@dataclass
class LLMOutputConfig(OutputConfig):
    """The image runs' output section, and whether the student is saved."""

    save_student: bool = spec(True, doc="save RUN/student (save_pretrained) at the end")
    calibrated: bool = spec(
        True,
        doc="fit a next-token temperature on the validation split and fold it into the "
        "saved student's head",
    )


@dataclass
class LLMConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: LMDataConfig = field(default_factory=LMDataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    hidden: LLMHiddenConfig = field(default_factory=LLMHiddenConfig)
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
    if cfg.hidden.weight > 0 and cfg.train.teacher_cache:
        raise ConfigError(
            "config key 'hidden.weight': hidden-state distillation needs the teacher's hidden "
            "states; a teacher cache holds its top-k tokens only (remove train.teacher_cache)"
        )
    if cfg.hidden.weight > 0 and cfg.train.parallel == "fsdp":
        raise ConfigError(
            "config key 'hidden.weight': hidden-state distillation runs under DDP, not FSDP "
            "(set train.parallel: ddp)"
        )
    if any(len(pair) != 2 for pair in cfg.hidden.layers):
        raise ConfigError(
            "config key 'hidden.layers': each entry is [student layer, teacher layer]"
        )
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
