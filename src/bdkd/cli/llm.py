"""`bdkd llm-distill`, `bdkd llm-cache-teacher` and `bdkd llm-eval`: causal language models."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bdkd.cli.common import add_run_flags, relaunch_distributed, run_target, wants_processes


def cmd_llm_distill(args: argparse.Namespace) -> int:
    from bdkd.engine.distributed import destroy
    from bdkd.llm.config import load_llm_config
    from bdkd.llm.trainer import run_llm_distill

    if wants_processes(args):
        return relaunch_distributed(args.argv, args.nproc)
    cfg, run_dir, resume = run_target(args, load_llm_config)
    if resume:
        summary = run_llm_distill(cfg, run_dir, resume=True)
    else:
        summary = run_llm_distill(cfg, run_dir, force=args.force, protect=(args.config,))
    destroy()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    r = summary["results"]["student"]
    objective = summary["objective"]
    if summary.get("effective_objective", objective) != objective:
        objective += f" (= {summary['effective_objective']})"
    line = (
        f"{objective}: perplexity {r['perplexity']:.2f}, next-token accuracy "
        f"{100 * r['accuracy']:.2f} %, token ECE {100 * r['ece']:.2f} %, NLL {r['nll']:.4f}, "
        f"Brier {r['brier']:.4f}"
    )
    if "teacher_top1_agreement" in r:
        line += f", teacher top-1 agreement {100 * r['teacher_top1_agreement']:.2f} %"
    if "rouge_l_vs_teacher" in r:
        line += f", ROUGE-L vs teacher {r['rouge_l_vs_teacher']:.3f}"
    print(line)
    student = f"; the student is in {summary['student_dir']}" if "student_dir" in summary else ""
    print(f"run written to {run_dir}{student}")
    return 0


def cmd_llm_cache_teacher(args: argparse.Namespace) -> int:
    from bdkd.llm.config import load_llm_config
    from bdkd.llm.run import cache_teacher
    from bdkd.shipped import resolve_config

    args.config = str(resolve_config(args.config))
    cfg = load_llm_config(args.config, args.overrides)
    meta = cache_teacher(
        cfg, args.out, k=args.k, force=args.force, batch=args.batch, protect=(args.config,)
    )
    size = sum(f.stat().st_size for f in Path(args.out).iterdir() if f.is_file())
    print(
        f"teacher cache written to {args.out}: top-{meta['k']} of {meta['tokens']} target "
        f"tokens, {meta['bytes_per_token']} bytes per token ({size / 2**20:.1f} MiB); use it "
        f"with train.teacher_cache={args.out}"
    )
    return 0


def cmd_llm_eval(args: argparse.Namespace) -> int:
    from bdkd.llm.data import Fields
    from bdkd.llm.eval_model import evaluate_model

    summary = evaluate_model(
        args.model,
        args.data,
        args.out,
        teacher=args.teacher,
        fmt=args.format,
        fields=Fields(
            args.text_field, args.prompt_field, args.completion_field, args.messages_field
        ),
        max_length=args.max_length,
        max_samples=args.max_samples,
        batch=args.batch,
        bins=args.bins,
        device=args.device,
        force=args.force,
    )
    r = summary["results"]["model"]
    line = (
        f"{args.model}: perplexity {r['perplexity']:.2f}, next-token accuracy "
        f"{100 * r['accuracy']:.2f} %, token ECE {100 * r['ece']:.2f} %, NLL {r['nll']:.4f}, "
        f"Brier {r['brier']:.4f} over {int(r['tokens'])} tokens of {summary['texts']} texts"
    )
    if "teacher_top1_agreement" in r:
        line += f"; top-1 agreement with the teacher {100 * r['teacher_top1_agreement']:.2f} %"
    print(line)
    print(f"written to {args.out} (summary.json, report.md)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from bdkd.llm.data import FORMATS

    llm = sub.add_parser(
        "llm-distill",
        help="distil a causal language model into another (any transformers model, local data)",
        description="Distil a causal LM from a YAML config (see configs/llm/ and docs/llm.md); "
        "dotted overrides as for train. The student is saved to RUN/student (save_pretrained).",
    )
    add_run_flags(
        llm, "run in N processes (torch.distributed.run): DDP, or FSDP2 with train.parallel=fsdp"
    )
    llm.set_defaults(func=cmd_llm_distill)

    cache = sub.add_parser(
        "llm-cache-teacher",
        help="compute an LLM teacher's top-k next-token distributions once, for train.teacher_cache",
        description="Run the teacher of CONFIG over every target token of its train/val/test "
        "splits and write its top-k token ids, log-probabilities and tail mass to --out "
        "(memory-mapped; 6k+2 bytes per token). A run with train.teacher_cache=OUT then "
        "never loads the teacher; the cache is refused if teacher, tokenizer or data differ.",
    )
    cache.add_argument("config")
    cache.add_argument("overrides", nargs="*")
    cache.add_argument("--out", required=True, help="the cache directory")
    cache.add_argument("--k", type=int, default=128, help="tokens kept per position (128)")
    cache.add_argument("--batch", type=int, help="texts per teacher forward (train.eval_batch)")
    cache.add_argument("--force", action="store_true", help="replace --out (a bdkd cache)")
    cache.set_defaults(func=cmd_llm_cache_teacher)

    lev = sub.add_parser(
        "llm-eval",
        help="next-token metrics of any causal LM on local data (perplexity, token ECE, ...)",
        description="Evaluate MODEL (a save_pretrained directory, a cached hub id or a .gguf "
        "file) on --data (jsonl/json/parquet with prompt/completion, chat messages or text; or "
        "plain text lines or paragraphs): perplexity, next-token accuracy, token ECE / NLL / "
        "Brier, and agreement with --teacher; writes --out/summary.json and report.md.",
    )
    lev.add_argument("model")
    lev.add_argument("--data", nargs="+", required=True, help="data files")
    lev.add_argument("--out", required=True, help="the output directory")
    lev.add_argument("--teacher", help="compare with this model (same vocabulary)")
    lev.add_argument("--format", default="auto", choices=FORMATS)
    lev.add_argument("--text-field", default="text")
    lev.add_argument("--prompt-field", default="prompt")
    lev.add_argument("--completion-field", default="completion")
    lev.add_argument("--messages-field", default="messages")
    lev.add_argument("--max-length", type=int, default=512)
    lev.add_argument("--max-samples", type=int)
    lev.add_argument("--batch", type=int, default=16)
    lev.add_argument("--bins", type=int, default=15)
    lev.add_argument("--device", default="auto")
    lev.add_argument("--force", action="store_true", help="replace --out (a bdkd output)")
    lev.set_defaults(func=cmd_llm_eval)
