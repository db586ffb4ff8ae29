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
    # the seed of the train / val / test split (default: train.seed); fix it to compare seeds
    # on one held-out set and to share one teacher cache between them
    split_seed: int | None = spec(None, ge=0, le=MAX_SEED)


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
    precision: str = spec("fp32", choices=("fp32", "bf16"))
    gradient_checkpointing: bool = False
    parallel: str = spec("ddp", choices=("ddp", "fsdp"))
    teacher_cache: str | None = None


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
    LoRA added when asked. With a teacher cache the teacher is None (it is loaded only when
    the student is derived from it, then dropped)."""
    from bdkd.llm.models import (
        add_lora,
        check_same_tokenizer,
        check_same_vocabulary,
        load_causal_lm,
        load_tokenizer,
        make_student,
    )

    s = cfg.student
    cached = bool(cfg.train.teacher_cache)
    if cached and s.model is not None:
        teacher, tokenizer = None, load_tokenizer(cfg.teacher.model)
    else:
        teacher, tokenizer = load_causal_lm(cfg.teacher.model, dtype=DTYPES[cfg.teacher.dtype])
    if s.model is not None:
        student, student_tok = load_causal_lm(s.model)
        if teacher is not None:
            check_same_vocabulary(teacher, student, cfg.teacher.model, s.model)
        elif len(tokenizer) != student.get_output_embeddings().weight.shape[0]:
            raise ValueError(
                f"the tokenizer of teacher {cfg.teacher.model!r} has {len(tokenizer)} tokens and "
                f"student {s.model!r} a vocabulary of {student.get_output_embeddings().weight.shape[0]}"
            )
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
    if teacher is not None:
        check_same_vocabulary(teacher, student, cfg.teacher.model, name)
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
    return teacher, student, tokenizer


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


# --------------------------------------------------------------------------- evaluation


class LMTask:
    """Next-token prediction for :func:`bdkd.engine.evaluate.evaluate_networks`: a batch is
    an :class:`~bdkd.llm.distill.LMBatch` (with, for a cached teacher, its top-k teacher);
    metrics stream in :class:`TokenMetrics`."""

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins

    def predict(self, network: Any, batch: Any) -> tuple[Any, ...]:
        lm, cached = batch if isinstance(batch, tuple) else (batch, None)
        out = network(input_ids=lm.input_ids, attention_mask=lm.attention_mask)
        prediction = (out.logits[:, :-1], lm.input_ids[:, 1:], lm.target_mask())
        return prediction if cached is None else (*prediction, cached)

    def accumulator(self, network: str = "") -> TokenMetrics:
        return TokenMetrics(n_bins=self.bins)


@dataclass
class Parallel:
    """This process's place in a process group (world 1 without one)."""

    rank: int = 0
    world: int = 1
    fsdp: bool = False

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank :: self.world]

    @property
    def main(self) -> bool:
        return self.rank == 0


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
    cache: Any = None,
    split: str = "val",
    parallel: Parallel | None = None,
    autocast: Any = None,
) -> dict[str, float]:
    """The student's next-token metrics over the target tokens of ``examples`` and its
    agreement with the teacher (live, or from its top-k ``cache``); the live teacher's own
    metrics go to ``teacher_metrics``. In a process group each process evaluates its share
    and the metrics are summed."""
    import contextlib

    from bdkd.engine.evaluate import evaluate_networks

    parallel = parallel or Parallel()
    indices = parallel.shard(list(range(len(examples))))

    # sharded models: every process runs as many forwards as the first (the largest share)
    share = -(-len(examples) // parallel.world) if parallel.fsdp else len(indices)
    rounds = -(-share // batch)

    def batches() -> Any:
        for r in range(rounds):
            chunk = indices[r * batch : (r + 1) * batch]
            if not chunk:  # an idle round: one text whose tokens all count for nothing
                lm = collate([examples[0]], pad, device)
                yield LMBatch(lm.input_ids, lm.attention_mask, torch.zeros_like(lm.loss_mask))
                continue
            lm = collate([examples[j] for j in chunk], pad, device)
            yield lm if cache is None else (lm, cache.teacher(split, chunk))

    networks = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    was = student.training
    student.eval()
    result = evaluate_networks(
        networks,
        batches(),
        LMTask(bins),
        reference=None if teacher is None else "teacher",
        autocast=autocast or contextlib.nullcontext,
    )
    student.train(was)
    if teacher_metrics is not None and teacher is not None:
        teacher_metrics.bins += result.accumulators["teacher"].bins
        teacher_metrics.totals += result.accumulators["teacher"].totals
    return result.accumulators["student"].compute()


@torch.no_grad()
def greedy(
    model: Any,
    examples: list[Example],
    max_new_tokens: int,
    pad: int,
    device: torch.device,
    parallel: Parallel | None = None,
) -> list[list[int]]:
    """Greedy continuations of the examples' prompts (token ids, without the prompt); in a
    process group each process generates its share (in step with the others when the
    model is sharded) and every process gets all of them, in order."""
    parallel = parallel or Parallel()
    mine = parallel.shard(list(range(len(examples))))
    outputs: list[list[int]] = []
    # sharded models generate in step with the others: a process with no prompts of its own
    # generates from the first one and discards it
    prompts = mine or ([0] if parallel.fsdp and examples else [])
    if prompts:
        ids, mask = prompt_batch([examples[i] for i in prompts], pad, device)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            synced_gpus=parallel.fsdp,
        )
        if mine:
            outputs = [row[ids.shape[1] :].tolist() for row in out]
    if parallel.world == 1:
        return outputs
    import torch.distributed as dist

    parts: list[Any] = [None] * parallel.world
    dist.all_gather_object(parts, list(zip(mine, outputs, strict=True)))
    ordered = dict(pair for part in parts for pair in part)
    return [ordered[i] for i in range(len(examples))]


def _strip_after_eos(seqs: list[list[int]], eos: int | None) -> list[list[int]]:
    if eos is None:
        return seqs
    return [s[: s.index(eos)] if eos in s else s for s in seqs]


# --------------------------------------------------------------------------- parallelism


def check_parallel(cfg: LLMConfig, info: Any) -> None:
    """What a process group of ``info.world_size`` needs of the config (before any model
    loads): micro-batches that divide among the processes, no LoRA under FSDP."""
    if not info.enabled:
        return
    tc = cfg.train
    if tc.micro_batch % info.world_size:
        raise ConfigError(
            f"config key 'train.micro_batch': {tc.micro_batch} texts must divide evenly among "
            f"{info.world_size} processes"
        )
    if tc.parallel == "fsdp" and cfg.student.lora:
        raise ConfigError(
            "config key 'student.lora': LoRA students train with train.parallel: ddp "
            "(their adapters are small; FSDP shards full students and teachers)"
        )


def setup_parallel(
    cfg: LLMConfig, distiller: CausalLMDistiller, device: torch.device, info: Any
) -> tuple[Parallel, Any]:
    """Wrap the models for the process group ``info`` (a
    :class:`bdkd.engine.distributed.DistInfo`): DDP around the distiller, or FSDP2 sharding of
    every decoder layer and the root of student and teacher (so a teacher larger than one
    device fits). Returns (parallel, the module a step calls)."""
    if not info.enabled:
        return Parallel(), distiller
    tc = cfg.train
    if tc.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            distiller, device_ids=[device.index] if device.type == "cuda" else None
        )
        return Parallel(info.rank, info.world_size, fsdp=False), wrapped
    from torch.distributed.fsdp import fully_shard

    from bdkd.llm.distill import decoder_and_head

    for model in (distiller.student, distiller.teacher):
        if model is None:
            continue
        decoder, _ = decoder_and_head(model)
        for layer in getattr(decoder, "layers", []):
            fully_shard(layer)
        fully_shard(model)
    distiller.sharded = True
    return Parallel(info.rank, info.world_size, fsdp=True), distiller


def full_state(model: Any, parallel: Parallel) -> dict[str, Any]:
    """The model's whole state dict on CPU (gathered from the shards under FSDP)."""
    if not parallel.fsdp:
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def full_optimizer_state(model: Any, optimizer: Any, parallel: Parallel) -> dict[str, Any]:
    if not parallel.fsdp:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_state(
    model: Any, optimizer: Any, state: dict[str, Any], parallel: Parallel, where: str
) -> None:
    """Load a whole (gathered) state into possibly sharded model and optimizer."""
    if not parallel.fsdp:
        load_network_state(model, state["networks"]["student"], where)
        optimizer.load_state_dict(state["optimizers"]["student"])
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():  # a forward leaves the root gathered: shard it again
        if isinstance(module, FSDPModule):
            module.reshard()

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, state["networks"]["student"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optimizers"]["student"], options=options)


# --------------------------------------------------------------------------- the run


def _micro_batches(
    cfg: LLMConfig,
    built: Built,
    step: int,
    student: Any,
    device: torch.device,
    parallel: Parallel,
) -> tuple[list[LMBatch], list[list[int]]]:
    """The step's micro-batches (this process's share) and their example indices. Every
    process draws the same global batch from (seed, step) and takes its share of each."""
    tc = cfg.train
    rng = random.Random(epoch_seed(tc.seed, step))
    micro, picked_indices = [], []
    for _ in range(tc.accumulation):
        picked = [rng.randrange(len(built.train)) for _ in range(tc.micro_batch)]
        on_policy = rng.random() < tc.on_policy_fraction
        seed = rng.randrange(2**31)
        mine = parallel.shard(picked)
        examples = [built.train[i] for i in mine]
        picked_indices.append(mine)
        if on_policy:
            ids, mask = prompt_batch(examples, built.pad, device)
            micro.append(
                sample_student(
                    student,
                    ids,
                    mask,
                    max_new_tokens=tc.max_new_tokens,
                    temperature=tc.sample_temperature,
                    pad_token_id=built.pad,
                    eos_token_id=built.tokenizer.eos_token_id,
                    generator_seed=seed + parallel.rank,
                )
            )
        else:
            micro.append(collate(examples, built.pad, device))
    return micro, picked_indices


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
    from bdkd.engine.build import resolve_device
    from bdkd.engine.rundir import check_run_dir
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


def run_llm_distill(
    cfg: LLMConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    force: bool = False,
    protect: tuple[str | Path, ...] = (),
) -> dict[str, Any]:
    """Train and evaluate one LLM distillation config in ``run_dir`` (in every process of a
    torchrun group; only the first writes)."""
    from bdkd.engine import distributed
    from bdkd.engine.build import autocast_factory, resolve_device
    from bdkd.llm.models import save_student

    run_dir = Path(run_dir)
    marker = check_resumable(run_dir) if resume else None
    if not resume:
        check_run_dir(run_dir, force=force, kind="llm-distill", protect=protect)
    check_inputs(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    group = distributed.init_from_env(device.type)
    check_parallel(cfg, group)
    if group.enabled and device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
    seed_everything(cfg.train.seed)
    teacher, student, tokenizer = build_models(cfg)
    train, val, test, dropped = build_data(cfg, tokenizer)
    built = Built(teacher, student, tokenizer, train, val, test, dropped, pad_id(tokenizer))
    cache = open_teacher_cache(cfg, built)
    t, tc = cfg.objective, cfg.train
    distiller = CausalLMDistiller(
        student,
        teacher,
        objective=t.name,
        temperature=t.temperature,
        distill_weight=t.distill_weight,
        ce_weight=t.ce_weight,
        chunk_size=tc.chunk_size,
        **t.params,
    ).to(device)
    parallel, step_module = setup_parallel(cfg, distiller, device, group)
    autocast = autocast_factory(device, tc.precision)
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=tc.lr, weight_decay=tc.weight_decay)
    # one dry forward on two training texts, before the run directory is touched
    with torch.no_grad(), autocast():
        probe = parallel.shard(list(range(2 * parallel.world)))
        first = [train[i % len(train)] for i in probe]
        terms = distiller(
            collate(first, built.pad, device),
            None,
            None if cache is None else cache.teacher("train", [i % len(train) for i in probe]),
        )
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
        state = load_checkpoint(ckpt, map_location="cpu")
        check_checkpoint_matches(
            state, cfg.to_dict(), marker, ckpt, lambda d: validate_llm_config(d).to_dict()
        )
        load_full_state(student, optimizer, state, parallel, f"checkpoint {ckpt}")
        set_rng_state(state["rng"])
        start = int(state["step"])
        elapsed = float(state.get("seconds", 0.0))  # wall-clock before the interruption
        if parallel.main:
            truncate_metrics(run_dir / "metrics.jsonl", start + 1, key="step")
    elif parallel.main:
        run_id = create_run_dir(run_dir, force=force, kind="llm-distill", protect=protect)
        import yaml

        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    distributed.barrier()
    if not resume and not parallel.main:
        from bdkd.engine.rundir import read_marker

        run_id = str((read_marker(run_dir) or {}).get("run_id", ""))
    warning = cache_warning(t.name, t.temperature) if cache is not None else None
    if warning and parallel.main:
        print(warning, file=sys.stderr)
    if dropped and parallel.main:
        print(
            f"llm-distill: {dropped} text(s) left nothing to learn within data.max_length "
            f"{cfg.data.max_length} and were skipped",
            file=sys.stderr,
        )
    board = open_tensorboard(run_dir) if parallel.main else None
    began = time.perf_counter() - elapsed
    progress = Progress(tc.progress and parallel.main, tc.steps, "llm-distill")
    all_reduce = distributed.all_reduce_sum if parallel.world > 1 else None
    for step in range(start, tc.steps):
        distiller.train()
        micro, indices = _micro_batches(cfg, built, step, student, device, parallel)
        cached = None if cache is None else [cache.teacher("train", i) for i in indices]
        terms = accumulate_step(
            step_module,
            micro,
            optimizer,
            grad_clip=tc.grad_clip,
            cached=cached,
            autocast=autocast,
            all_reduce=all_reduce,
            world_size=parallel.world,
        )
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
                "val": evaluate_lm(
                    student,
                    teacher,
                    val,
                    built.pad,
                    device,
                    batch=tc.eval_batch,
                    cache=cache,
                    split="val",
                    parallel=parallel,
                    autocast=autocast,
                ),
                "seconds": time.perf_counter() - began,
            }
            model_state = full_state(student, parallel)
            optimizer_state = full_optimizer_state(student, optimizer, parallel)
            if parallel.main:
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
                        "networks": {"student": model_state},
                        "optimizers": {"student": optimizer_state},
                        "rng": rng_state(),
                        "seconds": record["seconds"],
                        "config": cfg.to_dict(),
                    },
                    ckpt,
                )
                v = record["val"]
                agreement = v.get("teacher_top1_agreement")
                print(
                    f"step {step + 1}/{tc.steps} val: perplexity {v['perplexity']:.2f}, token ECE "
                    f"{100 * v['ece']:.2f} %"
                    + ("" if agreement is None else f", agreement {100 * agreement:.1f} %"),
                    file=sys.stderr,
                    flush=True,
                )
            distributed.barrier()
    summary = finish(
        cfg, built, run_dir, device, began, cache=cache, parallel=parallel, autocast=autocast
    )
    if cfg.output.save_student:
        state = full_state(student, parallel) if parallel.fsdp else None
        if parallel.main:
            save_student(student, tokenizer, run_dir / "student", state_dict=state)
            summary["student_dir"] = str(run_dir / "student")
            write_json(run_dir / "summary.json", summary)
    distributed.barrier()
    if board is not None:
        board.close()
    return summary


def finish(
    cfg: LLMConfig,
    built: Built,
    run_dir: Path,
    device: torch.device,
    began: float,
    *,
    cache: Any = None,
    parallel: Parallel | None = None,
    autocast: Any = None,
) -> dict[str, Any]:
    """Test metrics of student and teacher, ROUGE-L, summary.json and report.md."""
    parallel = parallel or Parallel()
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
        cache=cache,
        split="test",
        parallel=parallel,
        autocast=autocast,
    )
    if cache is not None:
        teacher_results = dict(cache.meta["teacher_metrics"]["test"])
    else:
        teacher_results = teacher_metrics.compute()
    eos = built.tokenizer.eos_token_id
    s_gen = _strip_after_eos(
        greedy(student, built.test, tc.max_new_tokens, built.pad, device, parallel), eos
    )
    refs = _strip_after_eos([e.completion()[: tc.max_new_tokens] for e in built.test], eos)
    results["rouge_l_vs_reference"] = mean_rouge_l(s_gen, refs)
    if teacher is not None:
        t_gen = _strip_after_eos(
            greedy(teacher, built.test, tc.max_new_tokens, built.pad, device, parallel), eos
        )
        results["rouge_l_vs_teacher"] = mean_rouge_l(s_gen, t_gen)
        teacher_results["rouge_l_vs_reference"] = mean_rouge_l(t_gen, refs)
    from bdkd.llm.objectives import effective_objective

    effective, _ = effective_objective(t.name, t.params)
    summary = {
        "objective": t.name,
        "effective_objective": effective,
        "params": t.params,
        "temperature": t.temperature,
        "teacher": cfg.teacher.model,
        "teacher_cache": None if cache is None else {"path": str(cache.path), "k": cache.k},
        "processes": parallel.world,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "teacher_parameters": None
        if teacher is None
        else sum(p.numel() for p in teacher.parameters()),
        "steps": tc.steps,
        "seed": tc.seed,
        "splits": {"train": len(built.train), "val": len(built.val), "test": len(built.test)},
        "dropped_texts": built.dropped,
        "seconds": time.perf_counter() - began,
        "results": {"student": results, "teacher": teacher_results},
    }
    if parallel.main:
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
