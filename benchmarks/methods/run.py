"""Every method on Fashion-MNIST with an equal tuning budget, 5 seeds, paired statistics.

    python benchmarks/methods/run.py                 # regimes 1, 2, 3 (hours on 2 cores)
    python benchmarks/methods/run.py --regimes 1     # one regime
    python benchmarks/methods/run.py --report-only   # tabulate what has finished
    python benchmarks/methods/run.py --smoke         # 1 epoch on 256 images: the pipeline only

The protocol is in spec.py: six settings per method chosen on seed 0's validation split (by
top-1 for the main tables, by NLL for the second), the chosen settings trained on seeds 1-5
(the only runs reported), paired comparisons over those seeds, and BD-KD's ablations.

Runs go to benchmarks/runs/methods/ (a finished run is reused, a killed one resumed, so the
benchmark can be stopped and restarted at any time, and run in parts with --regimes);
``--workers`` runs that many jobs side by side, one thread each (offline runs of a seed
share one teacher-logit cache, filled by the first of them). The tables go to
docs/results/fashion_mnist.md, every run's numbers and settings to
benchmarks/results/methods_fashion_mnist.json, the wall-clock of every job to
benchmarks/runs/methods/ledger.jsonl.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import spec as S  # noqa: E402

from bdkd.config import apply_overrides, read_yaml  # noqa: E402

# --------------------------------------------------------------------------- jobs


def base_config(regime: int, seed: int, smoke: bool) -> dict:
    data = apply_overrides(read_yaml(HERE / "configs" / S.REGIMES[regime]["base"]), [])
    data["train"] = {**data.get("train", {}), "seed": seed, "progress": False}
    if smoke:
        data["train"]["epochs"] = 1
        data["data"]["train_size"] = 256
        data["data"]["val_size"] = 128
    return data


def job(
    runs: Path, regime: int, seed: int, name: str, method: dict, kind: str, smoke: bool
) -> dict:
    """One run: its directory, config and the runs it needs first."""
    r = S.REGIMES[regime]
    seed_dir = runs / f"regime{regime}" / f"seed{seed}"
    teacher_dir = seed_dir / "teacher"
    method = copy.deepcopy(method)
    if method.get("name") == "dkd":
        method["warmup_epochs"] = r["dkd_warmup"]
    cfg = base_config(regime, seed, smoke)
    deps: list[str] = []
    if kind == "teacher":
        networks = {"teacher": copy.deepcopy(r["teacher"])}
    elif kind in ("scratch", "self"):
        networks = {"student": copy.deepcopy(r["student"])}
    elif kind == "online":
        networks = {"teacher": copy.deepcopy(r["teacher"]), "student": copy.deepcopy(r["student"])}
    else:  # offline: the seed's pre-trained teacher, its logits cached for every offline run
        networks = {
            "teacher": {**copy.deepcopy(r["teacher"]), "checkpoint": str(teacher_dir)},
            "student": copy.deepcopy(r["student"]),
        }
        cfg["train"]["teacher_cache"] = str(seed_dir / "teacher-cache")
        cfg["train"]["teacher_cache_dtype"] = "fp32"
        deps.append(str(teacher_dir))
    cfg["method"] = method
    cfg["networks"] = networks
    return {
        "dir": str(seed_dir / name),
        "regime": regime,
        "seed": seed,
        "kind": kind,
        "config": cfg,
        "deps": deps,
    }


def run_job(spec: dict) -> dict:
    """Train one job (reuse a finished run, resume a killed one); return its wall-clock."""
    import torch

    torch.set_num_threads(spec["threads"])
    from bdkd.config import validate
    from bdkd.engine import Trainer

    run_dir = Path(spec["dir"])
    if (run_dir / "summary.json").is_file():
        return {"dir": spec["dir"], "seconds": 0.0, "reused": True}
    cfg = validate(spec["config"])
    resume = (run_dir / "checkpoints" / "last.pt").is_file()
    started = time.perf_counter()
    Trainer(cfg, run_dir, resume=resume, force=not resume).fit()
    return {"dir": spec["dir"], "seconds": time.perf_counter() - started, "reused": False}


def done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "summary.json").is_file()


# --------------------------------------------------------------------------- selection


def val_metrics(run_dir: Path) -> dict:
    """The deployed network's validation metrics at the last epoch."""
    summary = json.loads((run_dir / "summary.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return last["val"][summary["deployed"]]


def choose(runs: Path, regime: int, method: str) -> dict[str, int]:
    """Index of the chosen setting of ``method`` under each selection rule (seed 0's val);
    ties go to the earlier setting of the grid."""
    grid = S.METHODS[method]["grid"]
    seed_dir = runs / f"regime{regime}" / f"seed{S.SELECTION_SEED}"
    vals = [val_metrics(seed_dir / f"{method}-{i}") for i in range(len(grid))]
    chosen = {}
    for metric, (_, direction) in S.SELECTIONS.items():
        sign = -1.0 if direction == "max" else 1.0
        chosen[metric] = min(range(len(grid)), key=lambda i: (sign * vals[i][metric], i))
    return chosen


def first_jobs(runs: Path, regime: int, smoke: bool) -> list[dict]:
    """Teachers of every seed, the sweeps on the selection seed, scratch on the report seeds."""
    jobs = []
    for seed in (S.SELECTION_SEED, *S.REPORT_SEEDS):
        jobs.append(job(runs, regime, seed, "teacher", {"name": "scratch"}, "teacher", smoke))
    for seed in S.REPORT_SEEDS:
        jobs.append(job(runs, regime, seed, "scratch-0", {"name": "scratch"}, "scratch", smoke))
    for method in S.REGIME_METHODS[regime]:
        m = S.METHODS[method]
        if m["kind"] == "scratch":
            continue
        for i, setting in enumerate(m["grid"]):
            jobs.append(
                job(runs, regime, S.SELECTION_SEED, f"{method}-{i}", setting, m["kind"], smoke)
            )
    return jobs


def second_jobs(runs: Path, regime: int, smoke: bool) -> list[dict]:
    """The chosen settings on the report seeds, and (regime 1) BD-KD's ablations."""
    jobs = []
    chosen_bdkd = None
    for method in S.REGIME_METHODS[regime]:
        m = S.METHODS[method]
        if m["kind"] == "scratch":
            continue
        chosen = choose(runs, regime, method)
        if method == S.BDKD:
            chosen_bdkd = m["grid"][chosen["accuracy"]]
        for index in sorted(set(chosen.values())):
            # the main (top-1) table first, then the ablations, then the NLL table's extra runs
            priority = 1 if index == chosen["accuracy"] else 3
            for seed in S.REPORT_SEEDS:
                j = job(runs, regime, seed, f"{method}-{index}", m["grid"][index], m["kind"], smoke)
                jobs.append({**j, "priority": priority})
    if regime == 1 and chosen_bdkd is not None:
        for name, ab in S.ablations(chosen_bdkd).items():
            for seed in S.REPORT_SEEDS:
                j = job(runs, regime, seed, f"ablation-{name}", ab["spec"], ab["kind"], smoke)
                jobs.append({**j, "priority": 2})
    return jobs


# --------------------------------------------------------------------------- scheduling


def with_cache_fillers(jobs: list[dict]) -> list[dict]:
    """Order ``jobs`` by priority (first stage, main table, ablations, NLL table; stable);
    offline jobs of one (regime, seed) share a cache: all but the first wait for it."""
    jobs = sorted(jobs, key=lambda j: j.get("priority", 0))
    fillers: dict[tuple[int, int], str] = {}
    for j in jobs:
        if j["kind"] != "offline":
            continue
        key = (j["regime"], j["seed"])
        teacher = str(Path(j["dir"]).parent / "teacher")
        j["deps"] = [d for d in j["deps"] if d == teacher]
        if key not in fillers:
            fillers[key] = j["dir"]
        elif fillers[key] != j["dir"]:
            j["deps"].append(fillers[key])
    return jobs


def execute(jobs: list[dict], workers: int, ledger: Path, more) -> None:  # noqa: ANN001
    """Run ``jobs`` (and those ``more()`` adds as earlier ones finish) on ``workers``
    processes; a job starts once every run it depends on is finished."""
    pending = [j for j in jobs if not done(j["dir"])]
    seen = {j["dir"] for j in jobs}
    running: dict[Future, dict] = {}
    context = multiprocessing.get_context("spawn")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        while pending or running:
            busy = {j["dir"] for j in running.values()}
            for j in list(pending):
                if len(running) >= workers:
                    break
                if j["dir"] in busy or not all(done(d) for d in j["deps"]):
                    continue
                if any(j["dir"] == other["dir"] for other in running.values()):
                    continue
                pending.remove(j)
                print(f"[{time.strftime('%H:%M:%S')}] start {j['dir']}", flush=True)
                running[pool.submit(run_job, {**j, "threads": 1})] = j
            if not running:
                blocked = [j["dir"] for j in pending]
                raise RuntimeError(f"jobs wait for runs that never finish: {blocked[:3]}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                j = running.pop(future)
                result = future.result()
                print(
                    f"[{time.strftime('%H:%M:%S')}] done  {j['dir']} ({result['seconds']:.0f}s)",
                    flush=True,
                )
                if not result["reused"]:
                    with open(ledger, "a") as f:
                        f.write(json.dumps({**result, "threads": 1, "time": time.time()}) + "\n")
            for j in more():
                if j["dir"] not in seen:
                    seen.add(j["dir"])
                    if not done(j["dir"]):
                        pending.append(j)
            pending = with_cache_fillers(pending)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "methods"))
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch on 256 images, results under --runs/smoke"
    )
    args = parser.parse_args()
    runs = Path(args.runs) / ("smoke" if args.smoke else "")
    runs.mkdir(parents=True, exist_ok=True)
    ledger = runs / "ledger.jsonl"
    started = time.perf_counter()
    if not args.report_only:
        jobs = [j for r in args.regimes for j in first_jobs(runs, r, args.smoke)]
        expanded: set[int] = set()

        def more() -> list[dict]:
            out = []
            for r in args.regimes:
                if r in expanded:
                    continue
                if all(done(j["dir"]) for j in first_jobs(runs, r, args.smoke)):
                    expanded.add(r)
                    out += second_jobs(runs, r, args.smoke)
            return out

        execute(with_cache_fillers(jobs + more()), args.workers, ledger, more)
    md = (
        runs / "fashion_mnist_smoke.md"
        if args.smoke
        else ROOT / "docs" / "results" / "fashion_mnist.md"
    )
    raw_path = (
        runs / "methods_smoke.json"
        if args.smoke
        else ROOT / "benchmarks" / "results" / "methods_fashion_mnist.json"
    )
    report.write(runs, args.regimes, md, raw_path, ledger, smoke=args.smoke)
    print(f"wrote {md} and {raw_path} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
