"""Every method on Fashion-MNIST in two regimes, several seeds; tables with mean +- std.

    python benchmarks/methods/run.py            # both regimes, 3 seeds (about 70 min, 2 cores)
    python benchmarks/methods/run.py --quick    # one seed, for a fast check

Runs go to benchmarks/runs/ (a finished run is reused, a killed one resumed); the tables go to
docs/results/fashion_mnist.md (benchmarks/results/fashion_mnist_quick.md with --quick), the raw
numbers to benchmarks/results/methods_fashion_mnist.json, and a reliability figure of the
students of scratch, KD, DML and BD-KD (seed 0, regime 1) next to the tables. The test split
is only ever reported; the sweeps for BD-KD, BDD and ABKD pick by validation NLL (seed 0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))

from bdkd.config import apply_overrides, read_yaml, validate  # noqa: E402
from bdkd.engine import Trainer  # noqa: E402
from bdkd.report import compare_runs, load_summary  # noqa: E402

TEACHER = {"teacher_r1": "cnn_large", "teacher_r2": "cnn_medium"}
STUDENT = {1: ("cnn", {"width": 14}), 2: ("cnn", {"width": 2})}

OFFLINE = {
    "kd": {"name": "kd", "temperature": 4.0, "ce_weight": 0.1, "distill_weight": 0.9},
    "dkd": {"name": "dkd", "alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": 5},
    "nkd": {"name": "nkd", "temperature": 1.0, "gamma": 1.5},
    "bdd": {"name": "bdd"},
    "abkd": {"name": "abkd", "alpha": 0.8, "beta": 0.3, "temperature": 4.0},
    "dist": {"name": "dist", "beta": 1.0, "gamma": 1.0, "temperature": 4.0},
}
ONLINE = {
    "dml": {"name": "dml", "temperature": 1.0},
    "kdcl": {"name": "kdcl", "temperature": 2.0, "ensemble": "mean"},
    "bdkd_hard": {"name": "bdkd", "rule": "hard", "temperature": 1.0},
    "bdkd_soft": {"name": "bdkd", "rule": "soft", "sharpness": 1.0, "temperature": 1.0},
}
# Alternatives tried on seed 0 and chosen by the deployed student's validation NLL.
SWEEPS = {
    "bdkd_hard": [{"temperature": 4.0}],
    "bdd": [{"forward_temperature": 2.0, "reverse_temperature": 2.0}],
    "abkd": [{"alpha": 0.5, "beta": 0.5}],
}
REGIME1 = ["scratch", *OFFLINE, *ONLINE]
REGIME2 = ["scratch", "kd", "dml", "bdkd_hard"]
LABEL = {
    "teacher": "teacher",
    "scratch": "student from scratch",
    "kd": "KD",
    "dkd": "DKD",
    "nkd": "NKD",
    "bdd": "BDD",
    "abkd": "ABKD",
    "dist": "DIST",
    "dml": "DML",
    "kdcl": "KDCL",
    "bdkd_hard": "BD-KD (hard)",
    "bdkd_soft": "BD-KD (soft)",
}
# (key, column, scale, decimals); the fitted temperature says which way the miscalibration
# goes: above 1 the network is over-confident, below 1 under-confident.
METRICS = [
    ("accuracy", "top-1 %", 100, 2),
    ("ece", "ECE %", 100, 2),
    ("adaptive_ece", "AdaECE %", 100, 2),
    ("nll", "NLL", 1, 4),
    ("brier", "Brier", 1, 4),
    ("ece_after_ts", "ECE after TS %", 100, 2),
    ("temperature", "fitted T", 1, 2),
]


def method_spec(method: str, tuned: dict[str, dict]) -> dict:
    spec = dict(OFFLINE.get(method) or ONLINE.get(method) or {"name": "scratch"})
    spec.update(tuned.get(method, {}))
    if method == "bdkd_soft" and "bdkd_hard" in tuned:
        spec.update(tuned["bdkd_hard"])
    return spec


EPOCHS_OVERRIDE: list[str] = []
REPORT_ONLY: list[bool] = [False]


def train(
    run_dir: Path, regime: int, seed: int, method: str, spec: dict, teacher_run: Path | None
) -> dict:
    """Train one run (or reuse / resume it) and return its summary."""
    if (run_dir / "summary.json").is_file():
        return load_summary(run_dir)
    if REPORT_ONLY[0]:
        return None
    base = HERE / "configs" / f"regime{regime}_base.yaml"
    data = apply_overrides(read_yaml(base), [f"train.seed={seed}", *EPOCHS_OVERRIDE])
    model, kwargs = STUDENT[regime]
    teacher_model = TEACHER[f"teacher_r{regime}"]
    student = {"model": model, "kwargs": dict(kwargs)}
    if method == "teacher":
        networks = {"student": {"model": teacher_model}}
    elif method == "scratch":
        networks = {"student": student}
    elif spec["name"] in ("dml", "kdcl", "bdkd"):
        networks = {"teacher": {"model": teacher_model}, "student": student}
    else:
        networks = {
            "teacher": {"model": teacher_model, "checkpoint": str(teacher_run)},
            "student": student,
        }
    cfg = validate({**data, "method": spec, "networks": networks})
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    start = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] regime {regime} seed {seed} {method} {spec}", flush=True)
    trainer = Trainer(cfg, run_dir, resume=resume, force=not resume)
    summary = trainer.fit()
    print(f"    done in {time.perf_counter() - start:.0f}s", flush=True)
    return summary


def val_nll(run_dir: Path) -> float:
    """The deployed student's validation NLL at the last epoch (what the sweeps choose by)."""
    summary = load_summary(run_dir)
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return last["val"][summary["deployed"]]["nll"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(rows: dict[str, list[dict]], seconds: dict[str, list[float]]) -> list[str]:
    lines = [
        "| method | seeds | " + " | ".join(m[1] for m in METRICS) + " | s / epoch |",
        "|---|---|" + "---|" * (len(METRICS) + 1),
    ]
    for method, results in rows.items():
        cells = []
        for key, _, scale, digits in METRICS:
            m, s = mean_std([r[key] * scale for r in results])
            cells.append(f"{m:.{digits}f} ± {s:.{digits}f}")
        sec = statistics.mean(seconds[method])
        lines.append(
            f"| {LABEL[method]} | {len(results)} | " + " | ".join(cells) + f" | {sec:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--regimes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs"))
    parser.add_argument("--epochs", type=int, help="smoke tests only: override every run's epochs")
    parser.add_argument(
        "--sweep-seed", type=int, default=0, help="the seed whose runs choose the swept settings"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (e.g. 1 when running two of these side by side)"
    )
    parser.add_argument("--results-md", help="write the tables here instead")
    parser.add_argument(
        "--methods", nargs="+", help="only these methods (default: all of the regime)"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing; tabulate finished runs"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    REPORT_ONLY[0] = args.report_only
    if args.epochs:
        EPOCHS_OVERRIDE.append(f"train.epochs={args.epochs}")
    seeds = [0] if args.quick else args.seeds
    runs = Path(args.runs)
    started = time.perf_counter()
    raw: dict = {"seeds": seeds, "regimes": {}}
    figure_runs: list[Path] = []
    for regime in args.regimes:
        methods = REGIME1 if regime == 1 else REGIME2
        if args.methods:
            methods = [m for m in methods if m in args.methods]
        tuned: dict[str, dict] = {}
        sweep_rows = []
        results: dict[str, list[dict]] = {"teacher": []}
        seconds: dict[str, list[float]] = {"teacher": []}
        for seed in seeds:
            base = runs / f"regime{regime}" / f"seed{seed}"
            teacher_run = base / "teacher"
            s = train(teacher_run, regime, seed, "teacher", {"name": "scratch"}, None)
            if s is not None:
                results["teacher"].append(s["results"]["student"])
                seconds["teacher"].append(s["seconds_per_epoch"])
            if regime == 1 and not tuned:
                sweep_base = runs / f"regime{regime}" / f"seed{args.sweep_seed}"
                sweep_teacher = sweep_base / "teacher"
                train(sweep_teacher, regime, args.sweep_seed, "teacher", {"name": "scratch"}, None)
                for method, alternatives in SWEEPS.items():
                    default_dir = sweep_base / method
                    train(
                        default_dir,
                        regime,
                        args.sweep_seed,
                        method,
                        method_spec(method, {}),
                        sweep_teacher,
                    )
                    if not (default_dir / "summary.json").is_file():
                        continue
                    best, best_nll = {}, val_nll(default_dir)
                    sweep_rows.append((method, method_spec(method, {}), best_nll))
                    for i, alt in enumerate(alternatives, start=1):
                        alt_dir = sweep_base / f"{method}-alt{i}"
                        spec = {**method_spec(method, {}), **alt}
                        if (
                            train(alt_dir, regime, args.sweep_seed, method, spec, sweep_teacher)
                            is None
                        ):
                            continue
                        nll = val_nll(alt_dir)
                        sweep_rows.append((method, spec, nll))
                        if nll < best_nll:
                            best, best_nll = alt, nll
                    tuned[method] = best
            for method in methods:
                spec = method_spec(method, tuned)
                run_dir = base / method
                if method in tuned and tuned[method]:
                    index = SWEEPS[method].index(tuned[method]) + 1
                    alt_dir = base / f"{method}-alt{index}"
                    run_dir = alt_dir if seed == args.sweep_seed else base / f"{method}-tuned"
                s = train(run_dir, regime, seed, method, spec, teacher_run)
                if s is None:
                    continue
                results.setdefault(method, []).append(s["results"][s["deployed"]])
                seconds.setdefault(method, []).append(s["seconds_per_epoch"])
                if (
                    regime == 1
                    and seed == seeds[0]
                    and method in ("scratch", "kd", "dml", "bdkd_hard")
                ):
                    figure_runs.append(run_dir)
        raw["regimes"][regime] = {
            "results": results,
            "seconds_per_epoch": seconds,
            "tuned": tuned,
            "sweep": [{"method": m, "spec": sp, "val_nll": v} for m, sp, v in sweep_rows],
        }
    minutes = (time.perf_counter() - started) / 60
    raw["training_minutes"] = training_minutes(runs, args.regimes, seeds)
    out_md = ROOT / (
        "benchmarks/results/fashion_mnist_quick.md"
        if args.quick
        else "docs/results/fashion_mnist.md"
    )
    if args.results_md:
        out_md = Path(args.results_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    figure = out_md.with_name(out_md.stem + "_reliability.png")
    if figure_runs:
        compare_runs(figure_runs, figure)
    write_markdown(out_md, raw, seeds, minutes, figure if figure_runs else None, args.quick)
    json_path = (
        out_md.with_suffix(".json")
        if args.results_md
        else ROOT
        / "benchmarks"
        / "results"
        / ("methods_fashion_mnist_quick.json" if args.quick else "methods_fashion_mnist.json")
    )
    json_path.write_text(json.dumps(raw, indent=1) + "\n")
    print(f"wrote {out_md} and {json_path} ({minutes:.1f} min)")


def training_minutes(runs: Path, regimes: list[int], seeds: list[int]) -> float:
    """Training time of every finished run behind the tables (teachers and sweeps included),
    from the epoch times the runs recorded: what a regeneration from scratch costs, less the
    evaluation passes."""
    total = 0.0
    for regime in regimes:
        for seed in seeds:
            for summary in sorted(
                (runs / f"regime{regime}" / f"seed{seed}").glob("*/summary.json")
            ):
                data = json.loads(summary.read_text())
                total += data["seconds_per_epoch"] * data["epochs"]
    return total / 60


def comparison(results: dict[str, list[dict]], a: str, b: str) -> str:
    """Plain numbers: a's mean minus b's, next to the seed spread."""
    parts = []
    for key, name in (("ece", "ECE"), ("accuracy", "top-1")):
        ma, sa = mean_std([r[key] * 100 for r in results[a]])
        mb, sb = mean_std([r[key] * 100 for r in results[b]])
        parts.append(f"{name} {ma - mb:+.2f} points (std {sa:.2f} vs {sb:.2f})")
    return f"{LABEL[a]} minus {LABEL[b]}: " + ", ".join(parts)


def write_markdown(
    path: Path, raw: dict, seeds: list[int], minutes: float, figure: Path | None, quick: bool
) -> None:
    # the command that regenerates the tables (tabulating alone is not how to get them)
    argv = [a for a in sys.argv[1:] if a != "--report-only"]
    cmd = " ".join(["python benchmarks/methods/run.py", *argv])
    lines = [
        "# Fashion-MNIST: every method, accuracy and calibration",
        "",
        f"Generated by `{cmd}` on this machine (2 CPU cores), seeds {seeds}: "
        f"{raw['training_minutes']:.0f} minutes of training in all (the sum of the runs' epoch "
        f"times; evaluation adds a few minutes), this invocation {minutes:.0f} minutes since "
        "finished runs are reused. "
        "Test split (10,000 images, never used to choose anything), last epoch, mean ± sample std "
        "over seeds; ECE with 15 bins; temperature for 'ECE after TS' fitted on the validation "
        "split ('fitted T' is that temperature: above 1 over-confident, below 1 under-confident). Configs: `benchmarks/methods/configs/` and the method settings in "
        "`benchmarks/methods/run.py`. Seconds per epoch are wall-clock on a shared 2-core machine.",
        "",
    ]
    titles = {
        1: "## Regime 1 — the calibration regime (2,000 training images, no augmentation, 40 epochs; student 1/5 of the teacher)",
        2: "## Regime 2 — full data, short schedule (55,000 images, 3 epochs; student 1/57 of the teacher)",
    }
    for regime, data in raw["regimes"].items():
        regime = int(regime)
        results = data["results"]
        seconds = data["seconds_per_epoch"]
        lines += [titles[regime], "", *table(results, seconds), ""]
        if data["sweep"]:
            lines += [
                "Sweeps on seed 0, chosen by the student's validation NLL (the chosen setting is used for every seed):",
                "",
            ]
            lines += ["| method | setting | val NLL |", "|---|---|---|"]
            for row in data["sweep"]:
                spec = {k: v for k, v in row["spec"].items() if k != "name"}
                lines.append(f"| {LABEL[row['method']]} | `{spec}` | {row['val_nll']:.4f} |")
            lines += [
                "",
                f"Chosen: `{data['tuned']}` (empty = the paper default); BD-KD (soft) uses BD-KD (hard)'s temperature.",
                "",
            ]
        pairs = [("bdkd_hard", "dml"), ("bdkd_hard", "kd"), ("bdkd_hard", "scratch")]
        if "bdkd_soft" in results:
            pairs.append(("bdkd_soft", "dml"))
        lines += ["Differences of means:", ""]
        lines += [
            f"- {comparison(results, a, b)}" for a, b in pairs if a in results and b in results
        ]
        lines.append("")
    if figure is not None:
        lines += [f"![reliability diagrams of the students (regime 1, seed 0)]({figure.name})", ""]
    # the reading of the numbers is written by hand under "## Reading"; keep it on regeneration
    if path.is_file() and "\n## Reading" in path.read_text():
        lines += ["## Reading" + path.read_text().split("\n## Reading", 1)[1].rstrip("\n"), ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
