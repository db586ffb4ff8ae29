"""Peak memory and time of the fused LM-head + divergence path against the naive path.

At SmolLM2's size: B*T = 8192 tokens, hidden 576, vocabulary 49152, float32. Two settings:

- teacher given as logits, forward KL: naive ``token_loss(hidden @ W.T, teacher_logits)``
  against ``fused_linear_divergence(hidden, W, teacher_logits, chunk_size=...)``;
- teacher given as hidden states + LM head, JSD (beta 0.5): naive (both logits built) against
  our fused path (neither built), and against Liger-Kernel's pure-torch chunked
  ``LigerFusedLinearJSDLoss`` when ``liger_kernel`` is importable (an optional comparison;
  ``pip install --no-deps liger-kernel`` is enough for its chunked losses, no Triton needed).

Each measurement runs in a fresh subprocess; memory as in benchmarks/divergence_memory.py (CPU:
peak RSS over the inputs; CUDA: max_memory_allocated). The loss value is printed beside each,
so that the paths can be seen to compute the same thing.

    python benchmarks/llm_loss_memory.py [--tokens 8192] [--device cpu]

Writes benchmarks/results/llm_loss_memory_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _worker(mode: str, tokens: int, hidden: int, vocab: int, chunk: int, device: str) -> dict:
    import torch

    from bdkd.llm import fused_linear_divergence, token_loss

    torch.manual_seed(0)
    h = torch.randn(tokens, hidden, device=device).requires_grad_()
    w = (torch.randn(vocab, hidden, device=device) * 0.02).requires_grad_()
    th = torch.randn(tokens, hidden, device=device)
    tw = torch.randn(vocab, hidden, device=device) * 0.02
    t = None
    if mode.startswith("logits"):
        t = torch.randn(tokens, vocab, device=device)
    liger = None
    if mode == "hidden-liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(
            weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False, chunk_size=chunk
        )
        labels = torch.randint(0, vocab, (tokens,), device=device)
    value = []

    def step():
        h.grad = w.grad = None
        if mode == "logits-naive":
            loss = token_loss(h @ w.T, t)
        elif mode == "logits-fused":
            loss = fused_linear_divergence(h, w, t, chunk_size=chunk)
        elif mode == "hidden-naive":
            loss = token_loss(h @ w.T, th @ tw.T, objective="js_divergence")
        elif mode == "hidden-fused":
            loss = fused_linear_divergence(
                h,
                w,
                teacher_hidden=th,
                teacher_weight=tw,
                objective="js_divergence",
                chunk_size=chunk,
            )
        else:
            loss = liger(h, w, th, tw, labels)
        loss.backward()
        value[:] = [float(loss)]
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    h.grad = w.grad = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss("VmRSS")
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss("VmHWM")
    return {"seconds": seconds, "extra_peak_bytes": peak - base, "loss": value[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(
            json.dumps(
                _worker(
                    args.worker, args.tokens, args.hidden, args.vocab, args.chunk_size, args.device
                )
            )
        )
        return
    import importlib.util

    import torch

    modes = ["logits-naive", "logits-fused", "hidden-naive", "hidden-fused"]
    if importlib.util.find_spec("liger_kernel") is not None:
        modes.append("hidden-liger")
    results = {}
    for mode in modes:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            mode,
            "--tokens",
            str(args.tokens),
            "--hidden",
            str(args.hidden),
            "--vocab",
            str(args.vocab),
            "--chunk-size",
            str(args.chunk_size),
            "--device",
            args.device,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ))
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(mode, results[mode], flush=True)
    mib = 1024**2
    label = {
        "logits-naive": "naive: student logits built",
        "logits-fused": "bdkd fused",
        "hidden-naive": "naive: both logits built",
        "hidden-fused": "bdkd fused (teacher head fused too)",
        "hidden-liger": "Liger-Kernel LigerFusedLinearJSDLoss (compiled=False)",
    }
    lines = [
        f"# Fused LM head + divergence vs naive ({args.device})",
        "",
        f"Generated by `python benchmarks/llm_loss_memory.py --tokens {args.tokens} --device {args.device}`. "
        f"torch {torch.__version__}, {platform.machine()}, {torch.get_num_threads()} threads; {args.tokens} "
        f"tokens, hidden {args.hidden}, vocabulary {args.vocab}, float32, chunk_size {args.chunk_size}; one "
        "forward + backward after a warm-up, each path in a fresh process. Extra peak = peak memory "
        "minus the inputs held before it (gradients included). Ratios are against the naive path "
        "of the same setting.",
    ]
    if "hidden-liger" not in results:
        lines += ["", "liger-kernel was not installed, so its row is absent."]
    else:
        from importlib.metadata import version

        lines += [
            "",
            f"liger-kernel {version('liger-kernel')} (`pip install --no-deps liger-kernel`), its "
            "pure-torch chunked loss with weight_hard_loss=0 (its cross-entropy term is then "
            "skipped), compiled=False; the same chunk size.",
        ]
    for setting, title in (
        ("logits", "Teacher given as logits; forward KL"),
        ("hidden", "Teacher given as hidden states + LM head; JSD (beta 0.5)"),
    ):
        lines += [
            "",
            f"## {title}",
            "",
            "| path | loss | seconds | extra peak MiB | memory vs naive | time vs naive |",
            "|---|---|---|---|---|---|",
        ]
        n = results[f"{setting}-naive"]
        for mode, r in results.items():
            if not mode.startswith(setting):
                continue
            lines.append(
                f"| {label[mode]} | {r['loss']:.6f} | {r['seconds']:.2f} | "
                f"{r['extra_peak_bytes'] / mib:.0f} | {r['extra_peak_bytes'] / n['extra_peak_bytes']:.2f} | "
                f"{r['seconds'] / n['seconds']:.2f} |"
            )
    out = ROOT / "benchmarks" / "results" / f"llm_loss_memory_{args.device}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
