"""A tune's report: ``report.md``, ``report.json`` and ``reliability.png`` in its directory.

The sweep of every entry (selection seed, validation split), the chosen settings, mean ±
std on the test split over the report seeds, paired 95 % intervals (Holm-adjusted over the
entries of a column) against the best entry and against the student trained alone, a
reliability figure of the chosen students on the first report seed, and a reading that
says only what those intervals support.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bdkd.files import load_logits, write_json, write_text
from bdkd.stats import Paired, holm, mean_std, paired
from bdkd.tune.select import SELECT

__all__ = ["TEST_COLUMNS", "best_entry", "comparisons", "reading", "write_report"]

# (key, column, scale, decimals, better)
TEST_COLUMNS = [
    ("accuracy", "top-1 %", 100, 2, "max"),
    ("miou", "mIoU %", 100, 2, "max"),
    ("ece", "ECE %", 100, 2, "min"),
    ("nll", "NLL", 1, 4, "min"),
    ("brier", "Brier", 1, 4, "min"),
    ("perplexity", "perplexity", 1, 2, "min"),
    ("aurc", "AURC", 1, 4, "min"),
    ("ece_after_ts", "ECE after TS %", 100, 2, "min"),
    ("temperature", "fitted T", 1, 2, ""),
]
PAIRED_KEYS = ("accuracy", "miou", "ece", "nll", "aurc")
DELTA = {"accuracy": "top-1", "miou": "mIoU", "ece": "ECE", "nll": "NLL", "aurc": "AURC"}
ALPHA = 0.05


def _columns(data: Mapping[str, Any], keys: Sequence[tuple] = TEST_COLUMNS) -> list[tuple]:
    present: set[str] = set()
    for entry in data["entries"].values():
        for runs in entry["test"].values():
            for metrics in runs.values():
                present |= set(metrics)
    return [c for c in keys if c[0] in present]


def best_entry(data: Mapping[str, Any], select: str) -> str | None:
    """The entry whose chosen setting has the best selection-seed validation value of
    ``select``'s metric (validation only: the test split chooses nothing)."""
    key, direction, _ = SELECT[select]
    sign = -1.0 if direction == "max" else 1.0
    best, best_score = None, math.inf
    for name, entry in data["entries"].items():
        if select not in entry["chosen"]:
            continue
        val = entry["sweep"][entry["chosen"][select]]["val"] or {}
        v = val.get(key, math.nan)
        if math.isfinite(v) and sign * v < best_score:
            best, best_score = name, sign * v
    return best


def comparisons(
    data: Mapping[str, Any], select: str, reference: str
) -> dict[str, dict[str, tuple[Paired, float]]]:
    """Each other entry minus ``reference`` on the report seeds both finished: per metric,
    the paired interval and its Holm-adjusted p (over the entries of that metric)."""
    ref = data["entries"][reference]["test"].get(select, {})
    raw: dict[str, dict[str, Paired]] = {}
    for name, entry in data["entries"].items():
        if name == reference or select not in entry["test"]:
            continue
        runs = entry["test"][select]
        common = sorted(set(runs) & set(ref), key=int)
        if len(common) < 2:
            continue
        for key in PAIRED_KEYS:
            if all(key in runs[s] and key in ref[s] for s in common):
                scale = 100 if key in ("accuracy", "miou", "ece") else 1
                raw.setdefault(name, {})[key] = paired(
                    [runs[s][key] * scale for s in common], [ref[s][key] * scale for s in common]
                )
    out: dict[str, dict[str, tuple[Paired, float]]] = {name: {} for name in raw}
    for key in PAIRED_KEYS:
        names = [n for n in raw if key in raw[n]]
        for n, p in zip(names, holm([raw[n][key].p for n in names]), strict=True):
            out[n][key] = (raw[n][key], p)
    return out


def _cell(values: list[float], scale: float, digits: int) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "–"
    m, s = mean_std([v * scale for v in values])
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def _setting(setting: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in setting.items()) or "–"


def _names(data: Mapping[str, Any], names: Sequence[str]) -> str:
    labels = [data["entries"][n]["label"] for n in names]
    return ", ".join(labels[:-1]) + (" and " if len(labels) > 1 else "") + labels[-1]


def reading(data: Mapping[str, Any], select: str) -> str:
    """One paragraph from the paired intervals of ``select``'s tables (Holm p < 0.05)."""
    seeds = len(data["protocol"]["report_seeds"])
    best = best_entry(data, select)
    if best is None:
        return "No entry has finished its sweep yet: nothing to read."
    if seeds < 2:
        return (
            f"{data['entries'][best]['label']} has the best validation "
            f"{SELECT[select][2]} on the selection seed. One report seed gives no interval: "
            "rerun with --seeds 2 or more (5 recommended) before reading anything into the "
            "test numbers."
        )
    acc = (
        "miou"
        if any(
            "miou" in m
            for e in data["entries"].values()
            for r in e["test"].values()
            for m in r.values()
        )
        else "accuracy"
    )
    acc_label = "mIoU" if acc == "miou" else "top-1"
    vs_best = comparisons(data, select, best)
    worse = [n for n, c in vs_best.items() if acc in c and c[acc][1] < ALPHA and c[acc][0].mean < 0]
    better = [
        n for n, c in vs_best.items() if acc in c and c[acc][1] < ALPHA and c[acc][0].mean > 0
    ]
    label = data["entries"][best]["label"]
    parts = [
        f"Chosen by validation {SELECT[select][2]} on seed {data['protocol']['selection_seed']}, "
        f"{label} is the reference; over {seeds} report seeds (paired 95 % intervals, Holm p < "
        f"{ALPHA:g})"
    ]
    if not worse and not better:
        parts.append(f" no entry's test {acc_label} differs from {label}'s.")
    else:
        text = []
        if worse:
            text.append(f"{_names(data, worse)} {'is' if len(worse) == 1 else 'are'} less accurate")
        if better:
            text.append(f"{_names(data, better)} more accurate on test despite the selection")
        parts.append(
            " " + "; ".join(text) + f" than {label}; no other {acc_label} difference holds."
        )
    if "scratch" in data["entries"]:
        vs_alone = comparisons(data, select, "scratch")
        cal_better = [
            n
            for n, c in vs_alone.items()
            if "ece" in c and c["ece"][1] < ALPHA and c["ece"][0].mean < 0
        ]
        cal_worse = [
            n
            for n, c in vs_alone.items()
            if "ece" in c and c["ece"][1] < ALPHA and c["ece"][0].mean > 0
        ]
        if not cal_better and not cal_worse:
            parts.append(" No entry's ECE differs from the student trained alone's.")
        else:
            if cal_better:
                lo = min(-vs_alone[n]["ece"][0].mean for n in cal_better)
                hi = max(-vs_alone[n]["ece"][0].mean for n in cal_better)
                parts.append(
                    f" Better calibrated than the student trained alone: {_names(data, cal_better)} "
                    f"(ECE lower by {lo:.2f}–{hi:.2f} points)."
                )
            if cal_worse:
                parts.append(f" Worse calibrated than it: {_names(data, cal_worse)}.")
    return "".join(parts)


def _sweep_lines(data: Mapping[str, Any]) -> list[str]:
    lines = [
        "## Sweeps (selection seed, validation split)",
        "",
        "| entry | setting | val top-1 % | val NLL | val ECE % | val AURC | chosen by |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in data["entries"].values():
        for i, row in enumerate(entry["sweep"]):
            v = row["val"] or {}
            by = [SELECT[s][2] for s, idx in entry["chosen"].items() if idx == i]

            def f(key: str, scale: float, digits: int, v: Mapping = v) -> str:
                x = v.get(key)
                return "–" if x is None else f"{x * scale:.{digits}f}"

            lines.append(
                f"| {entry['label']} | {_setting(row['setting'])} | {f('accuracy', 100, 2)} | "
                f"{f('nll', 1, 4)} | {f('ece', 100, 2)} | {f('aurc', 1, 4)} | {', '.join(by)} |"
            )
    return [*lines, ""]


def _test_lines(data: Mapping[str, Any], select: str) -> list[str]:
    cols = _columns(data)
    best = best_entry(data, select)

    def cells(runs: list[Mapping[str, float]]) -> str:
        return " | ".join(_cell([r.get(c[0]) for r in runs], c[2], c[3]) for c in cols)

    lines = [
        f"## Chosen by validation {SELECT[select][2]}: test split",
        "",
        "| entry | chosen setting | seeds | " + " | ".join(c[1] for c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    if data.get("teacher"):
        runs = list(data["teacher"].values())
        lines.append(f"| teacher (alone) | – | {len(runs)} | {cells(runs)} |")
    for name, entry in data["entries"].items():
        if select not in entry["chosen"]:
            lines.append(f"| {entry['label']} | (sweep unfinished) | 0 |" + " – |" * len(cols))
            continue
        runs = list(entry["test"][select].values())
        setting = entry["sweep"][entry["chosen"][select]]["setting"]
        mark = " (best on validation)" if name == best else ""
        lines.append(
            f"| {entry['label']}{mark} | {_setting(setting)} | {len(runs)} | {cells(runs)} |"
        )
    return [*lines, ""]


def _paired_lines(data: Mapping[str, Any], select: str, reference: str, title: str) -> list[str]:
    comp = comparisons(data, select, reference)
    if not comp:
        return []
    keys = [k for k in PAIRED_KEYS if any(k in c for c in comp.values())]
    lines = [
        f"Each entry minus {data['entries'][reference]['label']} ({title}); points for top-1, "
        "mIoU and ECE:",
        "",
        "| entry | seeds | " + " | ".join(f"Δ {DELTA[k]}" for k in keys) + " |",
        "|---|---|" + "---|" * len(keys),
    ]
    for name, cells in comp.items():
        n = next(iter(cells.values()))[0].n
        texts = [
            cells[k][0].text(4 if k in ("nll", "aurc") else 2, cells[k][1]) if k in cells else "–"
            for k in keys
        ]
        lines.append(f"| {data['entries'][name]['label']} | {n} | " + " | ".join(texts) + " |")
    return [*lines, ""]


def _markdown(data: Mapping[str, Any], figure: str | None) -> str:
    p = data["protocol"]
    seeds = p["report_seeds"]
    lines = [
        "# bdkd tune",
        "",
        f"`{p['command']}`" if p.get("command") else "",
        "",
        f"Every entry had {p['budget']} settings ({p['search']} search) trained on seed "
        f"{p['selection_seed']} and chosen on its validation split by "
        + ", ".join(SELECT[s][2] for s in p["select"])
        + f"; the chosen settings were trained on seeds {seeds[0]}–{seeds[-1]}, the only runs "
        "below the sweeps. Test numbers: mean ± sample std over those seeds; the test split "
        "chose nothing. Paired differences: mean [95 % t interval], Holm-adjusted p over the "
        f"entries of a column. Backend: {p.get('backend', '?')}; the trials took "
        f"{data.get('trial_seconds', 0) / 60:.1f} min together (summed over trials), this "
        f"invocation {data.get('wall_seconds', 0) / 60:.1f} min.",
        "",
        *_sweep_lines(data),
    ]
    for select in p["select"]:
        lines += _test_lines(data, select)
        best = best_entry(data, select)
        if best is not None:
            lines += _paired_lines(data, select, best, "the best entry on validation")
        if "scratch" in data["entries"] and best != "scratch":
            lines += _paired_lines(data, select, "scratch", "the student trained alone")
        lines += ["**Reading.** " + reading(data, select), ""]
    if figure:
        lines += [f"![reliability diagrams of the chosen students (seed {seeds[0]})]({figure})", ""]
    return "\n".join(lines)


def _figure(out: Path, data: Mapping[str, Any]) -> str | None:
    """Reliability diagrams of each entry's chosen student (main selection, first report
    seed), from the runs' saved test logits."""
    import torch

    from bdkd.report import reliability_diagram

    select = data["protocol"]["select"][0]
    seed = str(data["protocol"]["report_seeds"][0])
    panels = {}
    for entry in data["entries"].values():
        run = entry["report_dirs"].get(select, {}).get(seed)
        if run is None or not (out / run / "summary.json").is_file():
            continue
        summary = json.loads((out / run / "summary.json").read_text())
        pred = out / run / "predictions" / f"{summary.get('deployed', 'student')}.npz"
        if not pred.is_file():
            continue
        try:
            d = load_logits(pred)
        except ValueError:  # a logit map per pixel: no reliability panel
            continue
        panels[entry["label"]] = (torch.softmax(d["logits"].double(), 1), d["labels"])
    if not panels:
        return None
    path = out / "reliability.png"
    reliability_diagram(panels, path)
    return path.name


def write_report(out: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """``report.json`` (every number, the best entry and the reading of each selection),
    ``reliability.png`` and ``report.md`` in ``out``; returns what ``report.json`` holds."""
    payload = dict(data)
    payload["best"] = {s: best_entry(data, s) for s in data["protocol"]["select"]}
    payload["reading"] = {s: reading(data, s) for s in data["protocol"]["select"]}
    write_json(out / "report.json", payload)
    figure = _figure(out, data)
    write_text(out / "report.md", _markdown(data, figure))
    return payload
