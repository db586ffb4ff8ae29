"""`bdkd llm-distill CONFIG`: distil a causal LM into another, offline or on-policy.

A run: the config is validated and every path checked before any model loads; teacher and
student are loaded (any causal LM: a ``save_pretrained`` directory, a cached hub id, a GGUF
file, or the student derived from the teacher) and their vocabularies compared; the data
files are tokenised with the teacher's tokenizer and split into train / val / test by seed;
one dry forward pass checks the objective before the run directory is touched. Each step
draws micro-batches from train (or, with probability ``on_policy_fraction``, sequences the
student samples from train prompts, as in GKD), accumulates their gradients normalised over
the step's target tokens and steps AdamW; a non-finite loss stops the run at that step.
Every ``eval_every`` steps the student is evaluated on val (perplexity, next-token accuracy,
token ECE / NLL / Brier, agreement with the teacher) and a checkpoint is written atomically;
``--resume`` continues exactly. At the end: the same metrics on test for student and
teacher, ROUGE-L of greedy continuations of test prompts, and the student saved as a
``save_pretrained`` directory ``RUN/student`` (safetensors, with the tokenizer) that
``AutoModelForCausalLM.from_pretrained`` loads.

Run directories, checkpoints, config validation, progress display and TensorBoard are the
image engine's (:mod:`bdkd.engine`).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bdkd.config import (
    MAX_SEED,
    ConfigError,
    apply_overrides,
    build_section,
    check_run_name,
    read_yaml,
    spec,
)
from bdkd.data.augment import epoch_seed
from bdkd.engine.checkpoint import (
    load_checkpoint,
    load_network_state,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from bdkd.engine.loop import (
    CHECKPOINT_FORMAT,
    TrainingDiverged,
    check_checkpoint_matches,
    check_resumable,
)
from bdkd.engine.progress import Progress, open_tensorboard
from bdkd.engine.rundir import (
    append_jsonl,
    check_run_dir,
    create_run_dir,
    truncate_metrics,
    write_text_atomic,
)
from bdkd.files import write_json, write_text
from bdkd.llm.data import (
    FORMATS,
    FORTUNES,
    Example,
    Fields,
    LMDataError,
    collate,
    prompt_batch,
    read_rows,
    split_examples,
    tokenize_rows,
)
from bdkd.llm.distill import CausalLMDistiller, LMBatch, accumulate_step, sample_student
from bdkd.llm.metrics import TokenMetrics, mean_rouge_l

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


@dataclass
class ObjectiveConfig:
    name: str = "forward_kl"
    temperature: float = spec(1.0, gt=0)
    params: dict[str, float] = field(default_factory=dict)
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
    from bdkd.llm.objectives import TOKEN_OBJECTIVES, token_rows

    if cfg.objective.name not in TOKEN_OBJECTIVES:
        raise ConfigError(
            f"config key 'objective.name': must be one of {list(TOKEN_OBJECTIVES)}, got {cfg.objective.name!r}"
        )
    try:
        token_rows(cfg.objective.name, **cfg.objective.params)
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
    for key in ("files", "val_files", "test_files"):
        for f in getattr(cfg.data, key):
            if not Path(f).is_file():
                how = " (apt-get install fortunes)" if f == FORTUNES else ""
                raise ConfigError(f"config key 'data.{key}': {f} does not exist{how}")


# --------------------------------------------------------------------------- building


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


def build_models(cfg: LLMConfig) -> tuple[Any, Any, Any]:
    """(teacher, student, tokenizer): the student loaded or derived, vocabularies checked,
    LoRA added when asked."""
    from bdkd.llm.models import (
        add_lora,
        check_same_tokenizer,
        check_same_vocabulary,
        load_causal_lm,
        make_student,
    )

    teacher, tokenizer = load_causal_lm(cfg.teacher.model, dtype=DTYPES[cfg.teacher.dtype])
    s = cfg.student
    if s.model is not None:
        student, student_tok = load_causal_lm(s.model)
        check_same_vocabulary(teacher, student, cfg.teacher.model, s.model)
        check_same_tokenizer(tokenizer, student_tok, cfg.teacher.model, s.model)
        name = s.model
    else:
        try:
            student = make_student(teacher, layers=s.layers, config=s.config, seed=cfg.train.seed)
        except (ValueError, TypeError) as err:
            key = "layers" if s.layers is not None else "config"
            raise ConfigError(f"config key 'student.{key}': {err}") from None
        name = "the derived student"
    student.float()
    check_same_vocabulary(teacher, student, cfg.teacher.model, name)
    if s.lora:
        student = add_lora(student, s.lora)
    return teacher, student, tokenizer


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


def build_data(
    cfg: LLMConfig, tokenizer: Any
) -> tuple[list[Example], list[Example], list[Example], int]:
    """(train, val, test, dropped) tokenised with ``tokenizer``."""
    d = cfg.data
    fields = Fields(d.text_field, d.prompt_field, d.completion_field, d.messages_field)

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
                seed=cfg.train.seed,
            )
            if d.val_files:
                val, more = examples(d.val_files)
                dropped += more
            if d.test_files:
                test, more = examples(d.test_files)
                dropped += more
        else:
            train, val, test = split_examples(
                main, val_size=d.val_size, test_size=d.test_size, seed=cfg.train.seed
            )
    except LMDataError as err:
        raise ConfigError(f"data: {err}") from None
    if not val or not test:
        raise ConfigError(
            "data: the validation and test splits must not be empty (data.val_size, data.test_size)"
        )
    return train, val, test, dropped


# --------------------------------------------------------------------------- evaluation


class LMTask:
    """Next-token prediction for :func:`bdkd.engine.evaluate.evaluate_networks`: a batch is
    an :class:`~bdkd.llm.distill.LMBatch`; metrics stream in :class:`TokenMetrics`."""

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins

    def predict(self, network: Any, batch: LMBatch) -> tuple[Any, Any, Any]:
        out = network(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        return out.logits[:, :-1], batch.input_ids[:, 1:], batch.target_mask()

    def accumulator(self, network: str = "") -> TokenMetrics:
        return TokenMetrics(n_bins=self.bins)


def evaluate_lm(
    student: Any,
    teacher: Any | None,
    examples: list[Example],
    pad: int,
    device: torch.device,
    *,
    batch: int = 16,
    bins: int = 15,
    teacher_metrics: TokenMetrics | None = None,
) -> dict[str, float]:
    """The student's next-token metrics over the target tokens of ``examples`` and its
    agreement with ``teacher``; the teacher's own metrics go to ``teacher_metrics``."""
    from bdkd.engine.evaluate import evaluate_networks

    networks = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    was = student.training
    student.eval()
    result = evaluate_networks(
        networks,
        (collate(examples[i : i + batch], pad, device) for i in range(0, len(examples), batch)),
        LMTask(bins),
        reference=None if teacher is None else "teacher",
    )
    student.train(was)
    if teacher_metrics is not None and teacher is not None:
        teacher_metrics.bins += result.accumulators["teacher"].bins
        teacher_metrics.totals += result.accumulators["teacher"].totals
    return result.accumulators["student"].compute()


@torch.no_grad()
def greedy(
    model: Any, examples: list[Example], max_new_tokens: int, pad: int, device: torch.device
) -> list[list[int]]:
    """Greedy continuations of the examples' prompts (token ids, without the prompt)."""
    ids, mask = prompt_batch(examples, pad, device)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return [row[ids.shape[1] :].tolist() for row in out]


def _strip_after_eos(seqs: list[list[int]], eos: int | None) -> list[list[int]]:
    if eos is None:
        return seqs
    return [s[: s.index(eos)] if eos in s else s for s in seqs]


# --------------------------------------------------------------------------- the run


def _micro_batches(
    cfg: LLMConfig, built: Built, step: int, distiller: CausalLMDistiller, device: torch.device
) -> list[LMBatch]:
    tc = cfg.train
    rng = random.Random(epoch_seed(tc.seed, step))
    micro = []
    for _ in range(tc.accumulation):
        picked = [built.train[rng.randrange(len(built.train))] for _ in range(tc.micro_batch)]
        if rng.random() < tc.on_policy_fraction:
            ids, mask = prompt_batch(picked, built.pad, device)
            micro.append(
                sample_student(
                    distiller.student,
                    ids,
                    mask,
                    max_new_tokens=tc.max_new_tokens,
                    temperature=tc.sample_temperature,
                    pad_token_id=built.pad,
                    eos_token_id=built.tokenizer.eos_token_id,
                    generator_seed=rng.randrange(2**31),
                )
            )
        else:
            micro.append(collate(picked, built.pad, device))
    return micro


def run_llm_distill(
    cfg: LLMConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    protect: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Train and evaluate one LLM distillation config in ``run_dir``."""
    from bdkd.engine.build import resolve_device
    from bdkd.llm.models import save_student

    run_dir = Path(run_dir)
    marker = check_resumable(run_dir) if resume else None
    if not resume:
        check_run_dir(run_dir, force=force, kind="llm-distill", protect=protect)
    check_inputs(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    teacher, student, tokenizer = build_models(cfg)
    train, val, test, dropped = build_data(cfg, tokenizer)
    built = Built(teacher, student, tokenizer, train, val, test, dropped, _pad_id(tokenizer))
    t = cfg.objective
    distiller = CausalLMDistiller(
        student,
        teacher,
        objective=t.name,
        temperature=t.temperature,
        distill_weight=t.distill_weight,
        ce_weight=t.ce_weight,
        chunk_size=cfg.train.chunk_size,
        **t.params,
    ).to(device)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    # one dry forward on two training texts, before the run directory is touched
    with torch.no_grad():
        terms = distiller(collate(train[:2], built.pad, device))
    bad = [k for k, v in terms.items() if not torch.isfinite(v)]
    if bad:
        raise TrainingDiverged(
            f"objective {t.name!r}: the loss {bad} is not finite on the first texts before any "
            "training; check objective.params and objective.temperature"
        )
    start, elapsed = 0, 0.0
    ckpt = run_dir / "checkpoints" / "last.pt"
    if resume:
        run_id = str(marker["run_id"])
        state = load_checkpoint(ckpt, map_location=device)
        check_checkpoint_matches(state, cfg.to_dict(), marker, ckpt)
        load_network_state(student, state["networks"]["student"], f"checkpoint {ckpt}")
        optimizer.load_state_dict(state["optimizers"]["student"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))  # wall-clock before the interruption
        truncate_metrics(run_dir / "metrics.jsonl", start + 1, key="step")
    else:
        run_id = create_run_dir(run_dir, force=force, kind="llm-distill", protect=protect)
        import yaml

        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if dropped:
        print(
            f"llm-distill: {dropped} text(s) left nothing to learn within data.max_length "
            f"{cfg.data.max_length} and were skipped",
            file=sys.stderr,
        )
    tc = cfg.train
    board = open_tensorboard(run_dir)
    began = time.perf_counter() - elapsed
    progress = Progress(tc.progress, tc.steps, "llm-distill")
    for step in range(start, tc.steps):
        distiller.train()
        micro = _micro_batches(cfg, built, step, distiller, device)
        terms = accumulate_step(distiller, micro, optimizer, grad_clip=tc.grad_clip)
        bad = [k for k, v in terms.items() if not (v == v and abs(v) != float("inf"))]
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {step + 1}/{tc.steps}: loss term(s) {bad} of the "
                f"student are not finite; the last good checkpoint stays in {ckpt}; lower "
                f"train.lr (now {tc.lr:g}) or set train.grad_clip"
            )
        if progress.due(step + 1):
            progress.update(step + 1, terms)
        if board is not None:
            for k, v in terms.items():
                board.add_scalar(f"train/{k}", v, step + 1)
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
            progress.close()
            record = {
                "step": step + 1,
                "train": terms,
                "val": evaluate_lm(student, teacher, val, built.pad, device, batch=tc.eval_batch),
                "seconds": time.perf_counter() - began,
            }
            append_jsonl(run_dir / "metrics.jsonl", record)
            if board is not None:
                for k, v in record["val"].items():
                    board.add_scalar(f"val/{k}", v, step + 1)
            save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "run_id": run_id,
                    "step": step + 1,
                    "deployed": "student",
                    "networks": {"student": student.state_dict()},
                    "optimizers": {"student": optimizer.state_dict()},
                    "rng": rng_state(),
                    "seconds": record["seconds"],
                    "config": cfg.to_dict(),
                },
                ckpt,
            )
            v = record["val"]
            print(
                f"step {step + 1}/{tc.steps} val: perplexity {v['perplexity']:.2f}, "
                f"token ECE {100 * v['ece']:.2f} %, agreement {100 * v['teacher_top1_agreement']:.1f} %",
                file=sys.stderr,
                flush=True,
            )
    summary = finish(cfg, built, run_dir, device, began)
    if cfg.output.save_student:
        save_student(student, tokenizer, run_dir / "student")
        summary["student_dir"] = str(run_dir / "student")
        write_json(run_dir / "summary.json", summary)
    if board is not None:
        board.close()
    return summary


def finish(
    cfg: LLMConfig, built: Built, run_dir: Path, device: torch.device, began: float
) -> dict[str, Any]:
    """Test metrics of student and teacher, ROUGE-L, summary.json and report.md."""
    tc, t = cfg.train, cfg.objective
    student, teacher = built.student, built.teacher
    teacher_metrics = TokenMetrics()
    results = evaluate_lm(
        student,
        teacher,
        built.test,
        built.pad,
        device,
        batch=tc.eval_batch,
        teacher_metrics=teacher_metrics,
    )
    teacher_results = teacher_metrics.compute()
    eos = built.tokenizer.eos_token_id
    s_gen = _strip_after_eos(greedy(student, built.test, tc.max_new_tokens, built.pad, device), eos)
    t_gen = _strip_after_eos(greedy(teacher, built.test, tc.max_new_tokens, built.pad, device), eos)
    refs = _strip_after_eos([e.completion()[: tc.max_new_tokens] for e in built.test], eos)
    results["rouge_l_vs_teacher"] = mean_rouge_l(s_gen, t_gen)
    results["rouge_l_vs_reference"] = mean_rouge_l(s_gen, refs)
    teacher_results["rouge_l_vs_reference"] = mean_rouge_l(t_gen, refs)
    from bdkd.llm.objectives import effective_objective

    effective, _ = effective_objective(t.name, t.params)
    summary = {
        "objective": t.name,
        "effective_objective": effective,
        "params": t.params,
        "temperature": t.temperature,
        "teacher": cfg.teacher.model,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "steps": tc.steps,
        "seed": tc.seed,
        "splits": {"train": len(built.train), "val": len(built.val), "test": len(built.test)},
        "dropped_texts": built.dropped,
        "seconds": time.perf_counter() - began,
        "results": {"student": results, "teacher": teacher_results},
    }
    write_json(run_dir / "summary.json", summary)
    write_text(run_dir / "report.md", lm_report(summary, f"{t.name} distillation"))
    return summary


LM_KEYS = (
    "perplexity",
    "accuracy",
    "ece",
    "nll",
    "brier",
    "teacher_top1_agreement",
    "rouge_l_vs_reference",
)


def lm_report(summary: dict[str, Any], title: str) -> str:
    """A markdown report of token-level metrics (student and teacher rows where present)."""
    from bdkd.report import markdown_table

    rows = summary["results"]
    n = next(iter(rows.values())).get("tokens")
    lines = [
        f"# {title}",
        "",
        markdown_table(rows, first="model", keys=LM_KEYS),
        "",
        f"Over {int(n) if n else '?'} target tokens; 'top-1 %' is next-token accuracy; ECE with "
        f"{summary.get('bins', 15)} bins.",
        "",
    ]
    return "\n".join(lines)
