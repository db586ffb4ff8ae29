"""Tables of the methods benchmark: every run's numbers, paired statistics, the markdown."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import spec as S

from bdkd.report import compare_runs
from bdkd.stats import holm, mean_std, paired

# (key, column, scale, decimals); 'fitted T' says which way the miscalibration goes: above 1
# the network is over-confident, below 1 under-confident.
METRICS = [
    ("accuracy", "top-1 %", 100, 2),
    ("ece", "ECE %", 100, 2),
    ("nll", "NLL", 1, 4),
    ("brier", "Brier", 1, 4),
    ("ece_after_ts", "ECE after TS %", 100, 2),
    ("temperature", "fitted T", 1, 2),
]
PAIRED = [
    ("accuracy", "Δ top-1 (points)", 100, 2),
    ("ece", "Δ ECE (points)", 100, 2),
    ("nll", "Δ NLL", 1, 4),
]


def _summary(run_dir: Path) -> dict | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _test(run_dir: Path) -> dict | None:
    s = _summary(run_dir)
    return None if s is None else s["results"][s["deployed"]]


def _val(run_dir: Path) -> dict | None:
    s = _summary(run_dir)
    if s is None:
        return None
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return last["val"][s["deployed"]]


def _seeds(runs: Path, regime: int, name: str, fn=_test) -> dict[int, dict]:  # noqa: ANN001
    out = {}
    for seed in S.REPORT_SEEDS:
        value = fn(runs / f"regime{regime}" / f"seed{seed}" / name)
        if value is not None:
            out[seed] = value
    return out


def collect(runs: Path, regime: int) -> dict:
    """Every finished run of a regime: sweeps, chosen settings, per-seed test metrics."""
    sweep_dir = runs / f"regime{regime}" / f"seed{S.SELECTION_SEED}"
    out: dict = {
        "title": S.REGIMES[regime]["title"],
        "teacher": _seeds(runs, regime, "teacher"),
        "methods": {},
        "ablations": {},
    }
    for method in S.REGIME_METHODS[regime]:
        m = S.METHODS[method]
        entry: dict = {
            "label": m["label"],
            "knob": m["knob"],
            "sweep": [],
            "chosen": {},
            "seeds": {},
        }
        if m["kind"] == "scratch":
            seeds = _seeds(runs, regime, "scratch-0")
            vals = _seeds(runs, regime, "scratch-0", _val)
            for rule in S.SELECTIONS:
                entry["chosen"][rule] = 0
                entry["seeds"][rule] = seeds
                entry.setdefault("val", {})[rule] = vals
            entry["sweep"] = [{"index": 0, "spec": m["grid"][0], "val": None}]
            out["methods"][method] = entry
            continue
        for i, setting in enumerate(m["grid"]):
            entry["sweep"].append(
                {"index": i, "spec": setting, "val": _val(sweep_dir / f"{method}-{i}")}
            )
        if all(row["val"] is not None for row in entry["sweep"]):
            for rule, (_, direction) in S.SELECTIONS.items():
                sign = -1.0 if direction == "max" else 1.0
                best = min(
                    range(len(m["grid"])), key=lambda i: (sign * entry["sweep"][i]["val"][rule], i)
                )
                entry["chosen"][rule] = best
                entry["seeds"][rule] = _seeds(runs, regime, f"{method}-{best}")
                entry.setdefault("val", {})[rule] = _seeds(runs, regime, f"{method}-{best}", _val)
        out["methods"][method] = entry
    bdkd = out["methods"].get(S.BDKD, {})
    if regime == 1 and "accuracy" in bdkd.get("chosen", {}):
        chosen_spec = S.METHODS[S.BDKD]["grid"][bdkd["chosen"]["accuracy"]]
        for name, ab in S.ablations(chosen_spec).items():
            out["ablations"][name] = {
                "label": ab["label"],
                "spec": ab["spec"],
                "seeds": _seeds(runs, regime, f"ablation-{name}"),
            }
    return out


def _cell(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "–"
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _row(label: str, setting: str, seeds: dict[int, dict]) -> str:
    cells = [
        _cell([r[k] for r in seeds.values() if k in r], scale, digits)
        for k, _, scale, digits in METRICS
    ]
    return f"| {label} | {setting} | {len(seeds)} | " + " | ".join(cells) + " |"


def _paired_cells(a: dict[int, dict], b: dict[int, dict]) -> tuple[list, int]:
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return [None] * len(PAIRED), len(common)
    return [
        paired([a[s][k] * scale for s in common], [b[s][k] * scale for s in common])
        for k, _, scale, _ in PAIRED
    ], len(common)


def _adjusted_texts(rows: list[list]) -> list[list[str]]:
    """Each row's paired cells as text, p Holm-adjusted over the rows of each column."""
    adjusted = []
    for col in range(len(PAIRED)):
        adj = iter(holm([r[col].p for r in rows if r[col] is not None]))
        adjusted.append([next(adj) if r[col] is not None else None for r in rows])
    return [
        [
            "–" if c is None else c.text(PAIRED[col][3], adjusted[col][i])
            for col, c in enumerate(cells)
        ]
        for i, cells in enumerate(rows)
    ]


def strongest_baseline(data: dict, rule: str) -> str | None:
    """The baseline (not BD-KD) with the best mean validation value of the rule's metric over
    the report seeds: chosen on validation, never on test."""
    _, direction = S.SELECTIONS[rule]
    best, best_value = None, None
    for method, entry in data["methods"].items():
        if method.startswith("bdkd") or rule not in entry.get("val", {}):
            continue
        vals = [v[rule] for v in entry["val"][rule].values()]
        if not vals:
            continue
        value = sum(vals) / len(vals)
        better = best_value is None or (
            value > best_value if direction == "max" else value < best_value
        )
        if better:
            best, best_value = method, value
    return best


def regime_tables(data: dict, regime: int) -> list[str]:
    lines = [f"## {data['title']}", ""]
    teacher = data["teacher"]
    for rule, (rule_name, _) in S.SELECTIONS.items():
        lines += [
            f"### Settings chosen by validation {rule_name}"
            + (" (the main table)" if rule == "accuracy" else ""),
            "",
            "| method | chosen setting | seeds | " + " | ".join(m[1] for m in METRICS) + " |",
            "|---|---|---|" + "---|" * len(METRICS),
            _row("teacher (alone)", "–", teacher),
        ]
        for method, entry in data["methods"].items():
            if rule not in entry["chosen"]:
                lines.append(
                    f"| {entry['label']} | (sweep unfinished) | 0 |" + " – |" * len(METRICS)
                )
                continue
            setting = S.setting_label(S.METHODS[method]["grid"][entry["chosen"][rule]])
            lines.append(_row(entry["label"], setting, entry["seeds"][rule]))
        reference = data["methods"].get(S.BDKD)
        if reference and rule in reference["seeds"]:
            strongest = strongest_baseline(data, rule)
            lines += [
                "",
                f"Paired differences, BD-KD (hard) minus each method, over the report seeds "
                f"(mean [95 % CI], paired t-test p, Holm-adjusted over the {len(data['methods']) - 1} "
                f"comparisons of each column). Strongest baseline by validation {rule_name}: "
                f"**{data['methods'][strongest]['label'] if strongest else '–'}**.",
                "",
                "| BD-KD (hard) minus | seeds | " + " | ".join(p[1] for p in PAIRED) + " |",
                "|---|---|" + "---|" * len(PAIRED),
            ]
            rows = []
            for method, entry in data["methods"].items():
                if method == S.BDKD or rule not in entry["seeds"]:
                    continue
                cells, n = _paired_cells(reference["seeds"][rule], entry["seeds"][rule])
                rows.append((method, entry["label"], cells, n))
            texts = _adjusted_texts([r[2] for r in rows])
            for (method, label, _, n), text in zip(rows, texts, strict=True):
                mark = " (strongest)" if method == strongest else ""
                lines.append(f"| {label}{mark} | {n} | " + " | ".join(text) + " |")
        lines.append("")
    lines += [
        f"### The sweeps (seed {S.SELECTION_SEED}, validation split; ★ chosen by top-1, ◆ by NLL)",
        "",
        "| method | knob | setting | val top-1 % | val NLL |",
        "|---|---|---|---|---|",
    ]
    for method, entry in data["methods"].items():
        if S.METHODS[method]["kind"] == "scratch":
            continue
        for row in entry["sweep"]:
            marks = ("★" if entry["chosen"].get("accuracy") == row["index"] else "") + (
                "◆" if entry["chosen"].get("nll") == row["index"] else ""
            )
            v = row["val"]
            acc = "–" if v is None else f"{100 * v['accuracy']:.2f}"
            nll = "–" if v is None else f"{v['nll']:.4f}"
            lines.append(
                f"| {entry['label']} | {entry['knob']} | {S.setting_label(row['spec'])} {marks} | {acc} | {nll} |"
            )
    lines.append("")
    if data["ablations"]:
        reference = data["methods"][S.BDKD]["seeds"]["accuracy"]
        lines += [
            "### Ablations of BD-KD (at BD-KD (hard)'s setting chosen by top-1; seeds 1-5)",
            "",
            f"Paired differences as above (mean [95 % CI], paired t-test p), Holm-adjusted over "
            f"the {len(data['ablations'])} variants of each column.",
            "",
            "| variant | seeds | top-1 % | ECE % | NLL | fitted T | BD-KD minus variant: Δ top-1 | Δ ECE | Δ NLL |",
            "|---|---|---|---|---|---|---|---|---|",
            "| BD-KD (hard), as in the main table | "
            + f"{len(reference)} | {_cell([r['accuracy'] for r in reference.values()], 100, 2)} | "
            + f"{_cell([r['ece'] for r in reference.values()], 100, 2)} | "
            + f"{_cell([r['nll'] for r in reference.values()], 1, 4)} | "
            + f"{_cell([r['temperature'] for r in reference.values()], 1, 2)} | – | – | – |",
        ]
        ablations = list(data["ablations"].values())
        texts = _adjusted_texts([_paired_cells(reference, ab["seeds"])[0] for ab in ablations])
        for ab, diffs in zip(ablations, texts, strict=True):
            seeds = ab["seeds"]
            lines.append(
                f"| {ab['label']} | {len(seeds)} | "
                f"{_cell([r['accuracy'] for r in seeds.values()], 100, 2)} | "
                f"{_cell([r['ece'] for r in seeds.values()], 100, 2)} | "
                f"{_cell([r['nll'] for r in seeds.values()], 1, 4)} | "
                f"{_cell([r['temperature'] for r in seeds.values()], 1, 2)} | "
                + " | ".join(diffs)
                + " |"
            )
        lines.append("")
    return lines


def cpu_hours(runs: Path, ledger: Path) -> tuple[float, float]:
    """(wall-clock of the jobs in the ledger, one thread each; the runs' own training time)."""
    wall = 0.0
    if ledger.is_file():
        wall = sum(json.loads(line)["seconds"] for line in ledger.read_text().splitlines() if line)
    training = 0.0
    for path in runs.glob("regime*/seed*/*/summary.json"):
        s = json.loads(path.read_text())
        training += s["seconds_per_epoch"] * s["epochs"]
    return wall / 3600, training / 3600


def write(
    runs: Path, regimes: list[int], md: Path, raw_path: Path, ledger: Path, *, smoke: bool
) -> None:
    raw = {
        "protocol": {
            "temperatures": list(S.TEMPERATURES),
            "selection_seed": S.SELECTION_SEED,
            "report_seeds": list(S.REPORT_SEEDS),
            "selections": {k: v[1] for k, v in S.SELECTIONS.items()},
        },
        "regimes": {},
    }
    for regime in regimes:
        raw["regimes"][str(regime)] = collect(runs, regime)
    wall, training = cpu_hours(runs, ledger)
    raw["core_hours"] = {"jobs_wall_clock": wall, "training_only": training}
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    cmd = " ".join(
        ["python benchmarks/methods/run.py", *[a for a in sys.argv[1:] if a != "--report-only"]]
    )
    lines = [
        "# Fashion-MNIST: every method with the same tuning budget",
        "",
        f"Generated by `{cmd}` (tables alone: add `--report-only`) on a 2-core CPU machine: "
        f"{wall:.1f} core-hours of jobs (one thread each, two side by side; {training:.1f} h of it "
        "training, the rest evaluation). Every number is on the test split (10,000 images), last "
        "epoch, mean ± sample std over seeds 1-5; the test split never chose anything.",
        "",
        "**Protocol.** Every method gets the same budget: six settings, its temperature over "
        "{1, 2, 4} times two values of its one main knob (listed in the sweep tables; USKD has no "
        "temperature and gets six settings of its weights; the student from scratch has nothing to "
        "tune). All six are trained on seed 0 and one is chosen on the validation split, by top-1 "
        "for the main tables and by NLL for the second ones. The chosen settings are then trained "
        "on seeds 1-5, which are the only runs reported: no run that chose a setting is in a table. "
        "A seed fixes the data split, the batch order and every initialisation, so two methods on "
        "the same seed are paired; differences come with a 95 % paired-t interval and a p-value, "
        "Holm-adjusted over the comparisons in a column. ECE uses 15 bins; 'ECE after TS' and "
        "'fitted T' come from a temperature fitted on the validation split (above 1: the network "
        "was over-confident). Configs: `benchmarks/methods/configs/`, methods and grids: "
        "`benchmarks/methods/spec.py`; raw per-seed numbers and settings: "
        "`benchmarks/results/methods_fashion_mnist.json`.",
        "",
    ]
    figure = None
    for regime in regimes:
        data = raw["regimes"][str(regime)]
        lines += regime_tables(data, regime)
        if regime == 1 and not smoke:
            figure = _figure(runs, data, md)
    if figure is not None:
        lines += [f"![reliability diagrams of the students (regime 1, seed 1)]({figure.name})", ""]
    if md.is_file() and "\n## Reading" in md.read_text():
        lines += ["## Reading" + md.read_text().split("\n## Reading", 1)[1].rstrip("\n"), ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))


def _figure(runs: Path, data: dict, md: Path) -> Path | None:
    seed = S.REPORT_SEEDS[0]
    picks = []
    for method in ("scratch", "kd", "dml", strongest_baseline(data, "accuracy"), S.BDKD):
        entry = data["methods"].get(method or "")
        if entry is None or "accuracy" not in entry["chosen"]:
            continue
        name = "scratch-0" if method == "scratch" else f"{method}-{entry['chosen']['accuracy']}"
        run = runs / "regime1" / f"seed{seed}" / name
        if (run / "summary.json").is_file() and run not in picks:
            picks.append(run)
    if not picks:
        return None
    figure = md.with_name(md.stem + "_reliability.png")
    if figure.exists():
        figure.unlink()
    compare_runs(picks, figure)
    return figure
