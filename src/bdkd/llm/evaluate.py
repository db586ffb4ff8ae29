"""Evaluating causal LMs: next-token metrics, greedy continuations, `bdkd llm-eval`.

:class:`NextTokenTask` is the next-token task of the engine's one evaluation loop
(:func:`bdkd.engine.evaluate.evaluate_networks`); :func:`evaluate_lm` streams a student's
metrics (perplexity, next-token accuracy, token ECE / NLL / Brier, agreement with the
teacher) over examples, sharded over a process group; :func:`greedy` generates continuations;
:func:`lm_report` writes the markdown table.

`bdkd llm-eval MODEL --data FILE --out DIR` (:func:`evaluate_model`): any model directory,
cached hub id or GGUF file is evaluated on local data (the formats of :mod:`bdkd.llm.data`;
every row is evaluated, nothing is split off), and, given a teacher, how often the model's top
token is the teacher's (with the teacher's own metrics beside). ``DIR`` gets ``summary.json``
and ``report.md``; it is a bdkd output directory, never overwritten without ``--force``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from bdkd.config import MAX_BINS
from bdkd.engine.build import resolve_device
from bdkd.engine.evaluate import evaluate_networks
from bdkd.engine.rundir import check_run_dir, create_run_dir
from bdkd.files import write_json, write_text
from bdkd.llm.batch import LMBatch
from bdkd.llm.data import (
    Example,
    Fields,
    LMDataError,
    collate,
    prompt_batch,
    read_rows,
    tokenize_rows,
)
from bdkd.llm.metrics import TokenMetrics
from bdkd.llm.parallel import Parallel
from bdkd.report import markdown_table

__all__ = [
    "LM_KEYS",
    "LMTask",
    "NextTokenTask",
    "evaluate_lm",
    "evaluate_model",
    "greedy",
    "lm_report",
    "strip_after_eos",
]


class NextTokenTask:
    """Next-token prediction, the LLM side's task for
    :func:`bdkd.engine.evaluate.evaluate_networks`: a batch is an
    :class:`~bdkd.llm.batch.LMBatch` (with, for a cached teacher, its top-k teacher); the
    logits at position t predict token t + 1 where the target mask is set; metrics stream in
    :class:`TokenMetrics`."""

    name = "next_token"

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins

    def predict(self, network: Any, batch: Any) -> tuple[Any, ...]:
        lm, cached = batch if isinstance(batch, tuple) else (batch, None)
        out = network(input_ids=lm.input_ids, attention_mask=lm.attention_mask)
        prediction = (out.logits[:, :-1], lm.input_ids[:, 1:], lm.target_mask())
        return prediction if cached is None else (*prediction, cached)

    def accumulator(self, network: str = "") -> TokenMetrics:
        return TokenMetrics(n_bins=self.bins)


LMTask = NextTokenTask
"""The earlier name of :class:`NextTokenTask`."""


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
        NextTokenTask(bins),
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


def strip_after_eos(seqs: list[list[int]], eos: int | None) -> list[list[int]]:
    """Each sequence cut before its first end-of-sequence token ``eos``."""
    if eos is None:
        return seqs
    return [s[: s.index(eos)] if eos in s else s for s in seqs]


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


def _read_examples(
    data: list[str],
    fmt: str,
    tokenizer: Any,
    fields: Fields,
    max_length: int,
    max_samples: int | None,
) -> tuple[list[Example], int]:
    """The tokenised examples of ``data`` (and how many texts were dropped)."""
    try:
        rows, kind = read_rows(data, fmt)
        if max_samples:
            rows = rows[:max_samples]
        examples, dropped = tokenize_rows(
            rows, kind, tokenizer, fields=fields, max_length=max_length
        )
    except LMDataError as err:
        raise ValueError(f"--data: {err}") from None
    if not examples:
        raise ValueError(f"--data: no usable text in {data}")
    return examples, dropped


def evaluate_model(
    model: str,
    data: list[str],
    out: str | Path,
    *,
    teacher: str | None = None,
    fmt: str = "auto",
    fields: Fields = Fields(),  # noqa: B008
    max_length: int = 512,
    max_samples: int | None = None,
    batch: int = 16,
    bins: int = 15,
    device: str = "auto",
    force: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` (and compare with ``teacher``) on ``data``; write ``out``."""
    from bdkd.llm.models import (
        check_same_vocabulary,
        describe_source,
        load_causal_lm,
        max_positions,
    )

    if not 1 <= bins <= MAX_BINS:
        raise ValueError(f"--bins must be in [1, {MAX_BINS}], got {bins}")
    if batch < 1 or max_length < 2:
        raise ValueError("--batch must be >= 1 and --max-length >= 2")
    out = Path(out)
    check_run_dir(out, force=force, kind="llm-eval")
    for name in [model] + ([teacher] if teacher else []):
        describe_source(name)
    for f in data:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--data {f}: no such file")
    dev = resolve_device(device)
    net, tokenizer = load_causal_lm(model)
    if tokenizer is None:
        raise ValueError(f"{model}: no tokenizer found beside the model")
    examples, dropped = _read_examples(data, fmt, tokenizer, fields, max_length, max_samples)
    longest = max(len(e.ids) for e in examples)
    limit = max_positions(net)
    if limit is not None and longest > limit:
        raise ValueError(
            f"--max-length {max_length}: the longest text has {longest} tokens, more than the "
            f"{limit} positions of {model} (max_position_embeddings); set --max-length {limit}"
        )
    ref = None
    if teacher:
        ref, _ = load_causal_lm(teacher, tokenizer=False)
        check_same_vocabulary(ref, net, teacher, model)
        ref.to(dev).eval()
    net.to(dev).float().eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    teacher_metrics = TokenMetrics(n_bins=bins) if ref is not None else None
    results = evaluate_lm(
        net, ref, examples, int(pad), dev, batch=batch, bins=bins, teacher_metrics=teacher_metrics
    )
    rows_out = {"model": results}
    if teacher_metrics is not None:
        rows_out["teacher"] = teacher_metrics.compute()
    summary = {
        "model": model,
        "teacher": teacher,
        "data": [str(f) for f in data],
        "texts": len(examples),
        "dropped_texts": dropped,
        "bins": bins,
        "perplexity": results["perplexity"],
        "ece": results["ece"],
        "results": rows_out,
    }
    create_run_dir(out, force=force, kind="llm-eval", subdirs=())
    write_json(out / "summary.json", summary)
    write_text(out / "report.md", lm_report(summary, f"{model} on {', '.join(map(str, data))}"))
    return summary
