"""Trust on the device: does the calibration online distillation buys survive int8 and shift?

    python benchmarks/deployment/run.py                 # train (finished runs reused), export, measure
    python benchmarks/deployment/run.py --report-only   # tables from what has finished
    python benchmarks/deployment/run.py --smoke         # 1 epoch on 256 images: the pipeline only

Regime 1 of benchmarks/methods (2,000 Fashion-MNIST images, 40 epochs, no augmentation: the
regime where a student trained alone is over-confident), the same runs (seeds 1-5; the
teachers of KD, DKD and NKD are each seed's own). Each method trains at the setting
benchmarks/results/methods_fashion_mnist.json chose for it on seed 0's validation split (by
top-1); nothing here chooses anything. Every student is then exported twice by `bdkd export`,
with its temperature folded in: a float ONNX file, and an int8 one (static quantization,
ranges from 512 training images, the temperature refitted on the int8 file's validation
outputs). Everything is measured from the written files with onnxruntime: top-1, ECE, NLL,
AURC, the abstention coverage at 5 % selective risk and the LAC conformal set at 90 %
coverage (thresholds fitted on validation), and the corruption suite of `bdkd eval --shift`
(8 corruptions x 5 severities) on each file. The tables go to docs/results/deployment.md, every
run's numbers to benchmarks/results/deployment_fashion_mnist.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
METHODS_DIR = ROOT / "benchmarks" / "methods"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(METHODS_DIR))

import spec as S  # noqa: E402
from run import regime_config  # noqa: E402

from bdkd import stats  # noqa: E402

REGIME = 1
METHODS = ("scratch", "kd", "dkd", "nkd", "dml", "bdkd_hard")
LABELS = {m: S.METHODS[m]["label"] for m in METHODS}
CHOSEN = ROOT / "benchmarks" / "results" / "methods_fashion_mnist.json"
MD = ROOT / "docs" / "results" / "deployment.md"
RAW = ROOT / "benchmarks" / "results" / "deployment_fashion_mnist.json"


def chosen_settings() -> dict[str, dict]:
    """Each method's setting chosen by top-1 on seed 0 (the committed methods benchmark)."""
    methods = json.loads(CHOSEN.read_text())["regimes"][str(REGIME)]["methods"]
    out = {}
    for name in METHODS:
        setting = dict(methods[name]["sweep"][methods[name]["chosen"]["accuracy"]]["spec"])
        setting.pop("name", None)  # the runner before bdkd tune stored the method's name
        if S.METHODS[name]["method"] == "dkd":
            setting.setdefault("warmup_epochs", S.REGIMES[REGIME]["dkd_warmup"])
        out[name] = setting
    return out


def train_students(runs: Path, smoke: bool, workers: int, train: bool) -> dict[str, dict]:
    """The chosen settings on the report seeds, through bdkd tune in the methods benchmark's
    regime-1 directory (its finished runs are these runs; anything missing is trained):
    method -> seed -> run directory."""
    from bdkd.tune import TuneOptions, run_tune

    entries = {
        name: {
            "method": S.METHODS[name]["method"],
            "label": S.METHODS[name]["label"],
            "space": {k: [v] for k, v in setting.items()},
        }
        for name, setting in chosen_settings().items()
        if name != "scratch"
    }
    opts = TuneOptions(
        methods=list(entries),
        out=runs / f"regime{REGIME}",
        seeds=len(S.REPORT_SEEDS),
        backend="local",
        max_concurrent=workers,
        spaces=entries,
        command="python benchmarks/deployment/run.py",
    )
    data = run_tune(regime_config(REGIME, smoke), opts, report=False, train=train)
    return {
        name: {int(seed): str(runs / f"regime{REGIME}" / d) for seed, d in dirs.items()}
        for name, e in data["entries"].items()
        for dirs in [e["report_dirs"].get("top1", {})]
    }


def deploy_one(run_dir: str) -> dict:
    """Export the run's student (float and int8, T folded in), measure both files and their
    shift suite; reuses what a previous call left in RUN/deploy/."""
    import torch

    torch.set_num_threads(1)
    from bdkd.deploy.export import export_run
    from bdkd.deploy.formats import load_exported
    from bdkd.deploy.run import load_run
    from bdkd.deploy.shift import shift_suite
    from bdkd.files import write_json

    run, started = Path(run_dir), time.perf_counter()
    out = run / "deploy"
    done = out / "measured.json"
    if done.is_file():
        return {"dir": run_dir, "seconds": 0.0}
    out.mkdir(exist_ok=True)
    records = {}
    for kind, extra in (("float", {}), ("int8", {"quantize": "int8"})):
        records[kind] = export_run(
            run, out / f"{kind}.onnx", calibrated=True, force=True, force_temperature=True, **extra
        )
    dep = load_run(run)
    shifts = {
        kind: shift_suite(dep, load_exported(out / f"{kind}.onnx", "onnx")) for kind in records
    }
    write_json(done, {"exports": records, "shift": shifts})
    return {"dir": run_dir, "seconds": time.perf_counter() - started}


def deploy_all(dirs: list[str], workers: int) -> None:
    pending = [d for d in dirs if not (Path(d) / "deploy" / "measured.json").is_file()]
    context = multiprocessing.get_context("spawn")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(deploy_one, pending):
            print(
                f"[{time.strftime('%H:%M:%S')}] measured {result['dir']} ({result['seconds']:.0f}s)",
                flush=True,
            )


# --------------------------------------------------------------------------- the numbers


def numbers(run: Path) -> dict | None:
    """The measurements of one run's exported files (None until they exist)."""
    path = run / "deploy" / "measured.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    f, q = m["exports"]["float"], m["exports"]["int8"]
    return {
        "float_top1": f["test"]["accuracy"],
        "float_ece": f["test"]["ece"],
        "float_nll": f["test"]["nll"],
        "int8_top1": q["test"]["accuracy"],
        "int8_ece_before": q["int8_before_refit"]["ece"],
        "int8_ece": q["test"]["ece"],
        "int8_nll_before": q["int8_before_refit"]["nll"],
        "int8_nll": q["test"]["nll"],
        "refit_temperature": q["temperature"],
        "float_temperature": f["temperature"],
        "agreement": q["agreement_with_float"],
        "float_aurc": f["test"]["aurc"],
        "int8_aurc": q["test"]["aurc"],
        "int8_abstain_coverage": q["abstention"]["test_coverage"],
        "int8_abstain_risk": q["abstention"]["test_risk"],
        "int8_lac_size": q["conformal"]["lac_size"],
        "int8_lac_coverage": q["conformal"]["lac_coverage"],
        "float_shift_ece": m["shift"]["float"]["mean"]["ece"],
        "int8_shift_ece": m["shift"]["int8"]["mean"]["ece"],
        "int8_shift_top1": m["shift"]["int8"]["mean"]["accuracy"],
        "float_size": f["size_bytes"],
        "int8_size": q["size_bytes"],
        "float_latency_1": f["latency_ms_per_image"]["batch_1"],
        "int8_latency_1": q["latency_ms_per_image"]["batch_1"],
    }


def collect(students: dict[str, dict[int, str]]) -> dict[str, dict[int, dict]]:
    data: dict[str, dict[int, dict]] = {}
    for name in METHODS:
        per_seed = {}
        for seed, run in students.get(name, {}).items():
            n = numbers(Path(run))
            if n is not None:
                per_seed[seed] = n
        data[name] = per_seed
    return data


def cell(values: list[float | None], scale: float = 100.0, digits: int = 2) -> str:
    """mean ± std of the values that exist (a risk is None where nothing was answered)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def table(data: dict, columns: list[tuple[str, str, float, int]]) -> list[str]:
    lines = [
        "| student | " + " | ".join(c[1] for c in columns) + " | seeds |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, per_seed in data.items():
        cells = [cell([n[key] for n in per_seed.values()], s, d) for key, _, s, d in columns]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {len(per_seed)} |")
    return lines


PAIRED = (
    ("int8_ece", "int8 ECE % (T refitted)", 100.0),
    ("int8_shift_ece", "int8 ECE % under shift (suite mean)", 100.0),
    ("int8_aurc", "int8 AURC (x100)", 100.0),
    ("int8_lac_size", "int8 LAC set size at 90 %", 1.0),
)


def paired_lines(data: dict, reference: str) -> list[str]:
    """``reference`` minus every other method, seed by seed, Holm-adjusted per metric."""
    others = [m for m in data if m != reference]
    lines = [
        f"{LABELS[reference]} minus each student, paired over seeds: mean difference, 95 % "
        "t interval, Holm-adjusted p (over the five comparisons of each column); negative is "
        "better for every column.",
        "",
        "| minus | " + " | ".join(label for _, label, _ in PAIRED) + " |",
        "|---|" + "---|" * len(PAIRED),
    ]
    cells: dict[str, list[str]] = {m: [] for m in others}
    for key, _, scale in PAIRED:
        results = {}
        for m in others:
            seeds = sorted(set(data[reference]) & set(data[m]))
            if len(seeds) < 2:
                continue
            seeds = [s for s in seeds if None not in (data[reference][s][key], data[m][s][key])]
            if len(seeds) < 2:
                continue
            a = [scale * data[reference][s][key] for s in seeds]
            b = [scale * data[m][s][key] for s in seeds]
            results[m] = stats.paired(a, b)
        adjusted = dict(zip(results, stats.holm([r.p for r in results.values()]), strict=True))
        for m in others:
            cells[m].append(results[m].text(2, adjusted[m]) if m in results else "–")
    for m in others:
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells[m]) + " |")
    return [*lines, ""]


def write_report(data: dict, runs: Path, smoke: bool, minutes: float) -> None:
    from bdkd.files import write_json, write_text

    seeds = sorted({s for per in data.values() for s in per})
    first = next((per[s] for per in data.values() for s in per), None)
    lines = [
        "# Trust on the device: int8, abstention, conformal sets, shift",
        "",
        "Generated by `python benchmarks/deployment/run.py` (tables alone: `--report-only`) "
        "from regime 1 of [the methods benchmark](fashion_mnist.md): 2,000 Fashion-MNIST "
        "training images, 40 epochs, cnn_medium teacher, cnn_small student, each method at the "
        "setting that benchmark chose on seed 0's validation split, seeds "
        f"{', '.join(map(str, seeds)) or '–'}. Every number is measured from the exported "
        "files with onnxruntime on the 10,000 test images: the float file with the run's "
        "temperature folded in, the int8 file (static QDQ quantization, per-channel weights, "
        "ranges from 512 training images) with the temperature refitted on its own "
        "validation outputs. Thresholds (abstention at 5 % selective risk, LAC sets at 90 % "
        "coverage) are fitted on the validation split. Mean ± std over seeds.",
        "",
        "## Float and int8",
        "",
        *table(
            data,
            [
                ("float_top1", "float top-1 %", 100.0, 2),
                ("int8_top1", "int8 top-1 %", 100.0, 2),
                ("agreement", "int8 = float %", 100.0, 2),
                ("float_ece", "float ECE %", 100.0, 2),
                ("int8_ece_before", "int8 ECE %, float T", 100.0, 2),
                ("int8_ece", "int8 ECE %, T refitted", 100.0, 2),
                ("float_nll", "float NLL", 1.0, 4),
                ("int8_nll", "int8 NLL", 1.0, 4),
            ],
        ),
        "",
        "## Knowing when to abstain, on the int8 file",
        "",
        *table(
            data,
            [
                ("float_aurc", "float AURC x100", 100.0, 3),
                ("int8_aurc", "int8 AURC x100", 100.0, 3),
                ("int8_abstain_coverage", "answered at ≤ 5 % risk %", 100.0, 1),
                ("int8_abstain_risk", "its test risk %", 100.0, 2),
                ("int8_lac_size", "LAC set size (90 %)", 1.0, 2),
                ("int8_lac_coverage", "LAC coverage %", 100.0, 2),
            ],
        ),
        "",
        "## Under shift (8 corruptions x 5 severities, suite mean)",
        "",
        *table(
            data,
            [
                ("float_ece", "clean float ECE %", 100.0, 2),
                ("float_shift_ece", "float ECE % shifted", 100.0, 2),
                ("int8_shift_ece", "int8 ECE % shifted", 100.0, 2),
                ("int8_shift_top1", "int8 top-1 % shifted", 100.0, 2),
            ],
        ),
        "",
        "## Paired comparisons",
        "",
        *paired_lines(data, "bdkd_hard"),
        *paired_lines(data, "dml"),
    ]
    if first is not None:
        size = f"{first['float_size']:,} vs {first['int8_size']:,} bytes"
        lines += [
            f"File sizes (first run): {size}; latency per image at batch 1 "
            f"{first['float_latency_1']:.3f} ms (float) vs {first['int8_latency_1']:.3f} ms "
            "(int8) on this machine's CPU, one thread.",
            "",
        ]
    md = runs / "deployment_smoke.md" if smoke else MD
    lines += [f"Compute: {minutes:.0f} minutes for this invocation.", ""]
    if md.is_file() and "\n## Reading" in md.read_text():  # written by hand from the tables
        lines += ["## Reading" + md.read_text().split("\n## Reading", 1)[1].rstrip("\n"), ""]
    raw = runs / "deployment_smoke.json" if smoke else RAW
    write_text(md, "\n".join(lines))
    write_json(raw, {"protocol": __doc__, "chosen": chosen_settings(), "seeds": data})
    print(f"wrote {md} and {raw}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs" / "methods"))
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    runs = Path(args.runs) / ("smoke" if args.smoke else "")
    runs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    students = train_students(runs, args.smoke, args.workers, not args.report_only)
    if not args.report_only:
        deploy_all([d for per in students.values() for d in per.values()], args.workers)
    write_report(collect(students), runs, args.smoke, (time.perf_counter() - started) / 60)


if __name__ == "__main__":
    main()
