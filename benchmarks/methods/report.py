"""Tables of the methods benchmark: every run's numbers, paired statistics, the markdown."""

from __future__ import annotations

import json
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


def _rule(select: str) -> str:
    return next(rule for rule, (sel, _, _) in S.SELECTIONS.items() if sel == select)


def collect(regime: int, data: dict, ablations: dict | None) -> dict:
    """A regime's tables from its tune's report data (and its ablations' tune): sweeps
    (seed 0, validation), chosen settings, per-seed test metrics (report seeds)."""
    out: dict = {
        "title": S.REGIMES[regime]["title"],
        "teacher": data.get("teacher", {}),
        "methods": {},
        "ablations": {},
    }
    for name, e in data["entries"].items():
        m = S.METHODS[name]
        out["methods"][name] = {
            "label": m["label"],
            "knob": m["knob"],
            "sweep": [
                {"index": i, "spec": row["setting"], "val": row["val"], "dir": row["dir"]}
                for i, row in enumerate(e["sweep"])
            ],
            "chosen": {_rule(sel): i for sel, i in e["chosen"].items()},
            "seeds": {_rule(sel): runs for sel, runs in e["test"].items()},
            "report_dirs": {_rule(sel): d for sel, d in e["report_dirs"].items()},
        }
    for name, e in (ablations or {"entries": {}})["entries"].items():
        if name == "scratch" or "top1" not in e["test"]:
            continue
        out["ablations"][name] = {
            "label": e["label"],
            "spec": e["sweep"][0]["setting"] if e["sweep"] else {},
            "seeds": e["test"]["top1"],
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
    """The baseline (not BD-KD) whose chosen setting has the best validation value of the
    rule's metric on the selection seed (seed 0): the split and the seed that chose the
    settings, never a report seed and never the test split."""
    _, _, direction = S.SELECTIONS[rule]
    best, best_value = None, None
    for method, entry in data["methods"].items():
        if method.startswith("bdkd") or rule not in entry.get("chosen", {}):
            continue
        val = entry["sweep"][entry["chosen"][rule]]["val"]
        if val is None or rule not in val:
            continue
        value = val[rule]
        better = best_value is None or (
            value > best_value if direction == "max" else value < best_value
        )
        if better:
            best, best_value = method, value
    return best


def regime_tables(data: dict, regime: int) -> list[str]:
    lines = [f"## {data['title']}", ""]
    teacher = data["teacher"]
    for rule, (_, rule_name, _) in S.SELECTIONS.items():
        lines += [
            f"### Settings chosen by validation {rule_name}"
            + (" (the main table)" if rule == "accuracy" else ""),
            "",
            "| method | chosen setting | seeds | " + " | ".join(m[1] for m in METRICS) + " |",
            "|---|---|---|" + "---|" * len(METRICS),
            _row("teacher (alone)", "–", teacher),
        ]
        for entry in data["methods"].values():
            if rule not in entry["chosen"]:
                lines.append(
                    f"| {entry['label']} | (sweep unfinished) | 0 |" + " – |" * len(METRICS)
                )
                continue
            setting = S.setting_label(entry["sweep"][entry["chosen"][rule]]["spec"])
            lines.append(_row(entry["label"], setting, entry["seeds"][rule]))
        reference = data["methods"].get(S.BDKD)
        if reference and rule in reference["seeds"]:
            strongest = strongest_baseline(data, rule)
            lines += [
                "",
                f"Paired differences, BD-KD (hard) minus each method, over the report seeds "
                f"(mean [95 % CI], paired t-test p, Holm-adjusted over the {len(data['methods']) - 1} "
                f"comparisons of each column). Strongest baseline by seed {S.SELECTION_SEED}'s "
                f"validation {rule_name} (at its chosen setting): "
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


def write(runs: Path, results: dict, md: Path, raw_path: Path, *, smoke: bool) -> None:
    """The page and the raw numbers: the regimes run now, and from ``raw_path`` the regimes
    an earlier invocation wrote (so ``--regimes 4`` keeps the other regimes' tables)."""
    raw = {
        "protocol": {
            "temperatures": list(S.TEMPERATURES),
            "selection_seed": S.SELECTION_SEED,
            "report_seeds": list(S.REPORT_SEEDS),
            "selections": {k: v[2] for k, v in S.SELECTIONS.items()},
            "runner": "bdkd tune (benchmarks/methods/run.py)",
        },
        "regimes": {},
        "core_hours": {},
    }
    if raw_path.is_file():
        old = json.loads(raw_path.read_text())
        raw["regimes"].update(old.get("regimes", {}))
        raw["core_hours"].update(old.get("core_hours_by_regime", {}))
        before = old.get("core_hours_before_tune") or old.get("core_hours", {})
        if "jobs_wall_clock" in before:  # regimes 1-3 as the runner before bdkd tune ran them
            raw["core_hours_before_tune"] = before
    for regime, (data, ablations) in results.items():
        raw["regimes"][str(regime)] = collect(regime, data, ablations)
        # the regime's ledger (its tune and its ablations' share one directory), one thread each
        raw["core_hours"][str(regime)] = data.get("trial_seconds", 0.0) / 3600
        if "core_hours_before_tune" in raw and not smoke:
            raw["core_hours_before_tune"].setdefault("superseded_regimes", []).append(regime)
    regimes = sorted(int(r) for r in raw["regimes"])
    raw["core_hours_by_regime"] = raw.pop("core_hours")
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(raw, indent=1) + "\n")
    by_regime = raw["core_hours_by_regime"]
    spent = ", ".join(
        f"regime {r}: {by_regime[str(r)]:.1f}" for r in regimes if by_regime.get(str(r))
    )
    if "core_hours_before_tune" in raw:
        old_hours = raw["core_hours_before_tune"]["jobs_wall_clock"]
        spent = (spent + "; " if spent else "") + (
            f"{old_hours:.1f} for the regimes last run by the runner before bdkd tune, with "
            "the same protocol, spaces and seeds"
        )
    lines = [
        "# Fashion-MNIST: every method with the same tuning budget",
        "",
        "Generated by `python benchmarks/methods/run.py [--regimes N ...]` (tables alone: add "
        "`--report-only`), a thin user of `bdkd tune` (docs/tune.md), on a 2-core CPU machine; "
        f"core-hours of trials (one thread each, two side by side): {spent}. Every number is on "
        "the test split (10,000 images), last epoch, mean ± sample std over seeds 1-5; the test "
        "split never chose anything.",
        "",
        "**Protocol.** Every method gets the same budget: six settings, its temperature over "
        "{1, 2, 4} times two values of its one main knob (listed in the sweep tables; USKD has no "
        "temperature and gets six settings of its weights; the student from scratch has nothing to "
        "tune). All six are trained on seed 0 and one is chosen on the validation split, by top-1 "
        "for the main tables and by NLL for the second ones. The chosen settings are then trained "
        "on seeds 1-5, which are the only runs reported: no run that chose a setting is in a table. "
        "Every other choice on this page (the strongest baseline, the figure's picks) is also made "
        "on seed 0's validation split. A seed fixes the data split, the batch order and every "
        "initialisation, so two methods on the same seed are paired; differences come with a 95 % "
        "paired-t interval and a p-value, Holm-adjusted over the comparisons in a column. ECE uses "
        "15 bins; 'ECE after TS' and 'fitted T' come from a temperature fitted on the validation "
        "split (above 1: the network was over-confident). Configs: "
        "`benchmarks/methods/configs/`, methods and spaces: `benchmarks/methods/spec.py`; raw "
        "per-seed numbers and settings: `benchmarks/results/methods_fashion_mnist.json`.",
        "",
    ]
    figure = None
    for regime in regimes:
        data = raw["regimes"][str(regime)]
        lines += regime_tables(data, regime)
        if regime == 1 and 1 in results and not smoke:
            figure = _figure(runs, data, md)
    if figure is None and not smoke and md.with_name(md.stem + "_reliability.png").is_file():
        figure = md.with_name(md.stem + "_reliability.png")
    if figure is not None:
        lines += [f"![reliability diagrams of the students (regime 1, seed 1)]({figure.name})", ""]
    if md.is_file() and "\n## Reading" in md.read_text():
        lines += ["## Reading" + md.read_text().split("\n## Reading", 1)[1].rstrip("\n"), ""]
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines))


def _figure(runs: Path, data: dict, md: Path) -> Path | None:
    """The students of seed 1 (report seed): alone, KD, DML, the strongest baseline (chosen
    on seed 0's validation) and BD-KD (hard)."""
    seed = str(S.REPORT_SEEDS[0])
    picks = []
    for method in ("scratch", "kd", "dml", strongest_baseline(data, "accuracy"), S.BDKD):
        entry = data["methods"].get(method or "")
        if entry is None or "accuracy" not in entry["report_dirs"]:
            continue
        run = runs / "regime1" / entry["report_dirs"]["accuracy"][seed]
        if (run / "summary.json").is_file() and run not in picks:
            picks.append(run)
    if not picks:
        return None
    figure = md.with_name(md.stem + "_reliability.png")
    if figure.exists():
        figure.unlink()
    compare_runs(picks, figure)
    return figure
