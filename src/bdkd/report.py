"""Run reports: markdown tables, reliability diagrams, saved predictions, run comparison."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bdkd import calibration as cal
from bdkd.files import atomic_path, load_logits, write_text

COLUMNS = (
    ("accuracy", "top-1 %", 100, ".2f"),
    ("miou", "mIoU %", 100, ".2f"),
    ("ece", "ECE %", 100, ".2f"),
    ("adaptive_ece", "AdaECE %", 100, ".2f"),
    ("classwise_ece", "cwECE %", 100, ".3f"),
    ("mce", "MCE %", 100, ".2f"),
    ("nll", "NLL", 1, ".4f"),
    ("brier", "Brier", 1, ".4f"),
    ("ece_after_ts", "ECE after TS %", 100, ".2f"),
    ("temperature", "T", 1, ".3f"),
    ("perplexity", "perplexity", 1, ".2f"),
    ("teacher_top1_agreement", "agreement with teacher %", 100, ".2f"),
    ("rouge_l_vs_reference", "ROUGE-L vs reference", 1, ".3f"),
)


def _draw_panel(top: Any, bottom: Any, name: str, bins: cal.ReliabilityBins, n_bins: int) -> None:
    """One model's column: accuracy per bin against confidence with the gap (top), the
    confidence histogram with mean confidence and accuracy marked (bottom)."""
    width = 1.0 / n_bins
    centers = (np.arange(n_bins) + 0.5) * width
    count, acc, mean_conf = bins.count, bins.accuracy, bins.confidence
    nonempty = count > 0
    top.bar(
        centers[nonempty],
        acc[nonempty],
        width=width,
        color="#3b75af",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    top.bar(
        centers[nonempty],
        (mean_conf - acc)[nonempty],
        bottom=acc[nonempty],
        width=width,
        color="#e6554d",
        alpha=0.35,
        hatch="//",
        edgecolor="#b8322a",
        linewidth=0.5,
        label="gap",
    )
    top.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    top.set_title(f"{name}\nECE {100 * bins.ece:.2f}% ({n_bins} bins)", fontsize=10)
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(
        centers, count / count.sum(), width=width, color="#7f7f7f", edgecolor="black", linewidth=0.5
    )
    bottom.axvline(
        bins.mean_confidence, color="#e6554d", linestyle="--", linewidth=1, label="avg conf"
    )
    bottom.axvline(
        bins.mean_accuracy, color="#3b75af", linestyle="-", linewidth=1, label="accuracy"
    )
    bottom.legend(loc="upper left", fontsize=7)


def reliability_diagram(
    models: Mapping[str, tuple[Any, Any]],
    path: str | Path,
    *,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Write a reliability diagram PNG: one column per model, side by side.

    ``models`` maps a name to ``(probs, labels)`` or to per-bin statistics
    (:class:`~bdkd.calibration.ReliabilityBins`, e.g. of every pixel of a segmentation test
    set). Top: per-bin accuracy against confidence
    (bars), the gap to the diagonal (hatched), ECE in the title. Bottom: the confidence
    histogram with the mean confidence and accuracy marked. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not models:
        raise ValueError("reliability_diagram needs at least one model")
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    path = Path(path)
    k = len(models)
    fig, axes = plt.subplots(
        2, k, figsize=(3.6 * k, 5.4), squeeze=False, gridspec_kw={"height_ratios": [3, 1.2]}
    )
    for col, (name, panel) in enumerate(models.items()):
        if isinstance(panel, cal.ReliabilityBins):
            bins = panel
        else:
            bins = cal.reliability_bins(*panel, n_bins=n_bins)
        top, bottom = axes[0, col], axes[1, col]
        _draw_panel(top, bottom, name, bins, n_bins)
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy" if col == 0 else None)
        bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="fraction" if col == 0 else None)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


RUN_KEYS = (
    "accuracy",
    "ece",
    "adaptive_ece",
    "classwise_ece",
    "nll",
    "brier",
    "ece_after_ts",
    "temperature",
)


def markdown_table(
    rows: Mapping[str, Mapping[str, float]],
    first: str = "network",
    keys: Sequence[str] = RUN_KEYS,
) -> str:
    """One row per entry; the columns of ``keys`` (see :data:`COLUMNS`) that any row has."""
    cols = [c for c in COLUMNS if c[0] in keys and any(c[0] in r for r in rows.values())]
    lines = [
        f"| {first} | " + " | ".join(c[1] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name, metrics in rows.items():
        cells = [format(metrics[k] * s, f) if k in metrics else "–" for k, _, s, f in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_predictions(
    path: Path,
    logits: Tensor,
    labels: Tensor,
    val_logits: Tensor | None = None,
    val_labels: Tensor | None = None,
) -> None:
    """Test (and val, when there is a validation split) logits of one network, in the format
    ``bdkd calibrate`` reads."""
    arrays = {"logits": logits.float().numpy(), "labels": labels.numpy()}
    if val_logits is not None and val_labels is not None:
        arrays.update(val_logits=val_logits.float().numpy(), val_labels=val_labels.numpy())
    save_arrays(path, **arrays)


def save_logits_file(
    path: str | Path, logits: Mapping[str, Tensor], labels: Tensor, *, deployed: str | None = None
) -> Path:
    """The logits of every network (``logits_<name>``; ``logits`` too when there is one),
    the labels and the run's deployed network, in the format ``bdkd calibrate`` reads."""
    arrays: dict[str, np.ndarray] = {"labels": labels.numpy()}
    if len(logits) == 1:
        arrays["logits"] = next(iter(logits.values())).float().numpy()
    for name, z in logits.items():
        arrays[f"logits_{name}"] = z.float().numpy()
    if deployed is not None and deployed in logits:
        arrays["deployed"] = np.array(deployed)
    return save_arrays(path, **arrays)


def save_arrays(path: str | Path, **arrays: np.ndarray) -> Path:
    """Write ``arrays`` to the ``.npz`` file ``path`` atomically (no pickled objects)."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return Path(path)


def run_rows(summary: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The results of a run summary labelled ``network (model)[ — deployed]``."""
    return {
        f"{name} ({summary['models'][name]}){' — deployed' if name == summary['deployed'] else ''}": m
        for name, m in summary["results"].items()
    }


def write_run_report(
    run_dir: Path,
    summary: Mapping[str, Any],
    panels: Mapping[str, Any],
    *,
    keys: Sequence[str] = RUN_KEYS,
    unit: str = "test",
    note: str = "",
    sections: Callable[[Mapping[str, Mapping[str, Any]]], list[str]] | None = None,
    curves: Mapping[str, Any] | None = None,
) -> None:
    """report.md (the results table in the columns ``keys``, then the task's ``sections``
    of the labelled rows) and reliability.png (every network side by side). ``panels`` maps
    each network to ``(probs, labels)`` or to :class:`~bdkd.calibration.ReliabilityBins`
    (pixels of segmentation); ``unit`` names the samples in the figure's title (``test
    pixels``), ``note`` is said of them in the text."""
    run_dir = Path(run_dir)
    rows = run_rows(summary)
    figure = reliability_diagram(
        {f"{n} ({summary['models'][n]})": panel for n, panel in panels.items()},
        run_dir / "reliability.png",
        n_bins=summary["bins"],
        title=f"{summary['method']} on {summary['dataset']} ({unit})",
    )
    lines = [
        f"# {summary['method']} on {summary['dataset']}",
        "",
        f"Seed {summary['seed']}, {summary['epochs']} epochs, {summary['seconds_per_epoch']:.1f} s per epoch. "
        f"Test split, last epoch; {note}ECE with {summary['bins']} bins; T fitted on the validation split.",
        "",
        markdown_table(rows, keys=keys),
        "",
    ]
    if sections is not None:
        lines += sections(rows)
    lines += [f"![reliability diagram]({figure.name})", ""]
    lines += trust_lines(summary, rows)
    if curves:
        risk = risk_coverage_figure(
            {f"{n} ({summary['models'][n]})": c for n, c in curves.items()},
            run_dir / "risk_coverage.png",
            title=f"{summary['method']} on {summary['dataset']} ({unit})",
        )
        lines += [f"![risk-coverage curves]({risk.name})", ""]
    write_text(run_dir / "report.md", "\n".join(lines))


def trust_lines(summary: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's section on abstention, conformal sets and the temperature's reliability."""
    have = {label: m for label, m in rows.items() if "aurc" in m}
    if not have:
        return []
    first = next(iter(have.values()))
    risk, alpha = first["target_risk"], first["conformal_alpha"]
    lines = [
        "## Abstention and prediction sets",
        "",
        f"Thresholds fitted on the validation split, measured on test. Abstain below the "
        f"confidence threshold chosen for selective risk ≤ {100 * risk:g} %; conformal sets "
        f"at {100 * (1 - alpha):g} % coverage (LAC, APS).",
        "",
        "| network | AURC | E-AURC | threshold | coverage % | risk % | LAC size | LAC cover % "
        "| APS size | APS cover % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pct(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.2f}"

    for label, m in have.items():
        lines.append(
            f"| {label} | {m['aurc']:.4f} | {m['e_aurc']:.4f} | {m['abstain_threshold']:.4f} "
            f"| {pct(m['abstain_coverage'])} | {pct(m['abstain_risk'])} | {m['lac_size']:.2f} "
            f"| {pct(m['lac_coverage'])} | {m['aps_size']:.2f} | {pct(m['aps_coverage'])} |"
        )
    notes = [
        f"- {label}: {m['temperature_note']}"
        for label, m in have.items()
        if m.get("temperature_note")
    ]
    if notes:
        lines += ["", "**The fitted temperature is not to be trusted for:**", "", *notes]
    return [*lines, ""]


def risk_coverage_figure(
    curves: Mapping[str, cal.RiskCoverage], path: str | Path, *, title: str | None = None
) -> Path:
    """Selective risk against coverage, one line per model (lower is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.8))
    for name, curve in curves.items():
        ax.plot(curve.coverage, 100 * curve.risk, label=name, linewidth=1.2)
    ax.set(xlabel="coverage (fraction answered)", ylabel="selective risk %", xlim=(0, 1))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return Path(path)


MAX_SUMMARY_BYTES = 64 << 20
NUMERIC_RESULTS = {c[0] for c in COLUMNS} | {"temperature", "aurc", "e_aurc", "abstain_threshold"}


def load_summary(run_dir: str | Path) -> dict[str, Any]:
    """A finished image run's summary.json, checked: a missing, damaged or edited file (not
    JSON, or without the mapping of results per network, the models and the deployed
    network) is a one-line error naming it."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no summary.json (not a bdkd run directory, or the run has not finished)"
        )
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        raise ValueError(f"{path}: larger than any summary bdkd writes; refused unread")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"{path} is not readable JSON ({err})") from None
    problem = _summary_problem(summary)
    if problem:
        raise ValueError(f"{path} is not a bdkd run summary: {problem}")
    return summary


def _summary_problem(summary: Any) -> str | None:
    """What is wrong with a run summary's shape, or None."""
    if not isinstance(summary, dict):
        return "not a mapping"
    results, models = summary.get("results"), summary.get("models")
    if not isinstance(results, dict) or not results:
        return "no 'results' mapping"
    if not isinstance(models, dict) or set(models) != set(results):
        return "'models' does not name the model of every network in 'results'"
    if summary.get("deployed") not in results:
        return f"its deployed network {summary.get('deployed')!r} has no results"
    for name, metrics in results.items():
        if not isinstance(metrics, dict):
            return f"the results of {name!r} are not a mapping"
        for key, value in metrics.items():
            numeric = key in NUMERIC_RESULTS
            if numeric and (
                isinstance(value, bool) or not isinstance(value, (int, float, type(None)))
            ):
                return f"results.{name}.{key} is {value!r}, not a number"
            if not isinstance(value, (int, float, str, list, type(None))):
                return f"results.{name}.{key} is {value!r}, not plain data"
    if not isinstance(summary.get("bins", 15), int) or isinstance(summary.get("bins"), bool):
        return f"'bins' is {summary.get('bins')!r}, not a count"
    return None


def compare_runs(
    run_dirs: Sequence[str | Path], figure: str | Path | None = None, *, all_networks: bool = False
) -> str:
    """One markdown table of the runs side by side (deployed networks unless
    ``all_networks``), and one reliability figure of them if ``figure`` is given."""
    rows: dict[str, Mapping[str, float]] = {}
    panels = {}
    for run in run_dirs:
        summary = load_summary(run)
        names = list(summary["results"]) if all_networks else [summary["deployed"]]
        for name in names:
            label = f"{Path(run).name}: {name} ({summary['models'][name]})"
            rows[label] = summary["results"][name]
            pred = Path(run) / "predictions" / f"{name}.npz"
            if figure is not None and pred.is_file():
                data = load_logits(pred)
                panels[label] = (torch.softmax(data["logits"].double(), 1), data["labels"])
    if figure is not None and panels:
        reliability_diagram(panels, figure)
    return markdown_table(rows, first="run: network")
