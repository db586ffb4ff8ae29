"""Every method on Fashion-MNIST with an equal tuning budget, 5 seeds, paired statistics.

    python benchmarks/methods/run.py                 # regimes 1-4 (hours on 2 cores)
    python benchmarks/methods/run.py --regimes 4     # one regime
    python benchmarks/methods/run.py --report-only   # tabulate what has finished
    python benchmarks/methods/run.py --smoke         # 1 epoch on 256 images: the pipeline only

A thin user of `bdkd tune` (docs/tune.md): each regime is one tune of its config
(configs/regime<N>_base.yaml plus spec.py's networks) over spec.py's spaces, six settings
per method chosen on seed 0's validation split (by top-1 for the main tables, by NLL for the
second), the chosen settings trained on seeds 1-5; regime 1 adds BD-KD's ablations at BD-KD
(hard)'s chosen setting (a second tune of one-setting entries in the same directory, so the
teachers and the students alone are shared). Runs go to benchmarks/runs/methods/regime<N>/
(bdkd tune reuses finished runs and resumes killed ones, so the benchmark can be stopped
and restarted at any time). The tables go to docs/results/fashion_mnist.md, every run's
numbers to benchmarks/results/methods_fashion_mnist.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import spec as S  # noqa: E402

from bdkd.config import read_yaml  # noqa: E402
from bdkd.tune import TuneOptions, run_tune  # noqa: E402


def regime_config(regime: int, smoke: bool) -> dict:
    """The regime's complete config: its base file and its teacher and student."""
    r = S.REGIMES[regime]
    data = read_yaml(HERE / "configs" / r["base"])
    data["networks"] = {
        "teacher": copy.deepcopy(r["teacher"]),
        "student": copy.deepcopy(r["student"]),
    }
    data["method"] = {"name": "scratch"}
    data["train"] = {**data.get("train", {}), "progress": False}
    if smoke:
        data["train"]["epochs"] = 1
        data["data"]["train_size"] = 256
        data["data"]["val_size"] = 128
        data["eval"] = {**data.get("eval", {}), "val_every": 1}
    return data


def options(runs: Path, regime: int, methods: list[str], spaces: dict, args) -> TuneOptions:  # noqa: ANN001
    return TuneOptions(
        methods=methods,
        out=runs / f"regime{regime}",
        budget=S.BUDGET,
        seeds=len(S.REPORT_SEEDS),
        select=[S.SELECTIONS[rule][0] for rule in S.SELECTIONS],
        backend=args.backend,
        max_concurrent=args.workers,
        spaces=spaces,
        command="python benchmarks/methods/run.py",
    )


def run_regime(runs: Path, regime: int, args) -> tuple[dict, dict | None]:  # noqa: ANN001
    """The regime's tune (and, for regime 1, the ablations' tune); their report data."""
    config = regime_config(regime, args.smoke)
    spaces = S.spaces(regime)
    methods = [m for m in S.REGIME_METHODS[regime] if m != "scratch"]
    opts = options(runs, regime, methods, spaces, args)
    main_data = run_tune(config, opts, report=False, train=not args.report_only)
    ablations = None
    chosen = main_data["entries"].get(S.BDKD, {}).get("chosen", {}).get("top1")
    if regime == 1 and chosen is not None:
        setting = main_data["entries"][S.BDKD]["sweep"][chosen]["setting"]
        extra = S.ablations(setting)
        opts = options(runs, regime, list(extra), extra, args)
        ablations = run_tune(config, opts, report=False, train=not args.report_only)
    return main_data, ablations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="local", choices=("local", "ray", "auto"))
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "methods"))
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument(
        "--smoke", action="store_true", help="1 epoch on 256 images, results under --runs/smoke"
    )
    args = parser.parse_args()
    runs = Path(args.runs) / ("smoke" if args.smoke else "")
    started = time.perf_counter()
    # --report-only: regimes without a tune directory here keep the committed JSON's numbers
    regimes = [
        r
        for r in args.regimes
        if not args.report_only or (runs / f"regime{r}" / "tune.json").is_file()
    ]
    results = {regime: run_regime(runs, regime, args) for regime in regimes}
    if args.smoke:
        md, raw = runs / "fashion_mnist_smoke.md", runs / "methods_smoke.json"
    else:
        md = ROOT / "docs" / "results" / "fashion_mnist.md"
        raw = ROOT / "benchmarks" / "results" / "methods_fashion_mnist.json"
    report.write(runs, results, md, raw, smoke=args.smoke)
    print(f"wrote {md} and {raw} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
