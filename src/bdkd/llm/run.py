"""`bdkd llm-distill CONFIG`: distil a causal LM on a text corpus, offline or on-policy.

A run: tokenised corpus (teacher's tokenizer) split into train / val / test by seed; each
step draws micro-batches from train (or, with probability ``on_policy_fraction``, sequences
the student samples from train prompts, as in GKD), accumulates their gradients normalised
over the step's target tokens, and steps AdamW. Every ``eval_every`` steps the student is
evaluated on val (perplexity, next-token accuracy, token ECE / NLL / Brier, agreement with
the teacher) and a checkpoint is written atomically; ``--resume`` continues exactly. At the
end: the same metrics on test and ROUGE-L of the student's greedy continuations of test
prompts against the teacher's and against the corpus text.
"""

from __future__ import annotations

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
from bdkd.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_atomic,
    seed_everything,
    set_rng_state,
)
from bdkd.engine.loop import (
    CHECKPOINT_FORMAT,
    check_checkpoint_matches,
    check_resumable,
    load_network_state,
)
from bdkd.engine.rundir import (
    append_jsonl,
    check_run_dir,
    create_run_dir,
    truncate_metrics,
    write_text_atomic,
)
from bdkd.files import write_json
from bdkd.llm.distill import CausalLMDistiller, LMBatch, accumulate_step, sample_student
from bdkd.llm.metrics import TokenMetrics, mean_rouge_l

FORTUNES = "/usr/share/games/fortunes/fortunes"


@dataclass
class TeacherConfig:
    source: str = spec("smollm2", choices=("smollm2", "gguf", "tiny"))
    path: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudentConfig:
    init: str = spec("random", choices=("random", "teacher_layers"))
    layers: list[int] | int = spec(4, ge=1, items={"ge": 0})
    hidden_size: int = spec(256, ge=1)
    num_attention_heads: int = spec(4, ge=1)
    intermediate_size: int | None = spec(None, ge=1)


@dataclass
class CorpusConfig:
    # fortunes (%-separated entries) | lines (one text per line)
    corpus: str = spec("fortunes", choices=("fortunes", "lines"))
    path: str | None = None
    max_length: int = spec(64, ge=2)
    prompt_tokens: int = spec(8, ge=1)
    val_size: int = spec(64, ge=1)
    test_size: int = spec(64, ge=1)
    max_samples: int | None = spec(None, ge=1)


@dataclass
class ObjectiveConfig:
    name: str = "forward_kl"
    temperature: float = spec(1.0, gt=0)
    params: dict[str, float] = field(default_factory=dict)
    ce_weight: float = spec(0.0, ge=0)


@dataclass
class LLMTrainConfig:
    steps: int = spec(200, ge=1)
    micro_batch: int = spec(8, ge=1)
    accumulation: int = spec(2, ge=1)
    lr: float = spec(1e-3, gt=0)
    weight_decay: float = spec(0.0, ge=0)
    grad_clip: float | None = spec(1.0, gt=0)
    seed: int = spec(0, ge=0, le=MAX_SEED)
    on_policy_fraction: float = spec(0.0, ge=0, le=1)
    sample_temperature: float = spec(1.0, gt=0)
    max_new_tokens: int = spec(24, ge=1)
    eval_every: int = spec(50, ge=1)
    chunk_size: int = spec(1024, ge=1)
    device: str = "auto"
    threads: int | None = spec(None, ge=1, le=4096)


@dataclass
class LLMOutputConfig:
    dir: str = "runs"
    name: str | None = None


@dataclass
class LLMConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: CorpusConfig = field(default_factory=CorpusConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: LLMTrainConfig = field(default_factory=LLMTrainConfig)
    output: LLMOutputConfig = field(default_factory=LLMOutputConfig)


def load_llm_config(path: str | Path, overrides: list[str] | None = None) -> LLMConfig:
    """Read, override and validate an LLM distillation config."""
    return validate_llm_config(apply_overrides(read_yaml(path), overrides or []))


def validate_llm_config(data: dict[str, Any]) -> LLMConfig:
    """Validate a plain dict into an :class:`LLMConfig` (errors name the key)."""
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
    if cfg.data.prompt_tokens + 1 >= cfg.data.max_length:
        raise ConfigError(
            f"config key 'data.max_length': must exceed data.prompt_tokens + 1 "
            f"({cfg.data.prompt_tokens + 1}), got {cfg.data.max_length}"
        )
    check_run_name(cfg.output.name)
    return cfg


# --------------------------------------------------------------------------- corpus, tokenizer


class ByteTokenizer:
    """A byte-level tokenizer (ids 0-255, pad 256, eos 257) for tiny test models."""

    pad_token_id, eos_token_id, vocab_size = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def read_corpus(cfg: CorpusConfig) -> list[str]:
    """The texts of the corpus (fortunes: entries separated by lines holding '%')."""
    path = Path(cfg.path or FORTUNES)
    if not path.is_file():
        how = (
            "apt-get install fortunes (or fortunes-min)"
            if cfg.corpus == "fortunes"
            else "set data.path"
        )
        raise ConfigError(f"config key 'data.path': {path} does not exist; {how}")
    text = path.read_text(errors="replace")
    if cfg.corpus == "fortunes":
        texts = [t.strip() for t in text.split("\n%\n")]
    elif cfg.corpus == "lines":
        texts = [t.strip() for t in text.splitlines()]
    else:
        raise ConfigError(
            f"config key 'data.corpus': must be 'fortunes' or 'lines', got {cfg.corpus!r}"
        )
    texts = [t for t in texts if t]
    return texts[: cfg.max_samples] if cfg.max_samples else texts


def tokenize(texts: list[str], tokenizer: Any, cfg: CorpusConfig) -> list[list[int]]:
    """Token ids of each text, ending in EOS, cut at ``max_length``; shorter than a prompt
    plus one target token are dropped."""
    eos = tokenizer.eos_token_id
    out = []
    for text in texts:
        ids = (
            tokenizer.encode(text)
            if isinstance(tokenizer, ByteTokenizer)
            else tokenizer(text).input_ids
        ) + [eos]
        ids = ids[: cfg.max_length]
        if len(ids) > cfg.prompt_tokens + 1:
            out.append(ids)
    return out


def collate(seqs: list[list[int]], pad: int, device: torch.device) -> LMBatch:
    """Right-padded batch; every non-padding token after the first is a target."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
    return LMBatch(ids.to(device), attention.to(device), attention.clone().to(device))


# --------------------------------------------------------------------------- the run


def build_models(cfg: LLMConfig) -> tuple[Any, Any, Any]:
    """(teacher, student, tokenizer)."""
    from bdkd.llm.models import load_gguf, make_student, smollm2_gguf_path

    t = cfg.teacher
    if t.source == "smollm2":
        teacher, tokenizer = load_gguf(smollm2_gguf_path())
    elif t.source == "gguf":
        if not t.path:
            raise ConfigError("config key 'teacher.path': a .gguf file is needed for source gguf")
        teacher, tokenizer = load_gguf(t.path)
    elif t.source == "tiny":
        import transformers

        tokenizer = ByteTokenizer()
        torch.manual_seed(cfg.train.seed + 1)
        spec = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            **t.tiny,
        }
        spec.setdefault("num_key_value_heads", spec["num_attention_heads"])
        teacher = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=tokenizer.vocab_size,
                max_position_embeddings=256,
                tie_word_embeddings=False,
                **spec,
            )
        )
    else:
        raise ConfigError(
            f"config key 'teacher.source': must be smollm2, gguf or tiny, got {t.source!r}"
        )
    s = cfg.student
    student = make_student(
        teacher,
        layers=s.layers,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_attention_heads=s.num_attention_heads,
        init=s.init,
        seed=cfg.train.seed,
    )
    return teacher, student, tokenizer


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad if pad is not None else tokenizer.eos_token_id)


@torch.no_grad()
def evaluate_lm(
    distiller: CausalLMDistiller,
    seqs: list[list[int]],
    pad: int,
    device: torch.device,
    batch: int = 16,
    teacher_metrics: TokenMetrics | None = None,
) -> dict[str, float]:
    """Student next-token metrics and teacher agreement over ``seqs``; the teacher's own
    next-token metrics are accumulated into ``teacher_metrics`` when it is given."""
    metrics = TokenMetrics()
    distiller.eval()
    for i in range(0, len(seqs), batch):
        b = collate(seqs[i : i + batch], pad, device)
        s = distiller.student(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        t = distiller.teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits[:, :-1]
        metrics.update(s, b.input_ids[:, 1:], b.target_mask(), t)
        if teacher_metrics is not None:
            teacher_metrics.update(t, b.input_ids[:, 1:], b.target_mask())
    return metrics.compute()


@torch.no_grad()
def greedy(model: Any, prompts: torch.Tensor, max_new_tokens: int, pad: int) -> list[list[int]]:
    out = model.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad,
    )
    return [row[prompts.shape[1] :].tolist() for row in out]


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

    marker = check_resumable(run_dir) if resume else None
    if not resume:
        check_run_dir(run_dir, force=force, protect=protect)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    teacher, student, tokenizer = build_models(cfg)
    pad = _pad_id(tokenizer)
    seqs = tokenize(read_corpus(cfg.data), tokenizer, cfg.data)
    order = list(range(len(seqs)))
    random.Random(cfg.train.seed).shuffle(order)
    n_val, n_test = cfg.data.val_size, cfg.data.test_size
    if len(seqs) <= n_val + n_test:
        raise ConfigError(
            f"data: {len(seqs)} usable texts cannot hold val_size {n_val} + test_size {n_test} and a train split"
        )
    test = [seqs[i] for i in order[:n_test]]
    val = [seqs[i] for i in order[n_test : n_test + n_val]]
    train = [seqs[i] for i in order[n_test + n_val :]]
    t = cfg.objective
    distiller = CausalLMDistiller(
        student,
        teacher,
        objective=t.name,
        temperature=t.temperature,
        ce_weight=t.ce_weight,
        chunk_size=cfg.train.chunk_size,
        **t.params,
    ).to(device)
    optimizer = torch.optim.AdamW(
        student.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    start, elapsed = 0, 0.0
    ckpt = run_dir / "checkpoints" / "last.pt"
    if resume:
        run_id = str(marker["run_id"])
        state = load_checkpoint(ckpt, map_location=device)
        check_checkpoint_matches(state, _asdict(cfg), marker, ckpt)
        load_network_state(student, state["networks"]["student"], f"checkpoint {ckpt}")
        optimizer.load_state_dict(state["optimizers"]["student"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))  # wall-clock before the interruption
        truncate_metrics(run_dir / "metrics.jsonl", start + 1, key="step")
    else:
        run_id = create_run_dir(run_dir, force=force, kind="llm-distill", protect=protect)
        import yaml

        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(_asdict(cfg), sort_keys=False))
    tc = cfg.train
    began = time.perf_counter() - elapsed
    for step in range(start, tc.steps):
        rng = random.Random(tc.seed * 1_000_003 + step)
        distiller.train()
        micro = []
        for _ in range(tc.accumulation):
            picked = [train[rng.randrange(len(train))] for _ in range(tc.micro_batch)]
            if rng.random() < tc.on_policy_fraction:
                prompts = torch.tensor([s[: cfg.data.prompt_tokens] for s in picked], device=device)
                micro.append(
                    sample_student(
                        student,
                        prompts,
                        torch.ones_like(prompts),
                        max_new_tokens=tc.max_new_tokens,
                        temperature=tc.sample_temperature,
                        pad_token_id=pad,
                        generator_seed=rng.randrange(2**31),
                    )
                )
            else:
                micro.append(collate(picked, pad, device))
        terms = accumulate_step(distiller, micro, optimizer, grad_clip=tc.grad_clip)
        if (step + 1) % tc.eval_every == 0 or step + 1 == tc.steps:
            record = {
                "step": step + 1,
                "train": terms,
                "val": evaluate_lm(distiller, val, pad, device),
                "seconds": time.perf_counter() - began,
            }
            append_jsonl(run_dir / "metrics.jsonl", record)
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
                    "config": _asdict(cfg),
                },
                ckpt,
            )
            print(
                f"step {step + 1}/{tc.steps} {terms} val ppl {record['val']['perplexity']:.2f} ece {100 * record['val']['ece']:.2f}",
                file=sys.stderr,
                flush=True,
            )
    teacher_metrics = TokenMetrics()
    results = evaluate_lm(distiller, test, pad, device, teacher_metrics=teacher_metrics)
    teacher_results = teacher_metrics.compute()
    prompts = torch.tensor([s[: cfg.data.prompt_tokens] for s in test], device=device)
    s_gen = greedy(student, prompts, tc.max_new_tokens, pad)
    t_gen = greedy(teacher, prompts, tc.max_new_tokens, pad)
    refs = [s[cfg.data.prompt_tokens : cfg.data.prompt_tokens + tc.max_new_tokens] for s in test]
    results["rouge_l_vs_teacher"] = mean_rouge_l(s_gen, t_gen)
    results["rouge_l_vs_reference"] = mean_rouge_l(s_gen, refs)
    teacher_results["rouge_l_vs_reference"] = mean_rouge_l(t_gen, refs)
    summary = {
        "objective": t.name,
        "params": t.params,
        "teacher": cfg.teacher.source,
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "steps": tc.steps,
        "seed": tc.seed,
        "seconds": time.perf_counter() - began,
        "results": {"student": results, "teacher": teacher_results},
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def _asdict(cfg: LLMConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)
