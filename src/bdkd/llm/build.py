"""Building an LLM distillation run: models, tokenised data splits, the teacher cache.

:func:`build_models` loads the teacher and the student (or derives the student from the
teacher) and checks their vocabularies; :func:`build_data` tokenises the data files with the
teacher's tokenizer and splits them by seed; :func:`open_teacher_cache` opens a top-k cache
checked against the teacher, tokenizer and data. :class:`Built` holds all of it, built and
checked before the run directory is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bdkd.config import ConfigError
from bdkd.llm.config import DTYPES, LLMConfig
from bdkd.llm.data import (
    Example,
    Fields,
    LMDataError,
    read_rows,
    split_examples,
    tokenize_rows,
)

__all__ = [
    "Built",
    "build_data",
    "build_models",
    "cache_warning",
    "check_built_positions",
    "check_positions",
    "longest_text",
    "open_teacher_cache",
    "pad_id",
]


@dataclass
class Built:
    """Everything a run needs, built and checked before the run directory is touched."""

    teacher: Any
    student: Any
    tokenizer: Any
    train: list[Example]
    val: list[Example]
    test: list[Example]
    dropped: int
    pad: int
    vocab: int | None = None  # the tokenizer's size when the heads differ by padding rows


def build_models(cfg: LLMConfig) -> tuple[Any, Any, Any, int | None]:
    """(teacher, student, tokenizer, vocab): the student loaded or derived, vocabularies
    checked, LoRA added when asked; ``vocab`` is the tokenizer's size when the two heads
    differ only by padding rows (distillation then runs over those rows alone), else None.
    With a teacher cache the teacher is None (it is loaded only when the student is derived
    from it, then dropped)."""
    from bdkd.llm.models import (
        add_lora,
        check_same_tokenizer,
        load_causal_lm,
        load_tokenizer,
        make_student,
        shared_vocabulary,
    )

    s = cfg.student
    cached = bool(cfg.train.teacher_cache)
    if cached and s.model is not None:
        teacher, tokenizer = None, load_tokenizer(cfg.teacher.model)
    else:
        teacher, tokenizer = load_causal_lm(cfg.teacher.model, dtype=DTYPES[cfg.teacher.dtype])
    vocab = None
    if s.model is not None:
        student, student_tok = load_causal_lm(s.model)
        check_same_tokenizer(tokenizer, student_tok, cfg.teacher.model, s.model)
        if teacher is None and len(tokenizer) != student.get_output_embeddings().weight.shape[0]:
            raise ValueError(
                f"the tokenizer of teacher {cfg.teacher.model!r} has {len(tokenizer)} tokens and "
                f"student {s.model!r} a vocabulary of {student.get_output_embeddings().weight.shape[0]}"
            )
        name = s.model
    else:
        try:
            student = make_student(teacher, layers=s.layers, config=s.config, seed=cfg.train.seed)
        except Exception as err:  # transformers refuses a bad architecture in many ways
            key = "layers" if s.layers is not None else "config"
            first = " ".join(str(err).split())[:300] or type(err).__name__
            raise ConfigError(
                f"config key 'student.{key}': the student cannot be built from it "
                f"({type(err).__name__}: {first})"
            ) from err
        name = "the derived student"
    student.float()
    if teacher is not None:
        vocab = shared_vocabulary(teacher, student, tokenizer, cfg.teacher.model, name)
    if vocab is not None and cached:
        raise ConfigError(
            "config key 'train.teacher_cache': the teacher's and the student's heads differ by "
            f"padding rows (the tokenizer has {vocab} tokens); the cache is for equal heads"
        )
    if cached:
        teacher = None
    if s.lora:
        student = add_lora(student, s.lora)
    if cfg.train.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(student, "activation_checkpointing_enable"):  # the newer name
            student.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return teacher, student, tokenizer, vocab


def longest_text(examples: list[Example]) -> int:
    """The most tokens any example holds."""
    return max((len(e.ids) for e in examples), default=0)


def check_positions(
    models: dict[str, Any], tokens: int, key: str = "data.max_length", extra: str = ""
) -> None:
    """Texts of ``tokens`` tokens must fit each model's positions (``max_position_embeddings``):
    a longer one would fail inside the model's forward; the error names ``key``."""
    from bdkd.llm.models import max_positions

    for who, model in models.items():
        limit = None if model is None else max_positions(model)
        if limit is not None and tokens > limit:
            raise ConfigError(
                f"config key {key!r}: the longest text has {tokens} tokens{extra}, more than the "
                f"{who}'s {limit} positions (max_position_embeddings); set {key} to at most "
                f"{limit}"
            )


def check_built_positions(cfg: LLMConfig, built: Built) -> None:
    """:func:`check_positions` for a built run: its longest text (plus, on-policy, the
    tokens the student samples) against teacher and student."""
    tc = cfg.train
    tokens = longest_text(built.train + built.val + built.test)
    extra = ""
    if tc.on_policy_fraction > 0:
        tokens += tc.max_new_tokens
        extra = " with train.max_new_tokens sampled on-policy"
    check_positions({"teacher": built.teacher, "student": built.student}, tokens, extra=extra)


MIN_CALIBRATION_TOKENS = 32
"""The fewest validation target tokens a token temperature is fitted on."""


def check_calibration_split(cfg: LLMConfig, built: Built) -> None:
    """``output.calibrated`` needs a validation split with enough target tokens to fit a
    temperature on (checked before anything is written)."""
    if not cfg.output.calibrated:
        return
    tokens = sum(max(len(e.ids) - max(e.loss_start, 1), 0) for e in built.val)
    if tokens < MIN_CALIBRATION_TOKENS:
        raise ConfigError(
            f"config key 'output.calibrated': the validation split has {tokens} target tokens, "
            f"fewer than {MIN_CALIBRATION_TOKENS} to fit a temperature on; give more "
            "validation texts (data.val_size, data.val_files) or set output.calibrated: false"
        )


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its end of sequence."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def build_data(
    cfg: LLMConfig, tokenizer: Any
) -> tuple[list[Example], list[Example], list[Example], int]:
    """(train, val, test, dropped) tokenised with ``tokenizer``."""
    d = cfg.data
    fields = Fields(d.text_field, d.prompt_field, d.completion_field, d.messages_field)
    split_seed = cfg.train.seed if d.split_seed is None else d.split_seed

    def examples(files: list[str]) -> tuple[list[Example], int]:
        rows, fmt = read_rows(files, d.format)
        if d.max_samples:
            rows = rows[: d.max_samples]
        return tokenize_rows(
            rows,
            fmt,
            tokenizer,
            fields=fields,
            max_length=d.max_length,
            prompt_tokens=d.prompt_tokens,
        )

    try:
        main, dropped = examples(d.files)
        if d.val_files or d.test_files:
            train, val, test = split_examples(
                main,
                val_size=0 if d.val_files else d.val_size,
                test_size=0 if d.test_files else d.test_size,
                seed=split_seed,
            )
            if d.val_files:
                val, more = examples(d.val_files)
                dropped += more
            if d.test_files:
                test, more = examples(d.test_files)
                dropped += more
        else:
            train, val, test = split_examples(
                main, val_size=d.val_size, test_size=d.test_size, seed=split_seed
            )
    except LMDataError as err:
        raise ConfigError(f"data: {err}") from None
    if not val or not test:
        raise ConfigError(
            "data: the validation and test splits must not be empty (data.val_size, data.test_size)"
        )
    return train, val, test, dropped


def open_teacher_cache(cfg: LLMConfig, built: Built) -> Any:
    """The run's top-k teacher cache, checked against its teacher, tokenizer and data."""
    from bdkd.llm.cache import TeacherCacheError, TopKCache, cache_key

    path = cfg.train.teacher_cache
    if not path:
        return None
    splits = {"train": built.train, "val": built.val, "test": built.test}
    try:
        cache = TopKCache(path)
        cache.check_key(
            cache_key(cfg.teacher.model, built.tokenizer, splits, cache.k, cfg.data.max_length)
        )
    except TeacherCacheError as err:
        raise ConfigError(f"config key 'train.teacher_cache': {err}") from None
    return cache


def cache_warning(objective: str, temperature: float) -> str | None:
    """Why training ``objective`` at ``temperature`` against a top-k cache is far from the live
    teacher (None for forward KL at T = 1, the case the cache serves). Measured in
    benchmarks/results/llm_topk_cache.md: at k = 128 forward KL's gradient is within 10 % of the
    full-vocabulary one, reverse KL's about 100 % off, the others 40-76 %; and a tempered tail
    bucket is tempered as one token. In training (docs/llm.md) forward KL at T = 2 ended at
    validation perplexity 410 against a top-128 cache and 158 live, and reverse KL diverged
    against the cache where the live run recovered."""
    if objective == "forward_kl" and temperature == 1.0:
        return None
    why = (
        f"objective {objective!r}"
        if objective != "forward_kl"
        else f"objective.temperature {temperature:g}"
    )
    return (
        f"llm-distill: warning: {why} against a top-k teacher cache is only an approximation "
        "(the cache serves forward KL at temperature 1; see docs/llm.md); run the teacher live "
        "for a faithful objective"
    )
