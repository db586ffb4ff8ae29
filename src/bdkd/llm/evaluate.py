"""Evaluating causal LMs: next-token metrics, greedy continuations, `bdkd llm-eval`.

:class:`NextTokenTask` is the next-token task of the engine's one evaluation loop
(:func:`bdkd.engine.evaluate.evaluate_networks`); :func:`evaluate_lm` streams a student's
metrics (perplexity, next-token accuracy, token ECE / NLL / Brier, agreement with the
teacher) over examples, sharded over a process group; :func:`greedy` generates continuations;
:func:`lm_report` writes the markdown table.

:func:`run_lm` is one pass of models over examples with any task's accumulators (the
temperature fit of :mod:`bdkd.llm.calibrate` uses it); `bdkd llm-eval` is
:mod:`bdkd.llm.eval_model`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from bdkd.engine.evaluate import evaluate_networks
from bdkd.llm.batch import LMBatch
from bdkd.llm.data import (
    Example,
    collate,
    prompt_batch,
)
from bdkd.llm.metrics import TokenMetrics
from bdkd.llm.parallel import Parallel
from bdkd.report import markdown_table

__all__ = [
    "LM_KEYS",
    "LMTask",
    "NextTokenTask",
    "evaluate_lm",
    "greedy",
    "run_lm",
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

    def __init__(self, bins: int = 15, temperature: float = 1.0, vocab: int | None = None) -> None:
        self.bins, self.temperature, self.vocab = bins, temperature, vocab

    def predict(self, network: Any, batch: Any) -> tuple[Any, ...]:
        """(logits / temperature, next-token labels, target mask[, cached teacher]); with
        ``vocab``, the logits of the first ``vocab`` tokens only (a head's padding rows are
        not part of the distribution)."""
        lm, cached = batch if isinstance(batch, tuple) else (batch, None)
        out = network(input_ids=lm.input_ids, attention_mask=lm.attention_mask)
        logits = out.logits[:, :-1]
        if self.vocab is not None:
            logits = logits[..., : self.vocab]
        if self.temperature != 1.0:
            logits = logits.float() / self.temperature
        prediction = (logits, lm.input_ids[:, 1:], lm.target_mask())
        return prediction if cached is None else (*prediction, cached)

    def accumulator(self, network: str = "") -> TokenMetrics:
        return TokenMetrics(n_bins=self.bins)


LMTask = NextTokenTask
"""The earlier name of :class:`NextTokenTask`."""


def run_lm(
    networks: dict[str, Any],
    examples: list[Example],
    pad: int,
    device: torch.device,
    task: Any,
    *,
    batch: int = 16,
    cache: Any = None,
    split: str = "val",
    parallel: Parallel | None = None,
    autocast: Any = None,
) -> Any:
    """One pass of ``networks`` over ``examples`` (sharded over a process group) with
    ``task``'s accumulators (:func:`bdkd.engine.evaluate.evaluate_networks`); the teacher,
    when among them, is every other network's reference."""
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

    was = {n: net.training for n, net in networks.items()}
    for net in networks.values():
        net.eval()
    result = evaluate_networks(
        networks,
        batches(),
        task,
        reference="teacher" if "teacher" in networks else None,
        autocast=autocast or contextlib.nullcontext,
    )
    for n, net in networks.items():
        net.train(was[n])
    return result


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
    temperature: float = 1.0,
    keep: dict[str, TokenMetrics] | None = None,
    vocab: int | None = None,
) -> dict[str, float]:
    """The student's next-token metrics over the target tokens of ``examples`` and its
    agreement with the teacher (live, or from its top-k ``cache``); the live teacher's own
    metrics go to ``teacher_metrics``. ``temperature`` divides every network's logits
    (measuring a temperature-scaled model); ``keep`` receives the accumulators by network.
    In a process group each process evaluates its share and the metrics are summed."""
    networks = {"student": student} if teacher is None else {"student": student, "teacher": teacher}
    result = run_lm(
        networks,
        examples,
        pad,
        device,
        NextTokenTask(bins, temperature, vocab),
        batch=batch,
        cache=cache,
        split=split,
        parallel=parallel,
        autocast=autocast,
    )
    if keep is not None:
        keep.update(result.accumulators)
    if teacher_metrics is not None and teacher is not None:
        teacher_metrics.bins += result.accumulators["teacher"].bins
        teacher_metrics.totals += result.accumulators["teacher"].totals
        teacher_metrics.add_labels(result.accumulators["teacher"])
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
    "ece_after_ts",
    "temperature",
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
    lines += [f"**Flag:** {flag}." for flag in summary.get("flags") or []]
    calibration = {
        k: v for k, v in (summary.get("calibration") or {}).items() if v and "before" in v
    }
    if calibration:
        lines += [
            "",
            "## Calibration: a next-token temperature fitted on the validation split",
            "",
            "| model | T | ECE % | ECE % after | NLL | NLL after | Brier | Brier after | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, c in calibration.items():
            b, a = c["before"], c["after"]
            note = "; ".join(x for x in (c.get("note"), c.get("fold_note")) if x)
            if c.get("folded"):
                note = "folded into the saved head" + ("; " + note if note else "")
            lines.append(
                f"| {name} | {c['temperature']:.3f} | {100 * b['ece']:.2f} | {100 * a['ece']:.2f} "
                f"| {b['nll']:.4f} | {a['nll']:.4f} | {b['brier']:.4f} | {a['brier']:.4f} "
                f"| {note or '–'} |"
            )
        lines += ["", "![token reliability, before and after](reliability.png)", ""]
    return "\n".join(lines)
