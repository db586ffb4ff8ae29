"""The LLM commands: `bdkd llm-distill CONFIG` and `bdkd llm-cache-teacher CONFIG`.

`llm-distill` distils a causal LM into another, offline or on-policy: the config is validated
and every path checked before any model loads; teacher and student are loaded (any causal LM:
a ``save_pretrained`` directory, a cached hub id, a GGUF file, or the student derived from the
teacher) and their vocabularies compared; the data files are tokenised with the teacher's
tokenizer and split into train / val / test by seed; one rehearsed step checks the objective
before the run directory is touched. The loop is :class:`bdkd.llm.trainer.LLMTrainer` on the
engine's run lifecycle. At the end the student is saved as ``RUN/student``
(``save_pretrained``, safetensors, with the tokenizer), which
``AutoModelForCausalLM.from_pretrained`` loads.

`llm-cache-teacher` (:func:`cache_teacher`) computes the teacher's top-k next-token
distributions once for ``train.teacher_cache``.

The pieces live by concern: :mod:`bdkd.llm.config` (the schema), :mod:`bdkd.llm.build`
(models, data, cache), :mod:`bdkd.llm.parallel` (DDP / FSDP2), :mod:`bdkd.llm.evaluate`
(metrics, generation, `llm-eval`), :mod:`bdkd.llm.trainer` (the loop); their names stay
importable from here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from bdkd.engine.build import resolve_device
from bdkd.engine.rundir import check_run_dir
from bdkd.llm.build import (
    Built,
    build_data,
    build_models,
    cache_warning,
    check_positions,
    longest_text,
    open_teacher_cache,
    pad_id,
)
from bdkd.llm.config import (
    DTYPES,
    LLMConfig,
    LLMScheduleConfig,
    check_inputs,
    load_llm_config,
    validate_llm_config,
)
from bdkd.llm.evaluate import (
    LM_KEYS,
    LMTask,
    NextTokenTask,
    evaluate_lm,
    greedy,
    lm_report,
    strip_after_eos,
)
from bdkd.llm.parallel import (
    Parallel,
    check_parallel,
    full_optimizer_state,
    full_state,
    load_full_state,
    setup_parallel,
)
from bdkd.llm.trainer import LLMTrainer, TrainingDiverged, run_llm_distill

__all__ = [
    "DTYPES",
    "LM_KEYS",
    "Built",
    "LLMConfig",
    "LLMScheduleConfig",
    "LLMTrainer",
    "LMTask",
    "NextTokenTask",
    "Parallel",
    "TrainingDiverged",
    "build_data",
    "build_models",
    "cache_teacher",
    "cache_warning",
    "check_inputs",
    "check_parallel",
    "evaluate_lm",
    "full_optimizer_state",
    "full_state",
    "greedy",
    "lm_report",
    "load_full_state",
    "load_llm_config",
    "open_teacher_cache",
    "pad_id",
    "run_llm_distill",
    "setup_parallel",
    "strip_after_eos",
    "validate_llm_config",
]


def cache_teacher(
    cfg: LLMConfig,
    out: str | Path,
    *,
    k: int,
    force: bool = False,
    batch: int | None = None,
    protect: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """`bdkd llm-cache-teacher`: the teacher's top-k next-token distribution for every target
    token of the config's train / val / test splits, written to ``out`` for runs that set
    ``train.teacher_cache: OUT`` (same teacher, tokenizer, data, max_length and seed)."""
    from bdkd.llm.cache import build_topk_cache, cache_key
    from bdkd.llm.models import load_causal_lm

    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    check_run_dir(Path(out), force=force, kind="llm-cache", protect=protect)
    plain = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, teacher_cache=None))
    check_inputs(plain)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    teacher, tokenizer = load_causal_lm(cfg.teacher.model, dtype=DTYPES[cfg.teacher.dtype])
    train, val, test, _ = build_data(cfg, tokenizer)
    check_positions({"teacher": teacher}, longest_text(train + val + test))
    splits = {"train": train, "val": val, "test": test}
    key = cache_key(cfg.teacher.model, tokenizer, splits, k, cfg.data.max_length)
    return build_topk_cache(
        teacher,
        splits,
        out,
        k=k,
        key=key,
        pad=pad_id(tokenizer),
        batch=batch or cfg.train.eval_batch,
        device=device,
        force=force,
        progress=cfg.train.progress,
    )
